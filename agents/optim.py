"""The optimisers the agents' recipes name, each written once.

RMSprop comes in three forms that behave differently on the same gradients:

- ``rmsprop``: torch's. The running average of squared gradients starts at 0 and epsilon is added outside the
  square root: ``p -= lr * g / (sqrt(v) + eps)``. The first steps are large (``v`` is still small).
- ``rmsprop-tf``: TensorFlow's, as the A2C paper's code and RL Zoo's A2C use it (SB3's ``RMSpropTFLike``). The
  average starts at 1 and epsilon goes inside the root: ``p -= lr * g / sqrt(v + eps)``. Its first update is
  about |g| / 10 of torch's (10 lr per weight there): 10,000x smaller for gradients of about 1e-3.
- ``rmsprop-centered``: DeepMind's Nature DQN (Mnih et al. 2015, the ``NeuralQLearner`` of their code): squared and
  plain gradient averages with the same decay (0.95 there), the first subtracted from the second (centred), and the
  "min squared gradient" 0.01 inside the root: ``p -= lr * g / sqrt(v - m**2 + eps)``, both averages from 0.

and ``adam`` is torch's Adam, fused on the CPU and CUDA (one pass over the weights per step; ``python -m
benchmarks.dqn_update`` times the drq100k update with it against the foreach form).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("adam", "rmsprop", "rmsprop-tf", "rmsprop-centered")


class RMSpropEpsInside(torch.optim.Optimizer):
    """RMSprop with epsilon inside the square root: ``p -= lr * g / sqrt(v - m^2 + eps)``, where
    ``v = alpha v + (1 - alpha) g^2`` starts at ``square_avg_init`` and, when ``centered``,
    ``m = alpha m + (1 - alpha) g`` starts at 0 (else ``m = 0``).

    Args:
        params: the parameters to optimise.
        lr: learning rate.
        alpha: decay of the running averages.
        eps: added to the averaged square inside the root.
        centered: subtract the square of the running mean gradient (Nature DQN).
        square_avg_init: where ``v`` starts: 1 for TensorFlow's RMSprop, 0 for the Nature DQN's.
    """

    def __init__(self, params: Iterable, lr: float, alpha: float = 0.99, eps: float = 1e-5, centered: bool = False,
                 square_avg_init: float = 1.0):  # fmt: skip
        if lr <= 0 or not 0 <= alpha < 1 or eps < 0:
            raise ValueError(f"RMSpropEpsInside needs lr > 0, 0 <= alpha < 1, eps >= 0; got {lr}, {alpha}, {eps}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, centered=centered, square_avg_init=square_avg_init))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, eps, lr = group["alpha"], group["eps"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["square_avg"] = torch.full_like(p, group["square_avg_init"])
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(p)
                state["step"] += 1
                v = state["square_avg"].mul_(alpha).addcmul_(g, g, value=1 - alpha)
                if group["centered"]:
                    m = state["grad_avg"].mul_(alpha).add_(g, alpha=1 - alpha)
                    denom = v.addcmul(m, m, value=-1).add_(eps).sqrt_()
                else:
                    denom = v.add(eps).sqrt_()
                p.addcdiv_(g, denom, value=-lr)
        return loss


def make_optimizer(kind: str, params: Iterable, *, lr: float, eps: float, alpha: float = 0.99) -> torch.optim.Optimizer:
    """The optimiser ``kind`` (one of ``OPTIMIZERS``) over ``params``; ``alpha`` is RMSprop's decay."""
    params = list(params)
    if kind == "adam":  # fused: one kernel per step over all the weights, on the CPU as on CUDA
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=fused or None, foreach=None if fused else True)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, foreach=True)
    if kind == "rmsprop-tf":
        return RMSpropEpsInside(params, lr=lr, alpha=alpha, eps=eps, centered=False, square_avg_init=1.0)
    if kind == "rmsprop-centered":
        return RMSpropEpsInside(params, lr=lr, alpha=alpha, eps=eps, centered=True, square_avg_init=0.0)
    raise ValueError(f"unknown optimizer {kind!r}; choose one of {', '.join(OPTIMIZERS)}")
