"""Image datasets shared by vision and generative models, held in memory as uint8 tensors.

``digits`` is scikit-learn's 8x8 handwritten digits (1,797 real images, pixel values 0..16), split
1000 train / 350 val / 447 test in file order: the split of the public deep-generative-modelling
course code on this data, so results compare. It ships with scikit-learn: no download.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fovea.config import suggest
from fovea.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageData:
    """Images and labels of one split.

    Args:
        images: (N, C, H, W) uint8 pixels in 0..max_value.
        labels: (N,) int64 class indices.
        max_value: the largest pixel value (16 for digits, 255 for 8-bit images); models divide by it.
        classes: class names, index = label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    max_value: int
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(self.images.to(device), self.labels.to(device), self.max_value, self.classes)


_DATASETS: dict[str, Callable[[str], ImageData]] = {}


def register_dataset(name: str):
    """Decorator: ``fn(split) -> ImageData`` becomes loadable as ``load(name, split)``."""

    def deco(fn: Callable[[str], ImageData]) -> Callable[[str], ImageData]:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = fn
        return fn

    return deco


def datasets() -> list[str]:
    return sorted(_DATASETS)


def check_name(name: str) -> None:
    """Raise ``ConfigError`` (with the closest names) unless ``name`` names a data set."""
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; {suggest(name, datasets())}")


def load(
    name: str, split: str, *, data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> ImageData:
    """The ``split`` (train, val or test) of dataset ``name``.

    Args:
        data_dir: where downloaded data sets live (MNIST, CIFAR-10...); default $FOVEA_DATA, else ./data.
        cache_dir: where generated data (Atari frames) is cached; None: not cached.
    """
    check_name(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return _DATASETS[name](split)


@register_dataset("digits")
def digits(split: str) -> ImageData:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) uint8 in 0..16; 1000 / 350 / 447 in file order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    lo, hi = {"train": (0, 1000), "val": (1000, 1350), "test": (1350, 1797)}[split]
    images = torch.from_numpy(d.images[lo:hi].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target[lo:hi].astype(np.int64))
    return ImageData(images, labels, 16, tuple(str(i) for i in range(10)))


def batches(
    data: ImageData, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of (images, labels): shuffled with ``generator`` when given, in order otherwise.

    In-memory indexing rather than a DataLoader: for data sets that fit on the device this is the
    fast path (no worker processes, no per-sample Python).
    """
    n = len(data)
    order = torch.randperm(n, generator=generator).to(data.images.device) if generator is not None else None
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size] if order is not None else slice(i, i + batch_size)
        yield data.images[idx], data.labels[idx]


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with zeros (data augmentation)."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    off = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator).to(images.device)
    rows = off[:, :1] + torch.arange(h, device=images.device)  # (B, H)
    cols = off[:, 1:] + torch.arange(w, device=images.device)  # (B, W)
    out = padded[torch.arange(b, device=images.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
