"""Image datasets shared by vision and generative models, held in memory as uint8 tensors.

Every data set has the splits train, val and test; ``load(name, split)`` returns one as an ``ImageData``.

``digits`` is scikit-learn's 8x8 handwritten digits (1,797 real images, pixel values 0..16), split
1000 train / 350 val / 447 test in file order: the split of the public deep-generative-modelling
course code on this data, so results compare. It ships with scikit-learn: no download.

``mnist`` and ``fashion-mnist`` read the IDX files (gzipped or not) in torchvision's layout,
DATA_DIR/MNIST/raw/ and DATA_DIR/FashionMNIST/raw/; ``cifar10`` reads DATA_DIR/cifar-10-batches-py/
(the python pickles, through an unpickler that can only rebuild numpy arrays) or
DATA_DIR/cifar-10-batches-bin/. Missing files are downloaded with torchvision; where that fails the
error names the files expected and where. Their val split is the last min(5000, N // 10) images of
the official training set (the last 5,000: MNIST 55,000 / 5,000, CIFAR-10 45,000 / 5,000), train is
the rest, and test is the official test set.

``folder:PATH`` is a folder of images, one subfolder per class (PATH/CLASS/*.png, .jpg, .jpeg, .bmp,
.gif), with train/, val/ and test/ subfolders of that form when PATH has them; otherwise each class's
files, sorted by name, go by position: 0, 10, 20, ... to val, 1, 11, 21, ... to test, the rest to
train (80 / 10 / 10).

``atari:GAME`` and ``atari:GAME:rgb`` are frames of an Atari game played by a uniformly random policy
(84x84 grey, or 64x64 colour), one kept every 4 agent steps; the splits are played from their own
seeds, so they share no episode. They are generated, and cached when ``load`` is given a cache_dir.
DATA_DIR is ``load``'s data_dir, else $FOVEA_DATA, else ./data.

This module holds the registry (``register_dataset``, ``datasets``, ``check_name``, ``load``) and ``digits``; the
readers live beside it (``vision.data_mnist``, ``data_cifar``, ``data_folder``, ``data_atari``), the ``ImageData``
type in ``vision.image_data`` and the minibatches in ``vision.image_batches``. Their public names are importable
from here too, as they were when this module held them all.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fovea.config import suggest
from fovea.errors import ConfigError
from fovea.vision.data_atari import ATARI_FRAMES, ATARI_SEEDS, atari_frames, atari_game, collect_atari
from fovea.vision.data_cifar import CIFAR10_CLASSES, CIFAR_BATCHES, cifar10
from fovea.vision.data_folder import IMAGE_SUFFIXES, image_folder
from fovea.vision.data_mnist import FASHION_CLASSES, fashion_mnist, mnist, read_idx
from fovea.vision.image_batches import batches, global_batches, random_shift
from fovea.vision.image_data import DIGIT_CLASSES, SPLITS, ImageData, data_root, val_count

__all__ = [
    "ATARI_FRAMES",
    "ATARI_SEEDS",
    "CIFAR10_CLASSES",
    "CIFAR_BATCHES",
    "DIGIT_CLASSES",
    "FASHION_CLASSES",
    "IMAGE_SUFFIXES",
    "PARAMETERISED",
    "SPLITS",
    "ImageData",
    "atari_game",
    "batches",
    "check_dataset_field",
    "check_name",
    "cifar10",
    "collect_atari",
    "data_root",
    "datasets",
    "digits",
    "fashion_mnist",
    "global_batches",
    "load",
    "mnist",
    "random_shift",
    "read_idx",
    "register_dataset",
    "val_count",
]

PARAMETERISED = ("atari:GAME[:rgb]", "folder:PATH")


Loader = Callable[[str, Path, "Path | None"], ImageData]
_DATASETS: dict[str, Loader] = {}


def register_dataset(name: str):
    """Decorator: ``fn(split) -> ImageData`` becomes loadable as ``load(name, split)``.

    A loader that also takes the keyword arguments ``data_dir`` (a Path) and ``cache_dir`` (a Path or
    None) gets them from ``load``. Names cannot hold ':', which is kept for parameterised names.
    """

    def deco(fn: Callable[..., ImageData]) -> Callable[..., ImageData]:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        if ":" in name:
            raise ValueError(f"dataset name {name!r} holds ':', which is kept for parameterised names")
        wanted = {"data_dir", "cache_dir"} & set(inspect.signature(fn).parameters)
        _DATASETS[name] = lambda split, data_dir, cache_dir: fn(
            split, **{k: v for k, v in (("data_dir", data_dir), ("cache_dir", cache_dir)) if k in wanted}
        )
        return fn

    return deco


def datasets() -> list[str]:
    """The data set names, parameterised ones in their pattern form (``atari:GAME[:rgb]``, ``folder:PATH``)."""
    return sorted(_DATASETS) + list(PARAMETERISED)


def check_name(name: str) -> None:
    """Raise ``ConfigError`` (with the closest names) unless ``name`` names a data set.

    For ``atari:GAME[:rgb]`` the game must be one ale-py ships; for ``folder:PATH`` only the form is
    checked here, the folder when it is loaded.
    """
    _resolve(name)


def check_dataset_field(cfg: Any) -> None:
    """``check_name`` of a config's ``dataset`` field, the error naming the field (``KNNConfig.dataset = ...``)."""
    try:
        _resolve(cfg.dataset)
    except ConfigError as e:
        raise ConfigError(f"{type(cfg).__name__}.dataset = {cfg.dataset!r} is not allowed: {e}") from None


def load(
    name: str, split: str, *, data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> ImageData:
    """The ``split`` (train, val or test) of dataset ``name``.

    Args:
        name: a name from ``datasets()``, e.g. ``mnist``, ``atari:pong:rgb`` or ``folder:~/pictures``.
        split: train, val or test.
        data_dir: where downloaded data sets live (MNIST, CIFAR-10...); default $FOVEA_DATA, else ./data.
        cache_dir: where generated data (Atari frames) is cached; None: not cached.
    """
    loader = _resolve(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return loader(split, data_root(data_dir), Path(cache_dir).expanduser() if cache_dir else None)


def _resolve(name: str) -> Loader:
    if name in _DATASETS:
        return _DATASETS[name]
    family, _, arg = name.partition(":")
    if family == "atari":
        parts = arg.split(":")
        if not parts[0] or len(parts) > 2 or (len(parts) == 2 and parts[1] != "rgb"):
            raise ConfigError(f"dataset {name!r} is not of the form atari:GAME or atari:GAME:rgb (e.g. atari:pong)")
        game, rgb = atari_game(parts[0]), len(parts) == 2
        return lambda split, data_dir, cache_dir: atari_frames(game, rgb, split, cache_dir)
    if family == "folder":
        if not arg:
            raise ConfigError(
                f"dataset {name!r} needs a path: folder:PATH, with images in PATH/CLASS/ ({', '.join(IMAGE_SUFFIXES)})"
            )
        return lambda split, data_dir, cache_dir: image_folder(Path(arg).expanduser(), split)
    raise ConfigError(f"unknown dataset {name!r}; {suggest(name, datasets())}")


@register_dataset("digits")
def digits(split: str) -> ImageData:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) uint8 in 0..16; 1000 / 350 / 447 in file order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    lo, hi = {"train": (0, 1000), "val": (1000, 1350), "test": (1350, 1797)}[split]
    images = torch.from_numpy(d.images[lo:hi].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target[lo:hi].astype(np.int64))
    return ImageData(images, labels, 16, DIGIT_CLASSES)


for _name, _reader in (("mnist", mnist), ("fashion-mnist", fashion_mnist), ("cifar10", cifar10)):
    register_dataset(_name)(_reader)
