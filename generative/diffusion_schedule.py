"""The fixed forward process of a diffusion model: its noise schedule and the Gaussians it implies.

Timesteps are 0-based, t = 0 .. T-1 (the paper's t = 1 .. T). With ``alphas_bar[t] = prod_{s <= t} (1 - beta_s)``:

- ``q(x_t | x_0) = N(sqrt(alphas_bar[t]) x_0, (1 - alphas_bar[t]) I)`` (Ho et al. 2020, eq. 4);
- ``q(x_{t-1} | x_t, x_0) = N(c0[t] x_0 + ct[t] x_t, beta_tilde[t] I)`` (eq. 6-7), with ``alphas_bar[-1] = 1``.

Schedules: ``linear`` (Ho et al.: beta from 1e-4 to 0.02 over 1,000 steps, rescaled for other T as in Nichol &
Dhariwal) and ``cosine`` (Nichol & Dhariwal 2021, eq. 17: ``alphas_bar`` follows cos^2, beta capped at 0.999), which
destroys information more slowly and suits small images.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

ScheduleKind = Literal["linear", "cosine"]


def betas_for(kind: ScheduleKind, timesteps: int) -> torch.Tensor:
    """The noise variances beta_t (T,) in float64 of the ``linear`` or ``cosine`` schedule."""
    if kind == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clamp(max=0.999)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2  # alphas_bar up to a constant
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {kind!r}; use linear or cosine")


class Schedule(nn.Module):
    """The per-timestep constants of the forward process, as float32 buffers (computed in float64).

    Args:
        kind: ``linear`` or ``cosine``.
        timesteps: T, the number of noising steps.
    """

    def __init__(self, kind: ScheduleKind, timesteps: int):
        super().__init__()
        betas = betas_for(kind, timesteps)
        ab = torch.cumprod(1 - betas, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        consts = {
            "betas": betas,
            "alphas_bar": ab,
            "c0": ab_prev.sqrt() * betas / (1 - ab),  # posterior mean's weight on x_0
            "ct": (1 - betas).sqrt() * (1 - ab_prev) / (1 - ab),  # and on x_t
            "beta_tilde": betas * (1 - ab_prev) / (1 - ab),  # posterior variance (0 at t = 0)
        }
        for name, v in consts.items():
            self.register_buffer(name, v.float(), persistent=False)  # derived from the config: not checkpointed
        self.timesteps = timesteps

    def at(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The constant ``name`` at timesteps t (B,), shaped (B, 1, 1, 1) to broadcast over images."""
        return getattr(self, name)[t].view(-1, 1, 1, 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t drawn from q(x_t | x_0) in closed form, with the standard normal noise ``eps``."""
        ab = self.at("alphas_bar", t)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def x0_from_eps(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The x_0 that ``q_sample`` would turn into ``x`` with noise ``eps``."""
        ab = self.at("alphas_bar", t)
        return (x - (1 - ab).sqrt() * eps) / ab.sqrt()

    def posterior_mean(self, x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The mean of q(x_{t-1} | x_t = x, x_0)."""
        return self.at("c0", t) * x0 + self.at("ct", t) * x


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps from T-1 down to 0, evenly spaced (every one of them when ``steps == timesteps``)."""
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def log_mass_gaussian_bins(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, half_width: float) -> torch.Tensor:
    """log P(the bin of x) under N(mean, std^2), bins ``x +- half_width``, the outermost bins reaching to infinity
    (x in [-1, 1]); computed from log-CDFs in float64, stable however far the bin lies from the mean."""
    x, mean, std = x.double(), mean.double(), std.double()
    hi, lo = (x + half_width - mean) / std, (x - half_width - mean) / std
    # P(lo < z < hi): in the upper tail use the mirror image P(-hi < z < -lo), so neither CDF is rounded to 1
    flip = lo > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    d = log_a - log_b  # <= 0
    log1mexp = torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))
    middle = log_b + log1mexp
    top = torch.special.log_ndtr(-lo)  # x at the top level: P(z > lo)
    bottom = torch.special.log_ndtr(hi)  # x at the bottom level: P(z < hi)
    return torch.where(x > 1 - half_width, top, torch.where(x < -1 + half_width, bottom, middle))
