"""What every generative model shares: the model interface, the config fields, one training loop,
evaluation (likelihoods and sample quality) and sampling to an image grid.

The interface, on uint8 images (B, C, H, W) in 0..max_value:

- ``loss(batch, player) -> dict``: ``"loss"`` is backpropagated into ``player``'s parameters, the
  rest is logged. Most models have one player, ``"model"``; a GAN has two, ``"d"`` and ``"g"``,
  stepped in the order ``players_at(iteration)`` gives.
- ``sample(n, generator=, temperature=, labels=) -> uint8 images``.
- ``nll(images, labels) -> (B,)`` negative log-likelihood in nats per image, for the models whose
  ``nll_kind`` says how it is computed: ``"exact"`` (PixelCNN, PixelRNN) or ``"estimate"`` (the VAE's
  IWAE bound); ``None`` for an autoencoder or a GAN, which have no ``nll``.
- ``decode(z, labels)`` and ``latent_dim`` for models with a latent space (interpolation).

A family registers itself with ``register_model(ConfigCls, build)``; ``build(cfg, data) -> model``.
Training, evaluation and sampling are then the same functions for every family.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision.utils import make_grid

from fovea import distributed, fit
from fovea.config import Config, param, register_task
from fovea.fit import Update
from fovea.precision import Amp, Precision, channels_last, compiled
from fovea.run import Run
from fovea.vision import data as vdata

LN2 = math.log(2.0)
NLLKind = Literal["exact", "estimate", "bound"]  # the NLL itself, an estimate (VAE: IWAE), or a bound (diffusion)


class GenerativeModel(nn.Module):
    """Base class of the generative models: defaults for one player and no likelihood or latent space.

    Args:
        shape: (C, H, W) of the images.
        max_value: the largest pixel value (16 for digits, 255 for 8-bit images).
        num_classes: > 0 for a class-conditional model (``labels`` then matter).
    """

    nll_kind: NLLKind | None = None  # how nll() is computed; None: the model has no nll
    latent_dim: int | None = None  # models with decode(z)

    def __init__(self, shape: tuple[int, int, int], max_value: int, num_classes: int = 0):
        super().__init__()
        self.shape, self.max_value, self.num_classes = tuple(shape), int(max_value), int(num_classes)

    # --- training
    @property
    def players(self) -> tuple[str, ...]:
        return ("model",)

    def players_at(self, iteration: int) -> tuple[str, ...]:
        """The players stepped at this iteration, in order (a WGAN critic steps more often)."""
        return self.players

    def player_parameters(self, player: str) -> Iterator[nn.Parameter]:
        return self.parameters()

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # --- generation and scoring
    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0,
               labels: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """``n`` uint8 images (n, C, H, W) in 0..max_value drawn from the model, the noise from ``generator``
        (a seed gives the same images on every device); ``temperature`` below 1 draws closer to the mode,
        ``labels`` (n,) choose the classes of a class-conditional model."""
        raise NotImplementedError

    def nll(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(images) per image (B,), in nats: exact or an upper bound, as ``nll_kind`` says."""
        raise NotImplementedError(f"{type(self).__name__} has no likelihood")

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no latent space")

    def after_training(self, train: vdata.ImageData) -> None:
        """Called once when training ends (an autoencoder fits its code distribution here)."""

    # --- helpers for subclasses
    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> floats in [0, 1]."""
        return images.float() / self.max_value

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Floats in [0, 1] -> the nearest pixel level, uint8."""
        return (x.clamp(0, 1) * self.max_value).round().to(torch.uint8)

    def labels_for(self, labels: torch.Tensor | None, n: int,
                   generator: torch.Generator | None = None) -> torch.Tensor | None:  # fmt: skip
        """The labels a conditional model is given (drawn uniformly when none), None for an unconditional one."""
        if not self.num_classes:
            return None
        if labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator)
        return labels.to(self.device).long()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


@torch.no_grad()
def ema_step(average: nn.Module, live: nn.Module, updates: torch.Tensor, decay: float) -> None:
    """One step of an exponential moving average of ``live``'s weights into ``average`` (buffers are copied).
    ``updates`` (a counter on the device, incremented here: no host sync per step) warms the decay up as
    ``min(decay, (1 + n) / (10 + n))`` so the average forgets the random start."""
    updates += 1
    n = updates.float()
    weight = 1 - ((1 + n) / (10 + n)).clamp(max=decay)
    for avg, cur in zip(average.parameters(), live.parameters(), strict=True):
        avg.lerp_(cur, weight)
    for avg, cur in zip(average.buffers(), live.buffers(), strict=True):
        avg.copy_(cur)


def noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the CPU generator, then moved: the same samples on every device."""
    return torch.randn(shape, generator=generator).to(device)


def categorical(logits: torch.Tensor, generator: torch.Generator | None, temperature: float = 1.0) -> torch.Tensor:
    """One draw per row of ``logits`` (..., K) by inverse CDF, the uniforms drawn on the (CPU) generator so
    a seed gives the same samples on every device. ``temperature`` 0 takes the most likely value."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    u = torch.rand(probs.shape[:-1], generator=generator, dtype=torch.float64).to(probs.device)
    cdf = probs.double().cumsum(-1)
    return (cdf < (u * cdf[..., -1]).unsqueeze(-1)).sum(-1).clamp(max=probs.shape[-1] - 1)


# ----------------------------------------------------------------------------- config


@dataclass(kw_only=True)
class GenConfig(Config):
    """Fields every generative model has: the data, the optimisation, evaluation and checkpoints."""

    dataset: str = "digits"
    """digits (embedded), mnist, fashion-mnist, cifar10, atari:GAME[:rgb], or folder:PATH."""
    data_dir: str = ""
    """Where downloaded data sets live (default: $FOVEA_DATA, else ./data)."""
    epochs: int = param(100, ge=1)
    """Passes over the training split."""
    batch_size: int = param(64, ge=1)
    """Minibatch size."""
    lr: float = param(1e-3, gt=0)
    """Adam learning rate."""
    beta1: float = param(0.9, ge=0, lt=1)
    """Adam beta1 (0.5 for GANs, after DCGAN)."""
    weight_decay: float = param(0.0, ge=0)
    """Adam L2 penalty."""
    grad_clip: float = param(0.0, ge=0)
    """Clip the gradient norm (0: no clipping)."""
    eval_every: int = param(5, ge=1)
    """Epochs between validation passes and sample grids; the best validation loss is kept."""
    seed: int = 0
    """Seeds every RNG."""
    checkpoint_every: int = param(10, ge=1)
    """Epochs between checkpoints (one is also written at the end and on Ctrl-C / SIGTERM)."""
    amp: Amp = "auto"
    """Mixed precision: auto (bf16 on CUDA, fp32 elsewhere), off, bf16 or fp16 (with loss scaling)."""
    compile: bool = False
    """torch.compile the training step's loss (the first epoch pays the compilation)."""

    def validate(self) -> None:
        vdata.check_dataset_field(self)


def load_split(cfg: GenConfig, split: str, run: Run | None = None) -> vdata.ImageData:
    """One split of the config's data set; Atari frames are cached in the run folder."""
    cache = run.dir / "data" if run is not None else None
    return vdata.load(cfg.dataset, split, data_dir=cfg.data_dir or None, cache_dir=cache)


# ----------------------------------------------------------------------------- registry


Builder = Callable[[GenConfig, vdata.ImageData], GenerativeModel]
_BUILDERS: dict[type, Builder] = {}


def register_model(config_cls: type[GenConfig], build: Builder) -> None:
    """Tie a config class to its model builder; train, eval and sample become available for its recipes."""
    _BUILDERS[config_cls] = build
    from fovea.generative import evaluation  # (it imports this module: the commands on a trained model)

    register_task(config_cls, train, evaluation.evaluate, sample=evaluation.sample_command, distributed=True)


def build_model(cfg: GenConfig, data: vdata.ImageData) -> GenerativeModel:
    return _BUILDERS[type(cfg)](cfg, data)


# ----------------------------------------------------------------------------- training


def make_optimizers(cfg: GenConfig, model: GenerativeModel) -> dict[str, torch.optim.Optimizer]:
    lr = {p: getattr(cfg, f"lr_{p}", cfg.lr) for p in model.players}  # a GAN config may set lr_d / lr_g
    return {p: torch.optim.Adam(model.player_parameters(p), lr=lr[p], betas=(cfg.beta1, 0.999),
                                weight_decay=cfg.weight_decay) for p in model.players}  # fmt: skip


def train_epoch(cfg: GenConfig, model: GenerativeModel, optimizers: dict, data: vdata.ImageData,
                gen: torch.Generator, iteration: int, step: TrainStep | None = None,
                skip=None) -> tuple[dict[str, float], int, int]:  # fmt: skip
    """One pass over ``data`` in shuffled global batches, each player of the model stepping when
    ``players_at(iteration)`` says (``fovea.fit.train_epoch``). Returns the mean of every logged value (over
    all processes under torchrun), the iteration count after it and the images learned from here."""
    step = step or TrainStep(cfg, model)
    model.train()
    updates = {p: Update(step.player_loss(p), optimizers[p], step.precision[p],
                         (lambda p=p: model.player_parameters(p)), cfg.grad_clip) for p in model.players}  # fmt: skip
    batches = (((x, y), len(x), total) for x, y, total in vdata.global_batches(data, cfg.batch_size, gen))
    return fit.train_epoch(batches, lambda it: [updates[p] for p in model.players_at(it)], iteration,
                           several=len(updates) > 1, skip=skip)  # fmt: skip


class TrainStep:
    """How a model's loss runs in training: under DistributedDataParallel with torchrun, compiled with
    ``compile``, in the config's precision (one GradScaler per player for fp16; ``scalers()`` are tracked)."""

    def __init__(self, cfg: GenConfig, model: GenerativeModel):
        self.precision = {p: Precision(cfg.amp, model.device) for p in model.players}
        self.loss = compiled(distributed.wrap(model, "loss", find_unused=len(model.players) > 1), cfg.compile)

    def player_loss(self, player: str) -> Callable[[tuple], dict[str, torch.Tensor]]:
        """The loss of one player on a batch (images, labels)."""
        return lambda batch: self.loss(batch, player)

    def scalers(self) -> dict:
        return {k: v for p, s in self.precision.items() for k, v in s.tracked(f"scaler_{p}").items()}


@torch.no_grad()
def validate(model: GenerativeModel, data: vdata.ImageData, batch_size: int = 500) -> dict[str, float]:
    """The mean of ``loss`` outputs over a split, in eval mode (for one-player models ``loss`` is the
    training objective: negative log-likelihood, negative ELBO or reconstruction error)."""
    model.eval()
    sums: dict[str, float] = {}
    for images, labels in vdata.batches(data, batch_size):
        for player in model.players:
            for k, v in model.loss((images, labels), player).items():
                if len(model.players) == 1 or k != "loss":
                    sums[k] = sums.get(k, 0.0) + float(v) * len(images)
    return {k: v / len(data) for k, v in sums.items()}


def grid_image(images: torch.Tensor, max_value: int, nrow: int | None = None, pad: int = 1,
               min_tile: int = 32) -> torch.Tensor:  # fmt: skip
    """Images (N, C, H, W) in 0..max_value as one (H', W', C) uint8 grid of ``nrow`` tiles a row
    (torchvision's ``make_grid``), tiles upscaled to at least ``min_tile`` pixels (an 8x8 digit becomes
    visible) with ``pad`` grey pixels between and around them."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    factor = max(1, math.ceil(min_tile / min(h, w)))
    x = (images.float().cpu() * (255.0 / max_value)).round().to(torch.uint8)
    x = x.repeat_interleave(factor, 2).repeat_interleave(factor, 3)  # (N, C, h * factor, w * factor)
    # make_grid narrows a row of fewer than nrow images and returns a lone image without its border: blank
    # grey tiles fill the first row (and a second when there is one image), cut off again below
    short = max(nrow, 2) - n
    if short > 0:
        x = torch.cat([x, x.new_full((short, *x.shape[1:]), 128)])
    out = make_grid(x, nrow=nrow, padding=pad, pad_value=128)[:c]  # one channel comes back as three copies
    return out[:, : rows * (h * factor + pad) + pad].permute(1, 2, 0)


def grid_labels(model: GenerativeModel, n: int) -> torch.Tensor | None:
    """Labels for a sample grid of a conditional model: each row one class."""
    if not model.num_classes:
        return None
    nrow = max(1, math.ceil(math.sqrt(n)))
    return (torch.arange(n) // nrow % model.num_classes).to(model.device)


def train(cfg: GenConfig, run: Run) -> dict:
    """``fovea train``: fit the config's model to the train split, resuming from the run's checkpoint if it
    has one. Every ``eval_every`` epochs it validates, keeps the weights with the lowest validation loss
    (one-player models; a GAN keeps its final weights) and logs a sample grid.

    Returns the run's figures: ``epochs``, ``best_epoch``, the kept model's validation ``loss`` outputs
    (``val/loss``, ``val/elbo``, ...) and, for a model with an ``nll``, ``val/nll_nats``,
    ``val/bits_per_dim`` and ``val/nll_kind``.
    """
    distributed.check_batch(cfg.batch_size)
    tr = load_split(cfg, "train", run).to(run.device)
    va = load_split(cfg, "val", run).to(run.device)
    model = channels_last(distributed.sync_batchnorm(build_model(cfg, tr)), run.device).to(run.device)
    best = copy.deepcopy(model)
    optimizers = make_optimizers(cfg, model)
    shuffle = torch.Generator().manual_seed(cfg.seed)  # the same on every process: one shuffle, split by rank
    step = TrainStep(cfg, model)
    run.track(model=model, best=best, generator=shuffle, **{f"optimizer_{p}": o for p, o in optimizers.items()},
              **step.scalers())  # fmt: skip
    run.restore()
    run.state.setdefault("iteration", 0)
    # one-player models keep the weights of the lowest validation loss; a GAN, its final weights
    keep = fit.KeepBest(run, model, best, "val/loss") if len(model.players) == 1 else None

    def train_one(epoch: int) -> tuple[dict, int]:
        means, run.state["iteration"], seen = train_epoch(cfg, model, optimizers, tr, shuffle, run.state["iteration"],
                                                          step, run.skip_step)  # fmt: skip
        return means, seen

    fit.fit(run, epochs=cfg.epochs, train=train_one, every=cfg.eval_every, keep=keep, score=lambda v: (-v["loss"],),
            validate=lambda _: validate(model, va),  # every process alike: they agree on the best
            media=lambda *_: log_grid(run, model, "samples/grid", seed=cfg.seed),
            show="val/loss" if keep else None)  # fmt: skip
    if keep is None or keep.record.score is None:  # nothing to choose by: the final model
        best.load_state_dict(model.state_dict())
    best.after_training(tr)
    run.save()
    best_epoch = keep.record.at if keep is not None and keep.record.score is not None else run.step
    figures = {"epochs": run.step, "best_epoch": best_epoch}
    figures.update({f"val/{k}": v for k, v in validate(best, va).items()})
    if best.nll_kind:
        figures.update(likelihood_figures(best, va, "val"))
    if run.main:
        log_grid(run, best, "samples/final", seed=cfg.seed)
    return figures


def log_grid(run: Run, model: GenerativeModel, key: str, *, seed: int, n: int = 64) -> Path | None:
    """Log a grid of ``n`` samples drawn with ``seed`` under ``key``; returns the PNG's path, if one is written."""
    model.eval()
    with torch.no_grad():
        images = model.sample(n, generator=torch.Generator().manual_seed(seed), labels=grid_labels(model, n))
    return run.log_image(key, grid_image(images, model.max_value), folder="samples")


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def nll_figures(model: GenerativeModel, data: vdata.ImageData, batch_size: int = 100) -> torch.Tensor:
    """Per-image NLL (nats) over a split."""
    model.eval()
    return torch.cat([model.nll(x, y).float().cpu() for x, y in vdata.batches(data, batch_size)])


def likelihood_figures(model: GenerativeModel, data: vdata.ImageData, split: str) -> dict[str, float]:
    """A split's mean NLL in nats per image and in bits per dimension, and how it was computed (``nll_kind``)."""
    nats = nll_figures(model, data)
    dims = math.prod(model.shape)
    return {f"{split}/nll_nats": nats.mean().item(), f"{split}/bits_per_dim": nats.mean().item() / (dims * LN2),
            f"{split}/nll_kind": model.nll_kind}  # fmt: skip
