"""Returns and advantages for policy gradients (the notes, chapter 14.6), over batch-first (N, T) tensors.

Step ``t`` of env ``n`` holds the reward ``r_t`` received after acting on ``s_t``; ``terminated[t]``
means ``s_{t+1}`` is terminal (no bootstrap); ``ends[t]`` means the episode ended at step t for any
reason (termination or time-limit truncation), so no return flows back across it. A truncated step
still bootstraps from ``V(s_{t+1})``, the value of its real final observation.
"""

from __future__ import annotations

import torch


def returns_to_go(rewards: torch.Tensor, ends: torch.Tensor, gamma: float, bootstrap: torch.Tensor | None = None):
    """G_t = sum_{t' >= t} gamma^(t'-t) r_t', restarting after every episode end (REINFORCE).

    Args:
        rewards: (N, T).
        ends: (N, T) bool, the episode ended at this step.
        gamma: discount.
        bootstrap: (N, T) value added (times gamma) at the ends that were truncations, else zeros.
    """
    g = torch.zeros_like(rewards[:, 0])
    out = torch.empty_like(rewards)
    extra = bootstrap if bootstrap is not None else torch.zeros_like(rewards)
    for t in range(rewards.shape[1] - 1, -1, -1):
        g = torch.where(ends[:, t], rewards[:, t] + gamma * extra[:, t], rewards[:, t] + gamma * g)
        out[:, t] = g
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        ends: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:  # fmt: skip
    """Generalised advantage estimates (Schulman et al. 2016), (N, T).

    delta_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t);
    A_t = delta_t + gamma lam (1 - ends_t) A_{t+1}.

    ``lam = 1`` gives the n-step advantage of A2C (Mnih et al. 2016): the discounted rewards to the
    end of the rollout plus the discounted value there, minus V(s_t). ``next_values[:, t]`` is
    V(s_{t+1}), the value of the observation that followed step t.
    """
    not_term = 1.0 - terminated.to(rewards.dtype)
    carry = 1.0 - ends.to(rewards.dtype)
    delta = rewards + gamma * not_term * next_values - values
    adv = torch.empty_like(rewards)
    a = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        a = delta[:, t] + gamma * lam * carry[:, t] * a
        adv[:, t] = a
    return adv


def nstep_returns(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
                  ends: torch.Tensor, gamma: float) -> torch.Tensor:  # fmt: skip
    """The n-step bootstrapped returns of A2C: GAE with lambda = 1, plus V(s_t)."""
    return gae(rewards, values, next_values, terminated, ends, gamma, 1.0) + values
