"""The epoch loop that classifiers, detectors and generative models share, and keep-best with typed state.

A family supplies what differs: its updates (a loss on a batch, an optimizer, a precision; a GAN gives one
per player), its batches, its validation figures and the score that picks the kept weights, and its media.
``fit`` runs the rest in one order for all of them: the epoch's batches through ``Update.step`` (autocast, the
loss weighted for torchrun, the non-finite check, backward, clipping, the optimizer and a per-step schedule),
the epoch's means of every logged value over all processes, validation, keeping the best weights, logging,
pictures, checkpoints and early stopping (``Run.loop`` checkpoints and stops).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fovea import distributed
from fovea.precision import Precision

# the run.state keys of checkpoints written before keep-best had one typed record: the score's keys with their
# signs (higher is better), then the key of the epoch or step
LEGACY_KEYS = {
    "val/acc": ((("best_val_acc", 1.0), ("best_val_loss", -1.0)), "best_epoch"),
    "val/map": ((("best_val_map", 1.0),), "best_epoch"),
    "val/loss": ((("best_loss", -1.0),), "best_epoch"),
    "eval/mean_return": ((("best_return", 1.0),), "best_step"),
}
SkipCheck = Callable[[torch.Tensor, Iterable[nn.Parameter]], bool]  # Run.skip_step: leave a non-finite update out


@dataclass
class Best:
    """What picked the kept weights: ``score`` (compared as a tuple, higher is better: e.g. (accuracy, -loss)),
    ``at`` (the epoch, or the agent step, it was reached at) and ``figure`` (the reported value of the
    selection figure, e.g. val/acc). ``score`` is None before any validation."""

    figure_name: str
    score: tuple[float, ...] | None = None
    at: int = 0
    figure: float | None = None


class KeepBest:
    """Keeps a copy of ``model`` in ``best`` whenever a validation score beats every earlier one.

    Its record (a ``Best``) lives in ``run.state["best"]``, so it is saved with every checkpoint and restored
    with the run; ``best`` itself is one of the run's tracked modules.
    """

    def __init__(self, run, model: nn.Module, best: nn.Module, figure_name: str):
        self.run, self.model, self.best, self.figure_name = run, model, best, figure_name

    @property
    def record(self) -> Best:
        """The current record (read from the run's state, which a restore may have replaced)."""
        state = self.run.state
        if "best" not in state:  # a checkpoint from before this record: its loose keys, if it has them
            keys, at = LEGACY_KEYS.get(self.figure_name, ((), ""))
            if keys and keys[0][0] in state:
                score = tuple(sign * state[k] for k, sign in keys if k in state)
                figure = float(state[keys[0][0]])
                state["best"] = asdict(Best(self.figure_name, score, int(state.get(at, 0)), figure))
            else:
                state["best"] = asdict(Best(self.figure_name))
        rec = dict(state["best"])
        rec["score"] = tuple(rec["score"]) if rec["score"] is not None else None
        return Best(**rec)

    def offer(self, score: Sequence[float], at: int, figure: float) -> bool:
        """Copy the model into ``best`` when ``score`` beats the record (ties keep the earlier weights); returns
        whether it did."""
        score = tuple(float(s) for s in score)
        rec = self.record
        if rec.score is not None and not score > rec.score:
            return False
        self.best.load_state_dict(self.model.state_dict())
        self.run.state["best"] = asdict(Best(self.figure_name, score, int(at), float(figure)))
        return True

    def take(self, at: int, figure: float | None = None) -> None:
        """Keep the current weights whatever their score (a sanity check keeps its last; a model with no
        validation score to choose by keeps its final weights)."""
        self.best.load_state_dict(self.model.state_dict())
        rec = self.record
        figure = rec.figure if figure is None else float(figure)
        self.run.state["best"] = asdict(Best(self.figure_name, rec.score, int(at), figure))


@dataclass
class Update:
    """One optimizer's update on a batch: ``loss(batch)`` returns a dict whose ``"loss"`` is backpropagated (the
    rest is logged), ``params`` are clipped to ``grad_clip`` (0: no clipping) and ``scheduler`` (optional)
    steps after every batch, the skipped ones included, so the schedule keeps to its steps."""

    loss: Callable[[Any], dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    precision: Precision
    params: Callable[[], Iterable[nn.Parameter]]
    grad_clip: float = 0.0
    scheduler: Any = None

    def step(self, batch: Any, n: int, total: int, skip: SkipCheck | None = None) -> dict[str, torch.Tensor] | None:
        """Autocast, the loss (weighted so that DDP's gradient is that of the mean over the ``total`` samples of
        the global batch; this process holds ``n``), backward, clipping, the optimizer step. Returns the loss
        outputs, or None when ``skip`` (``Run.skip_step``, asked after the backward pass) left the update out."""
        with self.precision.autocast():
            out = self.loss(batch)
        loss = distributed.scale_loss(out["loss"].float(), n, total)
        check = (lambda: skip(loss, self.params())) if skip is not None else None
        params = self.params() if self.grad_clip else ()
        stepped = self.precision.backward(loss, self.optimizer, params, self.grad_clip, skip=check)
        if self.scheduler is not None:
            self.scheduler.step()
        return out if stepped else None


class EpochMeans:
    """Per-sample means of logged values over an epoch: summed on the device (no sync per batch), each key over
    the samples of the updates that logged it, and over all processes at the end."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, out: dict[str, torch.Tensor], n: int, skip: Iterable[str] = ()) -> None:
        for k, v in out.items():
            if k not in skip:
                self.sums[k] = self.sums.get(k, 0.0) + v.detach().float() * n
                self.counts[k] = self.counts.get(k, 0) + n

    def means(self) -> dict[str, torch.Tensor]:
        """{key: mean over the epoch's samples}, as 0-d tensors (the figures of the whole global batch)."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        sums = torch.stack([torch.as_tensor(self.sums[k]) for k in keys])
        counts = sums.new_tensor([float(self.counts[k]) for k in keys])
        if distributed.active():
            tot = distributed.total(torch.cat([sums, counts]))
            sums, counts = tot[: len(keys)], tot[len(keys) :]
        return dict(zip(keys, sums / counts.clamp(min=1.0), strict=True))


def train_epoch(batches: Iterable[tuple[Any, int, int]], updates: Callable[[int], Sequence[Update]],
                iteration: int = 0, *, several: bool = False, skip: SkipCheck | None = None,
                first_step: Callable[[], Callable[[], dict]] | None = None) -> tuple[dict[str, Any], int, int]:
    """One pass over ``batches``: (batch, samples here, samples in the global batch) triples.

    Each batch goes through the updates ``updates(iteration)`` names (one for most models; a GAN's players
    in turn). A model with one update logs its outputs as they are; with ``several`` (a GAN's players), their
    ``"loss"`` keys (which would collide) are left out. ``skip`` (``Run.skip_step``) may leave an update out.
    ``first_step``, called before the epoch's first update, returns a function to call after it whose figures
    are logged too (the classifier's update ratios).

    Returns the epoch means of the logged outputs, the iteration count after the epoch and the number of
    samples learned from on this process.
    """
    means, extra, seen, after = EpochMeans(), {}, 0, None
    for batch, n, total in batches:
        iteration += 1
        todo = updates(iteration)
        if first_step is not None and seen == 0:
            after = first_step()
        stepped = False
        for u in todo:
            out = u.step(batch, n, total, skip)
            if out is not None:
                means.add(out, n, skip=("loss",) if several else ())
                stepped = True
        if stepped:
            seen += n
            if after is not None and not extra:
                extra = after()
    return {**means.means(), **extra}, iteration, seen


def fit(run, *, epochs: int, train: Callable[[int], tuple[dict[str, Any], int]],
        validate: Callable[[int], dict[str, float]], keep: KeepBest | None = None,
        score: Callable[[dict[str, float]], Sequence[float] | None] | None = None, every: int = 1,
        media: Callable[[int, dict], None] | None = None, lr: Callable[[], float] | None = None,
        stop: Callable[[int], str | None] | None = None, show: str | None = None,
        throughput: str = "perf/images_per_s") -> None:  # fmt: skip
    """The epoch loop.

    Each epoch: ``train(epoch)`` (the epoch's means and its sample count, e.g. from ``train_epoch``), logged
    as ``train/*`` (keys with a ``/`` as they are) with ``throughput`` (samples per second) and ``train/lr``.
    A non-finite training loss ends the run here (the RunError names it) before broken weights are validated
    or saved. Every ``every`` epochs and at the last: ``validate(epoch)``, logged as ``val/*``; ``keep`` keeps
    the best weights by ``score(val)`` (a score of None keeps the weights whatever they score) and
    ``val/best_*`` is logged; then ``media(epoch, val)`` on the main process. Last, ``stop(epoch)`` may return
    why to stop early: it is said, and the loop checkpoints and ends.
    """
    for epoch in run.loop(epochs, unit="epoch", show=show):
        start = time.perf_counter()
        means, seen = train(epoch)
        logged = {k if "/" in k else f"train/{k}": v for k, v in means.items()}
        logged[throughput] = seen * distributed.world_size() / max(time.perf_counter() - start, 1e-9)
        if lr is not None:
            logged["train/lr"] = lr()
        loss = means.get("loss")
        if loss is not None and not torch.isfinite(torch.as_tensor(loss)):
            run.log(logged)  # raises the RunError that names the loss and the step
        if epoch % every == 0 or epoch == epochs:
            val = validate(epoch)
            logged.update({f"val/{k}": v for k, v in val.items() if isinstance(v, int | float)})
            if keep is not None and score is not None:
                figure, s = val[keep.figure_name.removeprefix("val/")], score(val)
                keep.offer(s, epoch, figure) if s is not None else keep.take(epoch, figure)
                logged[keep.figure_name.replace("val/", "val/best_")] = keep.record.figure
            if media is not None and run.main:
                media(epoch, val)
        run.log(logged)
        why = stop(epoch) if stop is not None else None
        if why:
            run.stop_loop()
            run.say(why)
            break
