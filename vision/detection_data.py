"""Detection data: synthetic digits on noisy canvases with exact boxes, Pascal VOC 2007 and COCO 2017, loaded one
way: ``load(name, split, size=, count=, seed=, data_dir=)`` returns a ``DetectionData`` (the data of the detectors in
vision/detect.py: classification + localisation, object detection).

``digits-detect``: 64x64 canvases holding 1 to 5 of scikit-learn's 8x8 digits, each scaled to a random side of
12..32 px and pasted at a random place over a noisy background, for detectors (``vision.detection_digits``).
``digits-locate``: the same with exactly one digit per canvas, for classification + localisation. Every digit of a
split's canvases comes from that split of ``vision.data.digits``; the same arguments give bit-identical data.

``voc``: Pascal VOC 2007 in torchvision's layout (``vision.detection_voc``); ``coco``: COCO 2017
(``vision.detection_coco``). VOC's difficult objects and COCO's crowd regions are kept as regions that evaluation
ignores (``DetectionData.ignored_boxes``: a detection on one is neither right nor wrong), and left out of training.
Neither set is downloaded automatically.
Both come as RGB resized (plainly, not keeping the aspect ratio) to size x size with their boxes, uint8 0..255,
all held in memory: ``count`` caps the images read (COCO's train split at 64 px is 1.4 GB).

DATA_DIR is ``load``'s data_dir, else $FOVEA_DATA, else ./data. ``augmenter(spec)`` makes the training
augmentation (``vision.detection_augment``), ``draw`` pictures of images with their boxes.

These are not registered in ``vision.data``'s registry: its ``load`` promises an ``ImageData`` (one label per
image), which a detection set is not. ``load(name, split)`` here plays that role. The names of the modules named
above are importable from here, as they were when this module held them all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fovea.config import suggest
from fovea.errors import ConfigError
from fovea.vision.detection_augment import AUGMENT_ITEMS, Augmenter, RandomScale, augmenter, draw_seed, parse_augment
from fovea.vision.detection_coco import coco
from fovea.vision.detection_digits import CANVASES, LIT, MAX_COVER, MAX_IOU, TRIES, digits_canvases, digits_locate
from fovea.vision.detection_metrics import draw
from fovea.vision.detection_set import DetectionData, check_args
from fovea.vision.detection_voc import VOC_CLASSES, voc

__all__ = [
    "AUGMENT_ITEMS",
    "CANVASES",
    "DETECTION_DATASETS",
    "LIT",
    "MAX_COVER",
    "MAX_IOU",
    "TRIES",
    "VOC_CLASSES",
    "Augmenter",
    "DetectionData",
    "RandomScale",
    "augmenter",
    "coco",
    "digits_canvases",
    "digits_locate",
    "draw",
    "draw_seed",
    "load",
    "parse_augment",
    "voc",
]


def _digits(objects: tuple[int, int]) -> Callable[..., DetectionData]:
    """A ``DETECTION_DATASETS`` entry: canvases of ``objects`` = (least, most) digits, sized in proportion."""

    def generate(
        split: str, *, size: int = 64, count: int | None = None, seed: int = 0, data_dir: str | Path | None = None
    ) -> DetectionData:
        check_args(split, size, count)
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
