"""What the agents' training loops share: the state they carry between iterations, gradient clipping and the
schedule test for periodic work."""

from __future__ import annotations

import torch
from torch import nn


class Carry:
    """What an agent's loop carries from one iteration to the next and an exact resume needs besides the envs
    (episode-start masks, a recurrent state), tracked by the Run: ``values`` is what a checkpoint holds (arrays,
    tensors, tuples of them, numbers or None)."""

    def __init__(self, **values):
        self.values = dict(values)

    def state_dict(self) -> dict:
        return dict(self.values)

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.values):
            raise ValueError(f"the loop state holds {sorted(state)}, this run carries {sorted(self.values)}")
        self.values = dict(state)


def clip_grads(module: nn.Module, max_norm: float) -> torch.Tensor | None:
    """Clip the gradient norm of ``module`` to ``max_norm`` (no-op for 0); returns the norm before clipping."""
    if max_norm <= 0:
        return None
    return nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_norm)


def crossed(steps: int, width: int, every: int) -> bool:
    """Whether the agent-step counter crossed a multiple of ``every`` in the last ``width`` steps."""
    return every > 0 and steps // every > (steps - width) // every
