"""Pascal VOC 2007 as detection data, in torchvision's layout: DATA_DIR/VOCdevkit/VOC2007/{Annotations, JPEGImages,
ImageSets/Main/{train,val,test}.txt}. The splits are those image sets (2,501 / 2,510 / 4,952 images), the classes
the 20 VOC names in the standard order. Not downloaded automatically."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

from fovea.errors import ConfigError
from fovea.vision.detection_set import DATA_DIR_HINT, DetectionData, check_args, collect, read_rgb
from fovea.vision.image_data import data_root

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc(
    split: str, *, size: int = 64, count: int | None = None, seed: int = 0, data_dir: str | Path | None = None
) -> DetectionData:
    """Pascal VOC 2007's image set ``split`` (train, val or test) as (N, 3, size, size) uint8 with its boxes.

    torchvision's ``VOCDetection`` finds the files; the XML is read here, because its transforms-v2 wrapper loses
    the difficult flag, rounds coordinates to integers and fails on an image without objects. Coordinates are
    used as the files give them (1-based, like torchvision). Objects marked difficult are kept as regions that
    evaluation ignores (``ignored_boxes``), as the VOC devkit ignores them: training leaves them out.

    Args:
        split: train, val or test: ImageSets/Main/{split}.txt.
        size: images are resized to size x size, their boxes with them; boxes under 1 px are dropped.
        count: read only the first ``count`` images of the image set (all are held in memory); None: all.
        seed: unused (the data is not generated).
        data_dir: the folder holding VOCdevkit/; None: $FOVEA_DATA, else ./data.
    """
    check_args(split, size, count)
    root = data_root(data_dir)
    base = root / "VOCdevkit" / "VOC2007"
    wanted = [base / "Annotations", base / "JPEGImages", base / "ImageSets" / "Main" / f"{split}.txt"]
    missing = next((p for p in wanted if not p.exists()), None)
    if missing is not None:
        raise ConfigError(
            f"Pascal VOC 2007 not found: no {missing}; expected VOCdevkit/VOC2007/{{Annotations, JPEGImages, "
            f"ImageSets/Main/{split}.txt}} in {root}. It is not downloaded automatically (about 900 MB): untar "
            f"VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar in {root} (torchvision.datasets.VOCDetection("
            f"'{root}', year='2007', image_set='trainval' and 'test', download=True) fetches them), "
            f"{DATA_DIR_HINT} VOCdevkit/"
        )
    from torchvision.datasets import VOCDetection

    found = VOCDetection(str(root), year="2007", image_set=split, download=False)
    n = len(found) if count is None else min(count, len(found))

    def read(i: int) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        return read_rgb(Path(found.images[i])), *_voc_objects(Path(found.annotations[i]))

    return collect(n, size, read, VOC_CLASSES)


def _voc_objects(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (n, 4) float32 xyxy boxes, (n,) labels and (n,) bool difficult flags of the objects in a VOC XML file."""
    from torchvision.datasets import VOCDetection

    if not path.is_file():
        raise ConfigError(f"annotation {path} is missing: its image set lists {path.stem}; add it or unlist it")
    try:
        objects = VOCDetection.parse_voc_xml(ET.parse(path).getroot())["annotation"]["object"]
        boxes = [[float(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
        names = [o["name"] for o in objects]
        difficult = [str(o.get("difficult", "0")).strip() == "1" for o in objects]
    except (ET.ParseError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"{path} is not a readable VOC annotation ({type(e).__name__}: {e}); replace it with the original file"
        ) from None
    unknown = sorted(set(names) - set(VOC_CLASSES))
    if unknown:
        raise ConfigError(f"{path} names class {unknown[0]!r}, not one of the 20 VOC classes: {', '.join(VOC_CLASSES)}")
    labels = torch.tensor([VOC_CLASSES.index(name) for name in names], dtype=torch.int64)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels, torch.tensor(difficult, dtype=torch.bool)
