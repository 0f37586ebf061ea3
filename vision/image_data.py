"""The in-memory image set every vision and generative model reads, ``ImageData`` (images and one label each), the
split names, and what the readers of downloaded sets share: where data lives (``data_root``), how an official
training set is cut into train and val (``val_count``, ``take``), the download through torchvision
(``torchvision_download``) and the error that names missing files (``missing_files``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fovea.errors import ConfigError

SPLITS = ("train", "val", "test")
DIGIT_CLASSES = tuple(str(i) for i in range(10))


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


def data_root(data_dir: str | Path | None = None) -> Path:
    """Where downloaded data sets live: ``data_dir``, else $FOVEA_DATA, else ./data."""
    return Path(data_dir or os.environ.get("FOVEA_DATA") or "data").expanduser()


def val_count(n: int) -> int:
    """Images of an official training set of ``n`` that go to val: min(5000, n // 10), the last ones."""
    return min(5000, n // 10)


def take(images: np.ndarray, labels: np.ndarray, split: str, classes: tuple[str, ...]) -> ImageData:
    """``split`` of an official training set (train: all but the last ``val_count``; val: those) or its test set."""
    if split != "test":
        cut = len(images) - val_count(len(images))
        images, labels = (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])
    return ImageData(
        torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)), 255, classes
    )


def torchvision_download(dataset: str, root: Path) -> str | None:
    """Download torchvision's ``dataset`` (MNIST, FashionMNIST, CIFAR10) into ``root``: None, or why it failed."""
    try:
        import torchvision.datasets

        getattr(torchvision.datasets, dataset)(root=str(root), train=True, download=True)
    except Exception as e:  # no network, a proxy, a full disk: all reported the same way
        reason = str(e).strip().splitlines()
        return f"{type(e).__name__}: {reason[-1] if reason else ''}"[:200]
    return None


def missing_files(what: str, folder: Path, files: list[str], reason: str) -> ConfigError:
    """The error for data set ``what`` whose ``files`` are not in ``folder`` once a download failed for ``reason``."""
    return ConfigError(
        f"{what} not found: expected {', '.join(files)} in {folder}; downloading it with torchvision failed "
        f"({reason}). Put the files there, or pass --data-dir DIR (or set FOVEA_DATA=DIR) to the folder that holds "
        f"{folder.parent.name if folder.name == 'raw' else folder.name}/"
    )
