"""The batches a detector trains and is measured on: ``batches`` in order or shuffled, and ``training_batches``,
one epoch's augmented batches split over the torchrun processes and read by DataLoader workers.

The plan of an epoch (the shuffle and one augmentation seed per batch) is drawn in the training process before any
batch is read, so the batches are the same for any number of workers and on whichever process reads them.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import torch

from fovea import distributed
from fovea.vision import detection_data as ddata


def batches(data: ddata.DetectionData, batch_size: int,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, list, list]]:  # fmt: skip
    """Minibatches of (images, boxes, labels), shuffled with ``generator`` when given, in order otherwise."""
    n = len(data)
    order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield data.batch(idx)


class EpochBatches(torch.utils.data.Dataset):
    """One epoch's training batches as a map-style data set, item i = batch i: this process's (images, boxes,
    labels) of ``plan[i] = (indices, global batch size, augmentation seed or None)``, augmented, and the global
    batch's size. The plan is drawn before any batch is read, so a batch is the same whichever process reads it."""

    def __init__(self, data: ddata.DetectionData, plan: list[tuple[list[int], int, int | None]], augment: str) -> None:
        self.data, self.plan, self.spec = data, plan, augment
        self.augment: ddata.Augmenter | None = None  # made where the batches are read (a closure does not pickle)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], int]:
        idx, total, seed = self.plan[i]
        images, boxes, labels = self.data.batch(idx)
        if seed is not None:
            self.augment = self.augment or ddata.augmenter(self.spec)
            images, boxes, labels = self.augment(images, boxes, labels, seed)
        return images, boxes, labels, total


def training_batches(
    data: ddata.DetectionData,
    batch_size: int,
    shuffle: torch.Generator,
    noise: torch.Generator,
    augment: str = "",
    workers: int = 0,
    pin: bool = False,
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], int]]:
    """One epoch of training batches, each split over the torchrun processes (see ``vision.data.global_batches``):
    this process's augmented (images, boxes, labels) and the global batch's size.

    Reading and augmenting (per image, in Python: the costly part on a GPU) happen in ``workers`` DataLoader
    processes (0: in this one), ``pin``: into pinned memory, so that the copy to the GPU need not block. The
    shuffle (from ``shuffle``) and one augmentation seed per batch (from ``noise``, as ``augment`` would draw it)
    are drawn here first, in this process, so the batches, and the generators' states after them, are the same for
    any ``workers``. A batch of one image (batch norm cannot train on it) is left out of a set of more.
    """
    draws = bool(ddata.parse_augment(augment))
    plan = []
    for idx, total in distributed.global_batches(len(data), batch_size, shuffle):
        if len(idx) == 1 < len(data):
            continue
        plan.append((idx.tolist(), total, ddata.draw_seed(noise) if draws else None))
    # forked workers hold the run's signal handlers from their first instant (a spawned one imports torch first)
    context = "fork" if workers and sys.platform == "linux" else None
    yield from torch.utils.data.DataLoader(
        EpochBatches(data, plan, augment), batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
        worker_init_fn=_worker_ignores_stop_signals if workers else None, multiprocessing_context=context,
    )  # fmt: skip


def _worker_ignores_stop_signals(_: int) -> None:
    """Ctrl-C and SIGTERM sent to the process group stop the training process at the end of the epoch (its
    checkpoint needs the batches still to come): the loader's workers must not die of them first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
