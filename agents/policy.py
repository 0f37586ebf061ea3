"""The actor-critic network shared by REINFORCE and A2C: a registered backbone, an optional
RecurrentCore, a policy head (action logits) and a value head V(s).

Inputs are batch-first sequences, (N, T, *obs_shape), with a (N, T) ``starts`` mask marking the
observations that begin an episode (the recurrent state is zeroed there). A feed-forward network
treats the N*T observations independently; acting is the T = 1 case.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fovea.agents.fastpath import full_precision, learning_layout
from fovea.backbones.rnn import RecurrentCore, State


class ActorCritic(nn.Module):
    """Policy logits and state values from pixels or state vectors.

    Args:
        trunk: backbone with ``out_features`` (shared by both heads unless ``critic_trunk`` is given).
        num_actions: size of the discrete action space.
        critic_trunk: a separate backbone for the value head (common for small state-vector tasks).
        core: a RecurrentCore between the trunk and both heads.
        pixel_scale: divide inputs by this (255 for uint8 frames).
    """

    def __init__(self, trunk: nn.Module, num_actions: int, *, critic_trunk: nn.Module | None = None,
                 core: RecurrentCore | None = None, pixel_scale: float = 1.0):  # fmt: skip
        super().__init__()
        if core is not None and critic_trunk is not None:
            raise ValueError("a recurrent actor-critic shares its trunk and core between both heads")
        self.trunk, self.critic_trunk, self.core, self.pixel_scale = trunk, critic_trunk, core, pixel_scale
        features = core.out_features if core is not None else trunk.out_features
        self.policy = nn.Linear(features, num_actions)
        self.value = nn.Linear(critic_trunk.out_features if critic_trunk is not None else features, 1)
        # Small policy logits at the start (near-uniform actions), as in SB3 and CleanRL's orthogonal init.
        nn.init.orthogonal_(self.policy.weight, 0.01)
        nn.init.zeros_(self.policy.bias)
        nn.init.orthogonal_(self.value.weight, 1.0)
        nn.init.zeros_(self.value.bias)

    @property
    def num_actions(self) -> int:
        return self.policy.out_features

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State | None:
        return self.core.initial_state(batch_size, device) if self.core is not None else None

    def forward(self, obs: torch.Tensor, state: State | None = None, starts: torch.Tensor | None = None):
        """(N, T, *obs_shape) -> logits (N, T, A), values (N, T), and the recurrent state after step T-1."""
        n, t = obs.shape[:2]
        x = learning_layout(obs.reshape(n * t, *obs.shape[2:]).float() / self.pixel_scale)
        h = self.trunk(x)  # (N*T, F), bf16 under autocast
        v_in = self.critic_trunk(x).float() if self.critic_trunk is not None else None  # (never with a core)
        with full_precision(h):  # the recurrent core (its state carries over) and the heads run in fp32
            h = h.float()
            if self.core is not None:
                h, state = self.core(h.view(n, t, -1), state, starts)
                h = h.reshape(n * t, -1)
            return self.policy(h).view(n, t, -1), self.value(h if v_in is None else v_in).view(n, t), state

    def score(self, obs: torch.Tensor, action: int) -> torch.Tensor:
        """The logit of ``action`` for one observation: what gradient saliency differentiates."""
        logits, _, _ = self(obs[None, None])
        return logits[0, 0, action]


class PolicyActor:
    """Acts with an ActorCritic over a vector env, keeping its recurrent state between calls.

    ``greedy`` takes the most probable action; otherwise actions are sampled from the policy with
    ``generator``. Usable as a ``play`` policy: ``actor(obs, starts) -> actions``.
    """

    def __init__(self, net: ActorCritic, device: torch.device, *, greedy: bool, generator: torch.Generator):
        self.net, self.device, self.greedy, self.gen = net, device, greedy, generator
        self.state: State | None = None

    @torch.inference_mode()
    def __call__(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        o = torch.as_tensor(obs, device=self.device)
        if self.state is None or self.state[0].shape[1] != len(o):
            self.state = self.net.initial_state(len(o), self.device)
        s = torch.as_tensor(starts, device=self.device)[:, None]
        logits, _, self.state = self.net(o[:, None], self.state, s)
        return sample(logits[:, 0], self.greedy, self.gen).numpy()


def orthogonal_init(module: nn.Module, gain: float = 2**0.5) -> None:
    """SB3's and CleanRL's initialisation of an actor-critic's trunk: every convolution and linear layer orthogonal
    with ``gain`` (sqrt 2 before ReLUs), every recurrent weight matrix orthogonal (gain 1 for a core), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.orthogonal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LSTM | nn.GRU | nn.LSTMCell | nn.GRUCell):
            for name, p in m.named_parameters():
                if name.startswith("weight"):
                    nn.init.orthogonal_(p, gain)
                else:
                    nn.init.zeros_(p)


def sample(logits: torch.Tensor, greedy: bool, generator: torch.Generator) -> torch.Tensor:
    """(B, A) logits -> (B,) actions on the CPU: the argmax, or a draw from softmax(logits)."""
    if greedy:
        return logits.argmax(-1).cpu()
    return torch.multinomial(torch.softmax(logits.float(), -1).cpu(), 1, generator=generator).squeeze(1)
