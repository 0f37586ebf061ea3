"""``folder:PATH``: a folder of images, one subfolder per class (PATH/CLASS/*.png, .jpg, .jpeg, .bmp, .gif), with
train/, val/ and test/ subfolders of that form when PATH has them; otherwise each class's files, sorted by name, go
by position: 0, 10, 20, ... to val, 1, 11, 21, ... to test, the rest to train (80 / 10 / 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fovea.errors import ConfigError
from fovea.vision.image_data import SPLITS, ImageData

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """{class: its image files sorted by name} for the class subfolders of ``folder``."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {
        d.name: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) for d in classes
    }


def _open_image(path: Path):
    from PIL import Image

    try:
        return Image.open(path)
    except (OSError, ValueError, SyntaxError) as e:
        raise ConfigError(f"cannot read image {path}: {e}; remove it or replace it with a valid image") from None


def _is_grey(image) -> bool:
    if image.mode in _GREY_MODES:
        return True
    if image.mode == "P":
        palette = np.asarray(image.getpalette() or [0, 0, 1], np.uint8).reshape(-1, 3)
        return bool((palette == palette[:, :1]).all())
    return False


def image_folder(root: Path, split: str) -> ImageData:
    """``split`` of an image folder: PATH/CLASS/* or PATH/{train,val,test}/CLASS/* (see the module docstring)."""
    if not root.is_dir():
        raise ConfigError(
            f"dataset folder {root} does not exist (or is not a folder); expected images in "
            f"{root}/CLASS/ or {root}/train/CLASS/"
        )
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs:
        if split not in split_dirs:
            raise ConfigError(
                f"dataset folder {root} has {', '.join(f'{s}/' for s in split_dirs)} but no {split}/ "
                f"subfolder; add {root / split}/CLASS/ with images"
            )
        per_split = {s: _class_files(d) for s, d in split_dirs.items()}
    else:
        per_split = {s: {} for s in SPLITS}
        for cls, files in _class_files(root).items():
            for s, offset in (("val", 0), ("test", 1)):
                per_split[s][cls] = files[offset::10]
            per_split["train"][cls] = [f for i, f in enumerate(files) if i % 10 > 1]
    classes = sorted({c for by_class in per_split.values() for c in by_class})
    every = [f for by_class in per_split.values() for files in by_class.values() for f in files]
    if not every:
        raise ConfigError(
            f"dataset folder {root} holds no images: expected {root}/CLASS/*.png (or "
            f"{', '.join(IMAGE_SUFFIXES[1:])}), one subfolder per class"
        )
    sizes: dict[tuple[int, int], Path] = {}
    grey = True
    for f in every:
        with _open_image(f) as image:
            sizes.setdefault(image.size, f)
            grey = grey and _is_grey(image)
    if len(sizes) > 1:
        shown = "; ".join(f"{w}x{h}: {f}" for (w, h), f in sorted(sizes.items()))
        raise ConfigError(f"the images in {root} differ in size ({shown}); resize them all to one size")
    files = [(f, classes.index(c)) for c, fs in per_split[split].items() for f in fs]
    if not files:
        raise ConfigError(
            f"dataset folder {root} leaves the {split} split empty: "
            + (
                f"{root / split} holds no images"
                if split_dirs
                else "with no train/val/test subfolders, val takes the 1st, 11th, 21st... file of each class (by name) "
                "and test the 2nd, 12th, 22nd..., so every class needs at least 3 images"
            )
        )
    (w, h), channels = next(iter(sizes)), 1 if grey else 3
    images = np.empty((len(files), channels, h, w), np.uint8)
    for i, (f, _) in enumerate(files):
        with _open_image(f) as image:
            try:
                pixels = np.asarray(image.convert("L" if grey else "RGB"))
            except (OSError, ValueError, SyntaxError) as e:
                raise ConfigError(f"cannot read image {f}: {e}; remove it or replace it with a valid image") from None
        images[i] = pixels[None] if grey else pixels.transpose(2, 0, 1)
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    return ImageData(torch.from_numpy(images), labels, 255, tuple(classes))
