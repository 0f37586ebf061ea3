"""Synthetic detection data: scikit-learn's 8x8 digits scaled and pasted on noisy canvases, with exact boxes.

``digits_canvases``: 64x64 canvases holding 1 to 5 digits, each scaled to a random side of 12..32 px and pasted
at a random place over a noisy background, for detectors (``digits-detect``); ``digits_locate``: the same with
exactly one digit per canvas, for classification + localisation (``digits-locate``).

Every digit of a split's canvases comes from that split of ``vision.data.digits`` (train 1000 / val 350 / test
447 in file order), so no digit leaks across splits. Generation is deterministic: the same arguments give
bit-identical data. Defaults: 4000 train, 500 val and 500 test canvases.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fovea.errors import ConfigError
from fovea.vision.data import digits
from fovea.vision.detection_set import DetectionData
from fovea.vision.image_data import DIGIT_CLASSES, SPLITS

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
