"""Training augmentation of detection batches: ``augmenter(spec)`` turns a spec such as ``"flip,scale:0.5:1.5"``
into ``augment(images, boxes, labels, seed)``, built from torchvision's transforms v2 so that boxes follow the
pixels; ``parse_augment`` checks a spec, ``draw_seed`` draws the seed ``augment`` would draw from a generator."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fovea.errors import ConfigError

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
