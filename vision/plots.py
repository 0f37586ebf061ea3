"""Pictures of classification results, drawn with Pillow (no plotting library needed): a confusion
matrix with counts and class names, and grids of small images (torchvision's ``make_grid``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid


def load_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has one fixed size
        return ImageFont.load_default()


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], cell: int = 36) -> Image.Image:
    """The confusion matrix (rows: true class, columns: predicted) as an RGB picture: each cell shaded by
    its share of the row (white 0 to dark blue 1) and labelled with its count; class names on both axes."""
    m = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if m.shape != (k, k):
        raise ValueError(f"confusion must be {k}x{k} for {k} classes; got {m.shape}")
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    font, small = load_font(12), load_font(10)
    names = [str(c)[:12] for c in classes]
    margin = 14 + 7 * max(len(n) for n in names)
    img = Image.new("RGB", (max(margin + k * cell + 8, 200), margin + k * cell + 22), "white")
    d = ImageDraw.Draw(img)
    for i in range(k):
        for j in range(k):
            s = float(share[i, j])
            color = tuple(int(255 - s * (255 - c)) for c in (8, 48, 107))  # white -> dark blue
            x, y = margin + j * cell, margin + i * cell
            d.rectangle((x, y, x + cell - 1, y + cell - 1), fill=color, outline=(220, 220, 220))
            if m[i, j]:
                d.text((x + cell // 2, y + cell // 2), str(m[i, j]), fill="white" if s > 0.5 else "black", font=small,
                       anchor="mm")  # fmt: skip
        d.text((margin - 4, margin + i * cell + cell // 2), names[i], fill="black", font=font, anchor="rm")
        d.text((margin + i * cell + cell // 2, margin - 4), names[i][:5], fill="black", font=small, anchor="ms")
    d.text((4, margin + k * cell + 6), "rows: true class, columns: predicted", fill="black", font=small)
    return img


def image_grid(images: np.ndarray, columns: int, scale: int = 1, pad: int = 1) -> np.ndarray:
    """(N, H, W, 3) uint8 images as one (rows * H' + pad, columns * W' + pad, 3) picture by torchvision's
    ``make_grid``: tiles upscaled by ``scale``, framed and separated by ``pad`` white pixels (H' = H * scale +
    pad, W' likewise), ``columns`` tiles a row, the last row's empty places white."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    tiles = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    tiles = tiles.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    # White tiles fill the last row (make_grid would narrow a grid of fewer than ``columns`` tiles), and a second
    # row when there is a single tile (make_grid would return it unframed); that row is cropped off below.
    spare = rows * columns - n + (columns if rows * columns == 1 else 0)
    tiles = torch.cat([tiles, tiles.new_full((spare, c, h * scale, w * scale), 255)])
    grid = make_grid(tiles, nrow=columns, padding=pad, pad_value=255)  # (3, rows' * H' + pad, columns * W' + pad)
    return grid[:, : rows * (h * scale + pad) + pad].permute(1, 2, 0).contiguous().numpy()


def to_rgb(images, max_value: float) -> np.ndarray:
    """(N, C, H, W) pixels in 0..max_value (tensor or array; C = 1 or 3) as (N, H, W, 3) uint8."""
    a = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
    a = np.clip(a / max_value * 255, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    return a.repeat(3, axis=3) if a.shape[3] == 1 else a[..., :3]
