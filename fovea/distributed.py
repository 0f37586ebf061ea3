"""Data-parallel training under torchrun (the notes, chapter 15: data parallelism), on PyTorch's own engine.

    torchrun --nproc_per_node 4 -m fovea train cnn-digits               # 4 GPUs (or 4 CPU processes)
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m fovea train vae-digits       # 2 machines x 8 GPUs

torchrun starts one process per device and sets RANK, LOCAL_RANK and WORLD_SIZE; ``setup`` joins the
process group (NCCL on CUDA, gloo on the CPU) and picks the process's device. Every process builds the
same model from the same seed and reads the same in-memory data; each step, ``shard`` gives each process
its part of the global batch (``batch_size`` stays the global batch: the same hyperparameters as one
process), ``DistributedDataParallel`` averages the gradients, and the optimizers step in lockstep, so the
weights stay identical. ``scale_loss`` weights each process's mean loss by its share of the batch, which
makes the averaged gradient exactly the gradient of the global batch's mean loss, as on one process.
Rank 0 alone writes: config, metrics, W&B, pictures and checkpoints (see ``fovea.run.Run``); a resume
reads the same checkpoint on every rank.

The partition is DistributedSampler's (rank r takes every world-th index of the shuffled order), applied
per global batch of the in-memory data rather than through a DataLoader: the data sets here fit on the
device, where indexing a resident tensor is the fast path.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fovea.errors import UsageError


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process in the job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group is up (``setup`` ran in a multi-process job)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes the run folder and talks to W&B."""
    return rank() == 0


def setup(device: str = "auto") -> str:
    """Join torchrun's process group and return the device this process trains on (``cuda:LOCAL_RANK`` on
    CUDA, else the CPU). A no-op returning ``device`` outside torchrun."""
    if not launched() or active():
        return device if not active() else _device_of_rank(device)
    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed; run without torchrun")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu under torchrun")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s): "
                             f"start torchrun with --nproc_per_node {torch.cuda.device_count()} or fewer")  # fmt: skip
        torch.cuda.set_device(local)
    timeout = datetime.timedelta(seconds=int(os.environ.get("FOVEA_DIST_TIMEOUT", "1800")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return _device_of_rank(device)


def _device_of_rank(device: str) -> str:
    if dist.get_backend() == "nccl":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run name, chosen once)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a stop signal seen by one process stops all at the same
    step, so no rank is left waiting in a collective)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def total(values: torch.Tensor) -> torch.Tensor:
    """The sum of ``values`` over ranks, in fp32 (figures of the whole global batch, not this rank's part)."""
    if not active():
        return values
    t = values.detach().to(_collective_device(), torch.float32).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(values.device)


def mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks."""
    return total(values) / world_size() if active() else values


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def global_batches(n: int, batch_size: int, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, int]]:  # fmt: skip
    """One epoch of shuffled minibatches over ``n`` samples, each split over the ranks: this rank's indices (on
    ``device``, moved there once per epoch) and the global batch's size (for ``scale_loss``). ``generator`` is
    the same on every rank, so they all see one shuffle. On one process these are the plain shuffled batches;
    under torchrun a last batch too small to give every rank two samples is left out (on every rank alike)."""
    order = torch.randperm(n, generator=generator).to(device)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        if world_size() > 1:
            if len(idx) < 2 * world_size():
                continue
            yield shard(idx), min(batch_size, n - i)
        else:
            yield idx, len(idx)


def rank_generator(shared: torch.Generator, seed: int) -> torch.Generator:
    """The generator for per-sample noise (augmentation): ``shared`` itself on one process, as before torchrun
    existed; under torchrun one of this rank's own, so the ranks' parts of a batch are not augmented alike."""
    return shared if not active() else torch.Generator().manual_seed(seed + 1 + rank())


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch's indices: every world-th one from position ``rank``, as
    DistributedSampler partitions (no padding: ``scale_loss`` weights the parts by their sizes)."""
    return idx[rank() :: world_size()] if active() else idx


def scale_loss(loss: torch.Tensor, local: int, global_: int) -> torch.Tensor:
    """Weight this rank's mean loss over ``local`` samples so that DDP's gradient average over ranks equals the
    gradient of the mean over all ``global_`` samples (identity on one process)."""
    if not active():
        return loss
    return loss * (local * world_size() / global_)


def check_batch(batch_size: int) -> None:
    """The global batch must give every rank at least one sample."""
    if active() and batch_size < world_size():
        raise UsageError(f"--batch-size {batch_size} is smaller than the {world_size()} processes; the batch size "
                         f"is global (split over the processes): use at least {world_size()}")  # fmt: skip


class _Method(nn.Module):
    """Routes ``forward`` to ``module.<method>`` so DistributedDataParallel sees the call (DDP prepares its
    gradient reduction in ``forward``; a model's ``loss`` method would bypass it)."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)


def wrap(module: nn.Module, method: str = "forward", *, find_unused: bool = False):
    """``module.<method>`` as a callable whose gradients are averaged over ranks: DistributedDataParallel
    around it under torchrun, the plain bound method otherwise. ``find_unused`` for models whose steps use
    only part of their parameters (a GAN's discriminator step leaves the generator out)."""
    if not active():
        return getattr(module, method)
    target = module if method == "forward" else _Method(module, method)
    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    wrapped = nn.parallel.DistributedDataParallel(target, device_ids=ids, find_unused_parameters=find_unused)
    reseed()
    return wrapped


def reseed() -> None:
    """Give each rank its own global RNG streams (dropout masks, a VAE's noise, a GAN's z): every rank was seeded
    alike so that the models start equal; from here their parts of the batch must not share noise."""
    if rank() > 0:
        from fovea.run import seed_everything

        seed_everything(torch.initial_seed() + 7919 * rank())


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Batch norm statistics over the global batch on CUDA (SyncBatchNorm is CUDA-only; on the CPU each
    process normalises by its own part, as DDP does by default)."""
    if active() and dist.get_backend() == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module
