"""Detection data: synthetic digits on noisy canvases with exact boxes, Pascal VOC 2007 and COCO 2017.

The data of the detectors (vision/detect.py), after chapter 11 of the notes (11.2 classification +
localisation, 11.3 object detection):

``digits-detect``: 64x64 canvases holding 1 to 5 of scikit-learn's 8x8 digits, each scaled to a
random side of 12..32 px and pasted at a random place over a noisy background, for detectors.
``digits-locate``: the same with exactly one digit per canvas, for classification + localisation.

Every digit of a split's canvases comes from that split of ``vision.data.digits`` (train 1000 / val
350 / test 447 in file order), so no digit leaks across splits. Generation is deterministic: the same
arguments give bit-identical data. Defaults: 4000 train, 500 val and 500 test canvases.

``voc``: Pascal VOC 2007 in torchvision's layout, DATA_DIR/VOCdevkit/VOC2007/{Annotations, JPEGImages,
ImageSets/Main/{train,val,test}.txt}; the splits are those image sets (2,501 / 2,510 / 4,952 images), the
classes the 20 VOC names in the standard order, objects marked difficult left out.
``coco``: COCO 2017, DATA_DIR/coco/{train2017,val2017}/ and DATA_DIR/coco/annotations/instances_*.json;
test is val2017 (5,000 images, the figure everyone reports), val the last min(5000, N // 10) images of
train2017 in image-id order, train the rest (as ``vision.data``'s classification sets); crowd objects are
left out, the 80 categories in id order become labels 0..79. Neither is downloaded automatically.
Both come as RGB resized (plainly, not keeping the aspect ratio) to size x size with their boxes, uint8
0..255, all held in memory: ``count`` caps the images read (COCO's train split at 64 px is 1.4 GB).

DATA_DIR is ``load``'s data_dir, else $FOVEA_DATA, else ./data. ``load(name, split, size=, count=, seed=,
data_dir=)`` reads every data set the same way; ``augmenter(spec)`` makes the training augmentation.

These are not registered in ``vision.data``'s registry: its ``load`` promises an ``ImageData`` (one
label per image), which a detection set is not. ``load(name, split)`` here plays that role.
"""

from __future__ import annotations

import contextlib
import io
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fovea.config import suggest
from fovea.errors import ConfigError
from fovea.vision.data import DIGIT_CLASSES, SPLITS, _val_count, data_root, digits

CANVASES = {"train": 4000, "val": 500, "test": 500}
"""Canvases per split by default."""
LIT = 3
"""A scaled digit's pixel is lit when its value (0..16) exceeds this; the box is tight around lit pixels."""
MAX_IOU = 0.3
"""A digit is moved when its box overlaps an already placed box of its canvas by more than this IoU ..."""
MAX_COVER = 0.5
"""... or covers more than this share of the smaller of the two boxes (a small digit inside a big one's box)."""
TRIES = 20
"""Positions tried per digit before it is left out of its canvas."""


@dataclass(frozen=True)
class DetectionData:
    """Canvases of one split with their boxes and labels.

    Args:
        images: (N, C, H, W) uint8 pixels in 0..max_value.
        boxes: N float32 tensors (n_i, 4) of (x1, y1, x2, y2) pixel coordinates, torchvision's convention:
            the box covers columns x1 .. x2 - 1 and rows y1 .. y2 - 1, so x2 - x1 is its width in pixels.
        labels: N int64 tensors (n_i,) of class indices, one per box.
        max_value: the largest pixel value (16 for digits); models divide by it.
        classes: class names, index = label.
    """

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    max_value: int
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The (images, boxes, labels) of the items at ``idx``."""
        return self.images[idx], [self.boxes[j] for j in idx], [self.labels[j] for j in idx]

    def to(self, device: torch.device | str) -> DetectionData:
        return DetectionData(
            self.images.to(device),
            [b.to(device) for b in self.boxes],
            [lab.to(device) for lab in self.labels],
            self.max_value,
            self.classes,
        )


def digits_canvases(
    split: str,
    *,
    count: int | None = None,
    size: int = 64,
    objects: tuple[int, int] = (1, 5),
    scale: tuple[int, int] = (12, 32),
    noise: int = 2,
    seed: int = 0,
) -> DetectionData:
    """Canvases of ``split`` (train, val or test) holding digits of that split only, with their tight boxes.

    Args:
        split: train, val or test; the digits come from the same split of ``vision.data.digits``.
        count: canvases; default 4000 for train, 500 for val and test.
        size: canvas side in pixels.
        objects: (least, most) digits drawn per canvas. A digit that finds no place clear of the others
            (``MAX_IOU``, ``MAX_COVER``) in ``TRIES`` tries is left out, so a canvas can hold fewer
            (never none: the first digit always fits).
        scale: (least, most) side in pixels a digit is scaled to (bilinear, rounded back to 0..16); its box
            is tight around its lit pixels (> ``LIT``), so it can be smaller than the scaled square.
        noise: the background is uniform integer noise in 0..noise (below ``LIT``); digits are pasted with max().
        seed: seeds everything; the split is mixed in, so splits draw differently.
    """
    return _canvases(split, count, size, objects, scale, noise, seed)[0]


def digits_locate(split: str, **kwargs) -> DetectionData:
    """``digits_canvases`` with exactly one digit per canvas (classification + localisation)."""
    if "objects" in kwargs:
        raise TypeError("digits_locate places exactly one digit; use digits_canvases for other counts")
    return digits_canvases(split, objects=(1, 1), **kwargs)


def _check(split: str, size: int, objects: tuple[int, int], scale: tuple[int, int], noise: int) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not 1 <= objects[0] <= objects[1]:
        raise ConfigError(f"objects = {objects}: need 1 <= least <= most")
    if not 1 <= scale[0] <= scale[1] <= size:
        raise ConfigError(f"scale = {scale} with size = {size}: need 1 <= least <= most <= size")
    if not 0 <= noise < LIT:
        raise ConfigError(f"noise = {noise}: need 0 <= noise < {LIT} so the background never counts as a digit")


def _canvases(
    split: str,
    count: int | None,
    size: int,
    objects: tuple[int, int],
    scale: tuple[int, int],
    noise: int,
    seed: int,
) -> tuple[DetectionData, list[np.ndarray]]:
    """The canvases and, per canvas, an (n_i, 4) int64 array of (source index in the split, x, y, side) per digit."""
    _check(split, size, objects, scale, noise)
    source = digits(split)
    n = CANVASES[split] if count is None else count
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    per_canvas = rng.integers(objects[0], objects[1] + 1, n)
    total = int(per_canvas.sum())
    picks = rng.integers(0, len(source), total)  # (T,) index of each drawn digit in the split
    sides = rng.integers(scale[0], scale[1] + 1, total)  # (T,)
    canvas = rng.integers(0, noise + 1, (n, size, size)).astype(np.uint8)  # (N, H, W) background

    # Scale the drawn digits, one interpolate call per side; tight box of the lit pixels within each patch.
    patches: list[np.ndarray] = [np.empty(0)] * total
    tight = np.zeros((total, 4), np.int64)  # (T, 4) x1, y1, x2, y2 within the patch
    small = source.images[:, 0].float()  # (S, 8, 8)
    for side in np.unique(sides):
        idx = np.flatnonzero(sides == side)
        scaled = F.interpolate(small[picks[idx]][:, None], size=(int(side),) * 2, mode="bilinear", align_corners=False)
        scaled = scaled[:, 0].round().clamp(0, source.max_value).to(torch.uint8).numpy()  # (B, side, side)
        lit = scaled > LIT
        cols, rows = lit.any(1), lit.any(2)  # (B, side)
        tight[idx, 0], tight[idx, 2] = cols.argmax(1), side - cols[:, ::-1].argmax(1)
        tight[idx, 1], tight[idx, 3] = rows.argmax(1), side - rows[:, ::-1].argmax(1)
        for j, i in enumerate(idx):
            patches[i] = scaled[j]

    # Place digits canvas by canvas: of TRIES random positions per digit (drawn up front), the first whose box
    # clashes with no placed box of its canvas (MAX_IOU, MAX_COVER). Plain Python on a few boxes beats numpy here.
    tries = (rng.random((total, TRIES, 2)) * (size - sides + 1)[:, None, None]).astype(np.int64)  # (T, TRIES, 2)
    tight_list, tries_list = tight.tolist(), tries.tolist()
    boxes, labels, placed = [], [], []
    starts = np.concatenate([[0], np.cumsum(per_canvas)]).tolist()
    for c in range(n):
        kept: list[list[int]] = []  # boxes on the canvas, xyxy
        where: list[list[int]] = []  # (source index, x, y, side)
        for i in range(starts[c], starts[c + 1]):
            x1, y1, x2, y2 = tight_list[i]
            for x, y in tries_list[i]:
                box = [x1 + x, y1 + y, x2 + x, y2 + y]
                if not any(_clash(box, other) for other in kept):
                    break
            else:
                continue  # no place found: leave this digit out
            side = int(sides[i])
            region = canvas[c, y : y + side, x : x + side]
            np.maximum(region, patches[i], out=region)
            kept.append(box)
            where.append([int(picks[i]), x, y, side])
        boxes.append(torch.tensor(kept, dtype=torch.float32))
        labels.append(source.labels[[w[0] for w in where]])
        placed.append(np.array(where, np.int64))
    images = torch.from_numpy(canvas[:, None])  # (N, 1, H, W)
    return DetectionData(images, boxes, labels, source.max_value, DIGIT_CLASSES), placed


def _clash(a: list[int], b: list[int]) -> bool:
    """Whether two xyxy boxes overlap by more than MAX_IOU, or one covers more than MAX_COVER of the smaller."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter) > MAX_IOU or inter / min(area_a, area_b) > MAX_COVER


# ----------------------------------------------------------------------------- real formats: VOC, COCO

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
_DATA_DIR_HINT = "or pass --data-dir DIR (or set FOVEA_DATA=DIR) to the folder that holds"


def voc(
    split: str, *, size: int = 64, count: int | None = None, seed: int = 0, data_dir: str | Path | None = None
) -> DetectionData:
    """Pascal VOC 2007's image set ``split`` (train, val or test) as (N, 3, size, size) uint8 with its boxes.

    torchvision's ``VOCDetection`` finds the files; the XML is read here, because its transforms-v2 wrapper keeps
    difficult objects, rounds coordinates to integers and fails on an image without objects. Coordinates are
    used as the files give them (1-based, like torchvision). Objects marked difficult are left out.

    Args:
        split: train, val or test: ImageSets/Main/{split}.txt.
        size: images are resized to size x size, their boxes with them; boxes under 1 px are dropped.
        count: read only the first ``count`` images of the image set (all are held in memory); None: all.
        seed: unused (the data is not generated).
        data_dir: the folder holding VOCdevkit/; None: $FOVEA_DATA, else ./data.
    """
    _check_args(split, size, count)
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
            f"{_DATA_DIR_HINT} VOCdevkit/"
        )
    from torchvision.datasets import VOCDetection

    found = VOCDetection(str(root), year="2007", image_set=split, download=False)
    n = len(found) if count is None else min(count, len(found))

    def read(i: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        boxes, labels = _voc_objects(Path(found.annotations[i]))
        return _read_rgb(Path(found.images[i])), boxes, labels

    return _collect(n, size, read, VOC_CLASSES)


def _voc_objects(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The (n, 4) float32 xyxy boxes and (n,) labels of the objects in a VOC XML file that are not difficult."""
    from torchvision.datasets import VOCDetection

    if not path.is_file():
        raise ConfigError(f"annotation {path} is missing: its image set lists {path.stem}; add it or unlist it")
    try:
        objects = VOCDetection.parse_voc_xml(ET.parse(path).getroot())["annotation"]["object"]
        objects = [o for o in objects if str(o.get("difficult", "0")).strip() != "1"]
        boxes = [[float(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
        names = [o["name"] for o in objects]
    except (ET.ParseError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"{path} is not a readable VOC annotation ({type(e).__name__}: {e}); replace it with the original file"
        ) from None
    unknown = sorted(set(names) - set(VOC_CLASSES))
    if unknown:
        raise ConfigError(f"{path} names class {unknown[0]!r}, not one of the 20 VOC classes: {', '.join(VOC_CLASSES)}")
    labels = torch.tensor([VOC_CLASSES.index(name) for name in names], dtype=torch.int64)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels


def coco(
    split: str, *, size: int = 64, count: int | None = None, seed: int = 0, data_dir: str | Path | None = None
) -> DetectionData:
    """COCO 2017 as (N, 3, size, size) uint8 with its boxes: test = val2017, val / train = the end / rest of train2017.

    Read with torchvision's ``CocoDetection`` (pycocotools) and its transforms-v2 wrapper. Images go in image-id
    order; val is the last min(5000, N // 10) of train2017's. Crowd objects are left out; labels are the
    annotation file's categories in id order, numbered 0..K-1 (``classes`` holds their names).

    Args:
        split: train, val or test.
        size: images are resized to size x size, their boxes with them; boxes under 1 px are dropped.
        count: read only the first ``count`` images of the split (all are held in memory); None: all.
        seed: unused (the data is not generated).
        data_dir: the folder holding coco/; None: $FOVEA_DATA, else ./data.
    """
    _check_args(split, size, count)
    root = data_root(data_dir) / "coco"
    part = "val2017" if split == "test" else "train2017"
    images, annotations = root / part, root / "annotations" / f"instances_{part}.json"
    if not annotations.is_file() or not images.is_dir():
        raise ConfigError(
            f"COCO 2017 not found: expected images in {images}/ and annotations in {annotations} (the layout "
            f"coco/{{train2017,val2017}}/ and coco/annotations/instances_{{train2017,val2017}}.json); "
            f"it is not downloaded automatically: unzip train2017.zip, val2017.zip and "
            f"annotations_trainval2017.zip from https://cocodataset.org/#download into {root}, {_DATA_DIR_HINT} coco/"
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
        cut = len(found) - _val_count(len(found))
        positions = positions[:cut] if split == "train" else positions[cut:]
    positions = positions[:count]

    def read(i: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        image_id = found.ids[positions[i]]
        try:
            image, target = wrapped[positions[i]]
            if "boxes" not in target:  # the wrapper's answer for an image without annotations
                return image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
            keep = torch.tensor(target["iscrowd"]) == 0
            labels = torch.tensor([label_of[c] for c in target["labels"].tolist()], dtype=torch.int64)
        except (OSError, SyntaxError) as e:  # PIL: a missing, truncated or foreign image
            path = images / found.coco.imgs[image_id]["file_name"]
            raise ConfigError(f"cannot read image {path}: {e}; replace it with the original file") from None
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"{annotations} holds a malformed annotation of image id {image_id} ({type(e).__name__}: {e}); "
                "replace the file with the original"
            ) from None
        return image, target["boxes"].as_subclass(torch.Tensor).float()[keep], labels[keep]

    names = tuple(str(found.coco.cats[c].get("name", c)) for c in ids)
    return _collect(len(positions), size, read, names)


def _check_args(split: str, size: int, count: int | None) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not (isinstance(size, int) and size >= 1):
        raise ConfigError(f"size = {size!r}: need a whole number of pixels >= 1 (images come out size x size)")
    if count is not None and not (isinstance(count, int) and count >= 1):
        raise ConfigError(f"count = {count!r}: need None (the whole split) or a whole number >= 1")


def _read_rgb(path: Path):
    """The image at ``path`` as an RGB PIL image; an unreadable file raises ``ConfigError`` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() decodes the whole file, so truncation shows here
    except (OSError, ValueError, SyntaxError) as e:
        raise ConfigError(f"cannot read image {path}: {e}; replace it with the original file") from None


def _collect(
    n: int, size: int, read: Callable[[int], tuple[Any, torch.Tensor, torch.Tensor]], classes: tuple[str, ...]
) -> DetectionData:
    """A ``DetectionData`` of the ``n`` items ``read(i) -> (RGB PIL image, (k, 4) xyxy boxes, (k,) labels)``.

    Each image is resized to size x size with transforms v2 (boxes scaled with it), its boxes clamped to the
    canvas and those under 1 px dropped with their labels; an image left without boxes is kept.
    """
    fit = v2.Compose([v2.Resize((size, size), antialias=True), v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()])
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)  # filled in place: no second copy in memory
    boxes, labels = [], []
    for i in range(n):
        image, box, label = read(i)
        pixels = tv_tensors.Image(TF.pil_to_tensor(image))  # (3, H, W) uint8
        box = tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=tuple(pixels.shape[-2:]))
        pixels, target = fit(pixels, {"boxes": box, "labels": label})
        images[i] = pixels
        boxes.append(target["boxes"].as_subclass(torch.Tensor).reshape(-1, 4))
        labels.append(target["labels"])
    return DetectionData(images, boxes, labels, 255, classes)


# ----------------------------------------------------------------------------- one way to load them all


def _digits(objects: tuple[int, int]) -> Callable[..., DetectionData]:
    def generate(
        split: str, *, size: int = 64, count: int | None = None, seed: int = 0, data_dir: str | Path | None = None
    ) -> DetectionData:
        _check_args(split, size, count)
        scale = (max(1, round(12 * size / 64)), max(1, round(32 * size / 64)))  # 12..32 px at 64, in proportion
        return digits_canvases(split, count=count, size=size, objects=objects, scale=scale, seed=seed)

    return generate


DETECTION_DATASETS: dict[str, Callable[..., DetectionData]] = {
    "digits-detect": _digits((1, 5)),
    "digits-locate": _digits((1, 1)),
    "voc": voc,
    "coco": coco,
}
"""Every entry is called as ``fn(split, *, size=64, count=None, seed=0, data_dir=None)``; see ``load``."""


def load(
    name: str,
    split: str,
    *,
    size: int = 64,
    count: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> DetectionData:
    """The ``split`` (train, val or test) of detection data set ``name`` (a key of ``DETECTION_DATASETS``).

    Args:
        name: digits-detect, digits-locate, voc or coco.
        split: train, val or test.
        size: images come out size x size, boxes scaled with them (digits: the canvas side; the digits' sizes
            follow it, 12..32 px at 64).
        count: caps the images (everything is held in memory); None: the split's default (digits: 4000 / 500 /
            500) or all of it (voc, coco).
        seed: seeds generated sets (digits); real sets ignore it.
        data_dir: where real sets live; None: $FOVEA_DATA, else ./data.
    """
    if name not in DETECTION_DATASETS:
        raise ConfigError(f"unknown detection dataset {name!r}; {suggest(name, list(DETECTION_DATASETS))}")
    return DETECTION_DATASETS[name](split, size=size, count=count, seed=seed, data_dir=data_dir)


# ----------------------------------------------------------------------------- augmentation for training

Augmenter = Callable[
    [torch.Tensor, list[torch.Tensor], list[torch.Tensor], int | torch.Generator],
    tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]],
]
AUGMENT_ITEMS = ("flip", "scale:LO:HI", "iou-crop")
"""The items of an augmentation spec; see ``augmenter``."""


class RandomScale(v2.Transform):
    """Zoom by a random factor in [lo, hi] and keep the canvas size: resize, then crop at a random place (factor > 1)
    or paste at a random place on a black canvas (factor < 1). Boxes follow; clamp and sanitize them afterwards.

    Args:
        lo, hi: the factor is drawn uniformly from [lo, hi], 0 < lo <= hi.
        size: (H, W) of the input, which is also the output's.
    """

    def __init__(self, lo: float, hi: float, size: tuple[int, int]) -> None:
        super().__init__()
        self.lo, self.hi, self.size = lo, hi, size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        factor = self.lo + (self.hi - self.lo) * float(torch.rand(1))
        side = [max(1, round(s * factor)) for s in self.size]  # (H', W') after the resize
        # Where the S x S window starts in the resized image: negative (padding) when it is smaller.
        start = []
        for resized, s in zip(side, self.size, strict=True):
            offset = int(torch.randint(abs(resized - s) + 1, (1,)))
            start.append(offset if resized >= s else -offset)
        return {"side": side, "top": start[0], "left": start[1]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        resized = TF.resize(inpt, params["side"], antialias=True)
        return TF.crop(resized, params["top"], params["left"], *self.size)  # crop() pads with 0 outside the image


_AUGMENTS: dict[str, Callable[..., list[Callable]]] = {
    "flip": lambda size: [v2.RandomHorizontalFlip(0.5)],
    "scale": lambda size, lo, hi: [RandomScale(lo, hi, size)],
    "iou-crop": lambda size: [v2.RandomIoUCrop(), v2.Resize(size, antialias=True)],
}


def parse_augment(spec: str) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """The items of an augmentation spec as (name, arguments): ``"flip,scale:0.5:1.5"`` ->
    ``(("flip", ()), ("scale", (0.5, 1.5)))``; '' -> (). A malformed spec raises ``ConfigError`` listing the items."""
    items: list[tuple[str, tuple[float, ...]]] = []
    for text in (t.strip() for t in spec.split(",")):
        if not text:
            continue
        name, *args = text.split(":")
        if name not in _AUGMENTS or (name != "scale" and args):
            raise ConfigError(
                f"unknown augmentation {text!r} in {spec!r}; valid items (comma-separated): "
                f"{', '.join(AUGMENT_ITEMS)}, e.g. 'flip,scale:0.5:1.5'"
            )
        values: tuple[float, ...] = ()
        if name == "scale":
            try:
                values = tuple(float(a) for a in args)
            except ValueError:
                values = ()
            if len(values) != 2 or not all(math.isfinite(v) for v in values) or not 0 < values[0] <= values[1]:
                raise ConfigError(
                    f"augmentation {text!r}: write scale:LO:HI with numbers 0 < LO <= HI, e.g. scale:0.5:1.5"
                )
        if any(name == seen for seen, _ in items):
            raise ConfigError(f"augmentation {name!r} appears twice in {spec!r}; list each item once")
        items.append((name, values))
    return tuple(items)


def augmenter(spec: str) -> Augmenter:
    """The training augmentation ``spec`` as ``augment(images, boxes, labels, generator) -> (images, boxes, labels)``.

    Items, comma-separated, applied in the order written ('' = none: the batch comes back as it is):

    - ``flip``: a horizontal flip, with probability 0.5 per image.
    - ``scale:LO:HI``: zoom by a random factor in [LO, HI] (``RandomScale``): resize, then crop a random
      S x S window when larger, or paste at a random place on a black S x S canvas when smaller.
    - ``iou-crop``: SSD's random crop (transforms v2 ``RandomIoUCrop``), resized back to S x S; an image
      without boxes is left as it is (the crop needs boxes).

    Every image then has its boxes clamped to the canvas and those under 1 px dropped with their labels
    (``SanitizeBoundingBoxes``). The images keep their size, so the batch still stacks.

    Args of ``augment``:
        images: (B, C, H, W) uint8 (or float), any C (1 for digits, 3 for VOC / COCO).
        boxes, labels: B (n_i, 4) xyxy boxes and B (n_i,) labels.
        seed: seeds torchvision's transforms (which use the global RNG, forked here so that it is left as it
            was): the same seed gives the same output. A ``torch.Generator`` stands for ``draw_seed(generator)``
            (one number drawn from it); a spec of no items draws nothing.
    """
    items = parse_augment(spec)
    pipelines: dict[tuple[int, int, bool], v2.Compose] = {}

    def pipeline(size: tuple[int, int], has_boxes: bool) -> v2.Compose:
        if (*size, has_boxes) not in pipelines:
            steps = [s for name, args in items if has_boxes or name != "iou-crop" for s in _AUGMENTS[name](size, *args)]
            pipelines[(*size, has_boxes)] = v2.Compose([*steps, v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()])
        return pipelines[(*size, has_boxes)]

    def augment(
        images: torch.Tensor, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], seed: int | torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        if not items:
            return images, list(boxes), list(labels)
        size = (images.shape[-2], images.shape[-1])
        seed = draw_seed(seed) if isinstance(seed, torch.Generator) else seed
        out = torch.empty_like(images)  # (B, C, H, W)
        new_boxes, new_labels = [], []
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's is not touched
            for i in range(len(images)):
                box = tv_tensors.BoundingBoxes(boxes[i].float(), format="XYXY", canvas_size=size)
                image, target = pipeline(size, len(box) > 0)(
                    tv_tensors.Image(images[i]), {"boxes": box, "labels": labels[i]}
                )
                out[i] = image
                new_boxes.append(target["boxes"].as_subclass(torch.Tensor))
                new_labels.append(target["labels"])
        return out, new_boxes, new_labels

    return augment


def draw_seed(generator: torch.Generator) -> int:
    """One augmentation seed drawn from ``generator`` (as ``augment`` draws it when handed the generator)."""
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


def draw(
    images: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    classes: Sequence[str],
    max_value: int,
    *,
    scores: Sequence[torch.Tensor] | None = None,
    upscale: int = 4,
    color: str = "red",
    width: int = 1,
) -> list[np.ndarray]:
    """Pictures of images with their boxes and class names, e.g. for W&B: a list of (H*upscale, W*upscale, 3) uint8.

    Args:
        images: (N, C, H, W) pixels in 0..max_value, C = 1 (grey) or 3.
        boxes: N (n_i, 4) xyxy boxes in the images' pixel coordinates.
        labels: N (n_i,) class indices.
        classes: class names, index = label.
        max_value: the largest pixel value, drawn as white.
        scores: N (n_i,) confidences shown after the class names (predictions); None for true boxes.
        upscale: each pixel becomes upscale x upscale pixels (nearest), so small canvases stay legible.
        color: box and text colour.
        width: box line width in drawn pixels.
    """
    from torchvision.utils import draw_bounding_boxes

    pictures = []
    for i, image in enumerate(images.detach().cpu()):
        rgb = (image.float() * (255 / max_value)).round().clamp(0, 255).to(torch.uint8).expand(3, -1, -1)
        rgb = rgb.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)  # (3, H*upscale, W*upscale)
        names = [classes[int(k)] for k in labels[i]]
        if scores is not None:
            names = [f"{name} {float(s):.2f}" for name, s in zip(names, scores[i], strict=True)]
        if names:  # torchvision warns on an image without boxes
            rgb = draw_bounding_boxes(rgb, boxes[i].detach().cpu().float() * upscale, names, colors=color, width=width)
        pictures.append(rgb.permute(1, 2, 0).contiguous().numpy())
    return pictures
