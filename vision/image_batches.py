"""Minibatches of an ``ImageData`` held on its device: ``batches`` in order or shuffled, ``global_batches`` split over
the torchrun processes, and ``random_shift``, the translation augmentation of classifiers."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fovea.vision.image_data import ImageData


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


def global_batches(
    data: ImageData, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Training minibatches as ``batches`` shuffles them, each split over the torchrun processes: yields this
    process's (images, labels) and the global batch's size (for ``fovea.distributed.scale_loss``). On one
    process it is ``batches`` with the size added. Under torchrun a last batch too small to give every process
    two images is left out of the epoch (on every process alike)."""
    from fovea import distributed

    for idx, total in distributed.global_batches(len(data), batch_size, generator, data.images.device):
        yield data.images[idx], data.labels[idx], total


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
