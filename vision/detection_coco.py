"""COCO 2017 as detection data: DATA_DIR/coco/{train2017,val2017}/ and DATA_DIR/coco/annotations/instances_*.json.
Test is val2017 (5,000 images, the figure everyone reports), val the last min(5000, N // 10) images of train2017 in
image-id order, train the rest (as ``vision.data``'s classification sets); the categories in id order become labels
0..K-1 (0..79). Not downloaded automatically."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch

from fovea.errors import ConfigError
from fovea.vision.detection_set import DATA_DIR_HINT, DetectionData, check_args, collect
from fovea.vision.image_data import data_root, val_count


def coco(
    split: str, *, size: int = 64, count: int | None = None, seed: int = 0, data_dir: str | Path | None = None
) -> DetectionData:
    """COCO 2017 as (N, 3, size, size) uint8 with its boxes: test = val2017, val / train = the end / rest of train2017.

    Read with torchvision's ``CocoDetection`` (pycocotools) and its transforms-v2 wrapper. Images go in image-id
    order; val is the last min(5000, N // 10) of train2017's. Crowd objects (iscrowd 1) are kept as regions that
    evaluation ignores (``ignored_boxes``), as COCOeval ignores them: training leaves them out, as torchvision's
    detection references do. Labels are the annotation file's categories in id order, numbered 0..K-1
    (``classes`` holds their names).

    Args:
        split: train, val or test.
        size: images are resized to size x size, their boxes with them; boxes under 1 px are dropped.
        count: read only the first ``count`` images of the split (all are held in memory); None: all.
        seed: unused (the data is not generated).
        data_dir: the folder holding coco/; None: $FOVEA_DATA, else ./data.
    """
    check_args(split, size, count)
    root = data_root(data_dir) / "coco"
    part = "val2017" if split == "test" else "train2017"
    images, annotations = root / part, root / "annotations" / f"instances_{part}.json"
    if not annotations.is_file() or not images.is_dir():
        raise ConfigError(
            f"COCO 2017 not found: expected images in {images}/ and annotations in {annotations} (the layout "
            f"coco/{{train2017,val2017}}/ and coco/annotations/instances_{{train2017,val2017}}.json); "
            f"it is not downloaded automatically: unzip train2017.zip, val2017.zip and "
            f"annotations_trainval2017.zip from https://cocodataset.org/#download into {root}, {DATA_DIR_HINT} coco/"
        )
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            found = CocoDetection(str(images), str(annotations))
    except Exception as e:  # a damaged JSON fails in many ways (decode error, assertion, missing key): all the same
        raise ConfigError(
            f"{annotations} is not a COCO annotation file ({type(e).__name__}: {e}); replace it with the original"
        ) from None
    ids = sorted(found.coco.cats)
    if not ids:
        raise ConfigError(f"{annotations} holds no categories; a COCO instances file lists them under 'categories'")
    label_of = {c: i for i, c in enumerate(ids)}
    wrapped = wrap_dataset_for_transforms_v2(found, target_keys={"boxes", "labels", "iscrowd"})
    positions = range(len(found))
    if split != "test":
        cut = len(found) - val_count(len(found))
        positions = positions[:cut] if split == "train" else positions[cut:]
    positions = positions[:count]

    def read(i: int) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        image_id = found.ids[positions[i]]
        try:
            image, target = wrapped[positions[i]]
            if "boxes" not in target:  # the wrapper's answer for an image without annotations
                return image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)
            crowd = torch.tensor(target["iscrowd"]).reshape(-1) != 0
            labels = torch.tensor([label_of[c] for c in target["labels"].tolist()], dtype=torch.int64)
        except (OSError, SyntaxError) as e:  # PIL: a missing, truncated or foreign image
            path = images / found.coco.imgs[image_id]["file_name"]
            raise ConfigError(f"cannot read image {path}: {e}; replace it with the original file") from None
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"{annotations} holds a malformed annotation of image id {image_id} ({type(e).__name__}: {e}); "
                "replace the file with the original"
            ) from None
        return image, target["boxes"].as_subclass(torch.Tensor).float(), labels, crowd

    names = tuple(str(found.coco.cats[c].get("name", c)) for c in ids)
    return collect(len(positions), size, read, names)
