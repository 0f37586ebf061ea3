"""Image features for linear classifiers (section 3.7 of the notes): raw pixels, HOG and colour histograms.

"Feeding raw pixel values doesn't work well": compute feature representations of the image, concatenate
them and feed them to the classifier. A colour histogram says which colours are present, HOG (histogram of
oriented gradients) which edges; the handwritten notes (lecture 3) describe HOG as 8x8-pixel cells with
edge directions quantised into 9 bins. CS231n's features notebook feeds a hue histogram plus HOG of the grey
image to a linear SVM.

Extractors are registered by name; a feature spec joins names with ``+`` (``hog+color``) and the vectors are
concatenated in that order. ``extract(spec, images, max_value) -> (N, D)`` float32. Each extractor also says
whether a classifier should divide its numbers by their standard deviation (``standardised``): HOG and
colour histograms yes (as CS231n's features notebook does), pixels no: the notes (6.2) only subtract the mean
image, and dividing by each pixel's std blows up the border pixels that are almost always 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fovea.config import suggest
from fovea.errors import ConfigError

COLOR_BINS = 10
"""Bins of the colour histogram (CS231n's ``color_histogram_hsv`` default)."""
HOG_ORIENTATIONS = 9
"""Orientation bins of HOG (Dalal and Triggs 2005: 9 unsigned bins over 0-180 degrees)."""

Extractor = Callable[[torch.Tensor], torch.Tensor]
_EXTRACTORS: dict[str, Extractor] = {}
_STANDARDISED: dict[str, bool] = {}


def register_feature(name: str, standardise: bool = True):
    """Decorator: ``fn(x) -> (N, D)`` float32, with ``x`` (N, C, H, W) float pixels scaled to 0..1, becomes
    the feature ``name``; ``standardise``: divide it by its std on the training set (else only centre it).
    Names cannot hold '+', which joins features."""

    def deco(fn: Extractor) -> Extractor:
        if name in _EXTRACTORS:
            raise ValueError(f"feature {name!r} is already registered")
        if "+" in name:
            raise ValueError(f"feature name {name!r} holds '+', which joins features")
        _EXTRACTORS[name], _STANDARDISED[name] = fn, standardise
        return fn

    return deco


def names() -> list[str]:
    """The registered feature names."""
    return sorted(_EXTRACTORS)


def parse(spec: str) -> tuple[str, ...]:
    """The feature names of ``spec`` (``hog+color`` -> ("hog", "color")); ``ConfigError`` for an unknown one."""
    parts = tuple(p.strip() for p in spec.split("+"))
    for p in parts:
        if p not in _EXTRACTORS:
            where = f" in {spec!r}" if len(parts) > 1 else ""
            raise ConfigError(f"unknown feature {p!r}{where}; {suggest(p, names())} (join several with '+')")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"feature spec {spec!r} names a feature twice")
    return parts


def extract(spec: str, images: torch.Tensor, max_value: float, batch_size: int = 4096) -> torch.Tensor:
    """Feature vectors of ``images``: (N, D) float32 on the images' device.

    Args:
        spec: feature names joined by '+', e.g. ``pixels`` or ``hog+color``.
        images: (N, C, H, W) uint8, or float in 0..max_value (``pixels`` then passes gradients back to them).
        max_value: the largest pixel value (16 for digits, 255 for 8-bit images).
        batch_size: images per chunk, to bound the memory of intermediate arrays.
    """
    parts = parse(spec)
    if images.ndim != 4:
        raise ConfigError(f"features of images need shape (N, C, H, W); got {tuple(images.shape)}")
    chunks = []
    for i in range(0, max(len(images), 1), batch_size):
        x = images[i : i + batch_size].float() / float(max_value)  # (B, C, H, W) in 0..1
        chunks.append(torch.cat([_EXTRACTORS[p](x).to(images.device, torch.float32) for p in parts], 1))
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def dim(spec: str, shape: tuple[int, int, int]) -> int:
    """The length D of ``spec``'s feature vector for images of ``shape`` (C, H, W)."""
    return extract(spec, torch.zeros(1, *shape, dtype=torch.uint8), 255).shape[1]


def standardised(spec: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """(D,) bool: which numbers of ``spec``'s vector are divided by their std (see the module docstring)."""
    return torch.cat([torch.full((dim(p, shape),), _STANDARDISED[p]) for p in parse(spec)])


def grey(x: np.ndarray) -> np.ndarray:
    """(N, H, W) grey images from (N, C, H, W) floats in 0..1: skimage's luminance for RGB, the channel mean
    otherwise."""
    if x.shape[1] == 3:
        from skimage.color import rgb2gray

        return rgb2gray(x.transpose(0, 2, 3, 1))  # channel-last for skimage; it maps each image
    return x.mean(1)


# ----------------------------------------------------------------------------- the extractors


@register_feature("pixels", standardise=False)
def pixels(x: torch.Tensor) -> torch.Tensor:
    """The pixels themselves, flattened in (C, H, W) order: (N, C*H*W), differentiable."""
    return x.flatten(1)


def hog_params(shape: tuple[int, ...]) -> dict:
    """skimage ``hog`` settings for images of ``shape`` (..., H, W): a 4x4 grid of square cells (8-pixel
    cells on 32x32 CIFAR-10, as in the notes; 2-pixel cells on the 8x8 digits), 9 orientations, 2x2-cell
    blocks with L2-Hys normalisation (Dalal and Triggs), so every data set gets 3*3*2*2*9 = 324 numbers."""
    cell = max(2, min(shape[-2:]) // 4)
    return {"orientations": HOG_ORIENTATIONS, "pixels_per_cell": (cell, cell), "cells_per_block": (2, 2),
            "block_norm": "L2-Hys", "feature_vector": True}  # fmt: skip


@register_feature("hog")
def hog(x: torch.Tensor) -> torch.Tensor:
    """Histograms of oriented gradients of the grey image (skimage's ``hog``, one image at a time)."""
    from skimage.feature import hog as skimage_hog

    g = grey(x.detach().cpu().double().numpy())
    params = hog_params(g.shape)
    return torch.from_numpy(np.stack([skimage_hog(im, **params) for im in g]).astype(np.float32))


@register_feature("color")
def color(x: torch.Tensor) -> torch.Tensor:
    """A normalised histogram (sums to 1) of hue for RGB images (CS231n's ``color_histogram_hsv``), of
    intensity for grey ones: ``COLOR_BINS`` equal bins over 0..1, the last one closed (as ``np.histogram``)."""
    a = x.detach().cpu().double().numpy()
    if a.shape[1] == 3:
        from skimage.color import rgb2hsv

        values = rgb2hsv(a.transpose(0, 2, 3, 1))[..., 0]  # (N, H, W) hue in 0..1
    else:
        values = a.mean(1)  # (N, H, W) intensity
    n = len(values)
    bins = np.clip((values.reshape(n, -1) * COLOR_BINS).astype(np.int64), 0, COLOR_BINS - 1)  # (N, H*W)
    counts = np.bincount((bins + COLOR_BINS * np.arange(n)[:, None]).ravel(), minlength=n * COLOR_BINS)
    return torch.from_numpy((counts.reshape(n, COLOR_BINS) / bins.shape[1]).astype(np.float32))
