"""The in-memory detection set, ``DetectionData``, and how real images become one: ``check_args`` checks a
loader's uniform arguments, ``read_rgb`` opens an image file, ``collect`` resizes images with their boxes into a
``DetectionData``. The readers (``vision.detection_digits``, ``detection_voc``, ``detection_coco``) build on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fovea.errors import ConfigError
from fovea.vision.image_data import SPLITS

DATA_DIR_HINT = "or pass --data-dir DIR (or set FOVEA_DATA=DIR) to the folder that holds"
"""The end of a "not found" message of a real data set: where else the files may be."""


@dataclass(frozen=True)
class DetectionData:
    """Canvases of one split with their boxes and labels, and the regions that evaluation ignores.

    Args:
        images: (N, C, H, W) uint8 pixels in 0..max_value.
        boxes: N float32 tensors (n_i, 4) of (x1, y1, x2, y2) pixel coordinates, torchvision's convention:
            the box covers columns x1 .. x2 - 1 and rows y1 .. y2 - 1, so x2 - x1 is its width in pixels.
            These are the objects a detector trains on and is scored on.
        labels: N int64 tensors (n_i,) of class indices, one per box.
        max_value: the largest pixel value (16 for digits); models divide by it.
        classes: class names, index = label.
        ignored_boxes: N float32 tensors (m_i, 4), xyxy like ``boxes``: objects that evaluation ignores (VOC's
            difficult objects, COCO's crowd regions). A detection that matches one is neither a true nor a false
            positive, and they are no positives to find (``detection_metrics.mean_ap`` hands them to COCOeval as
            crowd regions). Training leaves them out (``batch``), as torchvision's detection references leave out
            COCO's crowds and py-faster-rcnn VOC's difficult objects. Empty (the default): none anywhere.
        ignored_labels: N int64 tensors (m_i,), one per ignored box; empty when ``ignored_boxes`` is.
    """

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    max_value: int
    classes: tuple[str, ...]
    ignored_boxes: list[torch.Tensor] = field(default_factory=list)
    ignored_labels: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.ignored_boxes) != len(self.ignored_labels) or len(self.ignored_boxes) not in (0, len(self)):
            raise ValueError(
                f"ignored_boxes and ignored_labels must both be empty or hold one tensor per image ({len(self)}); "
                f"got {len(self.ignored_boxes)} and {len(self.ignored_labels)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The (images, boxes, labels) of the items at ``idx``, to train on: ignored regions are not among them."""
        return self.images[idx], [self.boxes[j] for j in idx], [self.labels[j] for j in idx]

    def ignored(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (m, 4) boxes and (m,) labels that evaluation ignores in image ``i`` (m = 0 when there are none)."""
        if not self.ignored_boxes:
            return self.boxes[i].new_zeros((0, 4)), self.labels[i].new_zeros(0)
        return self.ignored_boxes[i], self.ignored_labels[i]

    def to(self, device: torch.device | str) -> DetectionData:
        return DetectionData(
            self.images.to(device),
            [b.to(device) for b in self.boxes],
            [lab.to(device) for lab in self.labels],
            self.max_value,
            self.classes,
            [b.to(device) for b in self.ignored_boxes],
            [lab.to(device) for lab in self.ignored_labels],
        )


def check_args(split: str, size: int, count: int | None) -> None:
    """Raise ``ConfigError`` unless ``split`` is a split, ``size`` a side >= 1 and ``count`` None or >= 1."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not (isinstance(size, int) and size >= 1):
        raise ConfigError(f"size = {size!r}: need a whole number of pixels >= 1 (images come out size x size)")
    if count is not None and not (isinstance(count, int) and count >= 1):
        raise ConfigError(f"count = {count!r}: need None (the whole split) or a whole number >= 1")


def read_rgb(path: Path):
    """The image at ``path`` as an RGB PIL image; an unreadable file raises ``ConfigError`` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() decodes the whole file, so truncation shows here
    except (OSError, ValueError, SyntaxError) as e:
        raise ConfigError(f"cannot read image {path}: {e}; replace it with the original file") from None


def collect(
    n: int,
    size: int,
    read: Callable[[int], tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]],
    classes: tuple[str, ...],
) -> DetectionData:
    """A ``DetectionData`` of the ``n`` items ``read(i) -> (RGB PIL image, (k, 4) xyxy boxes, (k,) labels, (k,)
    bool ignored)``: the objects marked ignored go to ``ignored_boxes`` / ``ignored_labels``, the others to
    ``boxes`` / ``labels``.

    Each image is resized to size x size with transforms v2 (boxes scaled with it), its boxes clamped to the
    canvas and those under 1 px dropped with their labels; an image left without boxes is kept.
    """
    sanitize = v2.SanitizeBoundingBoxes(labels_getter=lambda inputs: (inputs[1]["labels"], inputs[1]["ignored"]))
    fit = v2.Compose([v2.Resize((size, size), antialias=True), v2.ClampBoundingBoxes(), sanitize])
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)  # filled in place: no second copy in memory
    boxes, labels, ignored_boxes, ignored_labels = [], [], [], []
    for i in range(n):
        image, box, label, ignored = read(i)
        pixels = tv_tensors.Image(TF.pil_to_tensor(image))  # (3, H, W) uint8
        box = tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=tuple(pixels.shape[-2:]))
        pixels, target = fit(pixels, {"boxes": box, "labels": label, "ignored": ignored})
        images[i] = pixels
        box, ignored = target["boxes"].as_subclass(torch.Tensor).reshape(-1, 4), target["ignored"]  # (k', 4), (k',)
        boxes.append(box[~ignored])
        labels.append(target["labels"][~ignored])
        ignored_boxes.append(box[ignored])
        ignored_labels.append(target["labels"][ignored])
    return DetectionData(images, boxes, labels, 255, classes, ignored_boxes, ignored_labels)
