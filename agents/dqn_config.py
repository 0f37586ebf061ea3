"""The DQN family's config: one dataclass whose options make DQN (Mnih et al. 2015), double DQN, dueling heads,
n-step returns, prioritised replay, DrQ's augmentation and the data-efficient schedules of the Atari 100k agents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from fovea.agents.base import AgentConfig
from fovea.config import BackboneSpec, param
from fovea.envs import vector
from fovea.errors import ConfigError


@dataclass(kw_only=True)
class DQNConfig(AgentConfig):
    """DQN: defaults are RL Zoo's tuned CartPole-v1 settings (500 at 50k steps)."""

    backbone: BackboneSpec = field(default_factory=lambda: BackboneSpec(name="mlp", options={"hidden": (256, 256)}))
    """Trunk of the Q-network: --backbone nature-cnn for Atari."""
    dueling: bool = False
    """Dueling head (Wang et al. 2016)."""
    double: bool = False
    """Double DQN targets (van Hasselt et al. 2016)."""
    buffer_size: int = param(100_000, ge=1)
    """Transitions the replay holds."""
    batch_size: int = param(64, ge=1)
    """Transitions per gradient step."""
    optimizer: Literal["adam", "rmsprop", "rmsprop-tf", "rmsprop-centered"] = "adam"
    """adam; rmsprop (torch's: eps outside the root); rmsprop-tf (TensorFlow's: eps inside, average from 1);
    rmsprop-centered (the Nature DQN's: centred, eps inside the root). agents/optim.py has the formulas."""
    lr: float = param(2.3e-3, gt=0)
    """Learning rate."""
    optimizer_eps: float = param(1e-8, gt=0)
    """Adam / RMSprop epsilon (1.5e-4 in Rainbow-style Adam, 0.01 in the Nature RMSprop)."""
    rmsprop_alpha: float = param(0.99, ge=0, lt=1)
    """RMSprop's decay of its running averages (0.95 in the Nature DQN)."""
    learning_starts: int = param(1000, ge=0)
    """Agent steps of experience before learning starts."""
    train_every: int = param(256, ge=1)
    """Agent steps between training phases."""
    gradient_steps: int = param(128, ge=1)
    """Gradient steps per training phase: the replay ratio is gradient_steps / train_every."""
    target_update_every: int = param(10, ge=1)
    """Agent steps between target-network updates."""
    tau: float = param(1.0, gt=0, le=1)
    """Target update: 1 copies the weights (hard), less mixes them in (Polyak)."""
    eps_start: float = param(1.0, ge=0, le=1)
    """Exploration epsilon at the start."""
    eps_end: float = param(0.04, ge=0, le=1)
    """Exploration epsilon at the end of the schedule."""
    eps_fraction: float = param(0.16, gt=0, le=1)
    """Fraction of total_steps over which epsilon falls linearly."""
    loss: Literal["huber", "mse"] = "huber"
    """TD loss: Huber (smooth L1, as in the Nature paper's error clipping) or squared error."""
    eval_epsilon: float = param(0.0, ge=0, le=1)
    """Epsilon during evaluation (0.05 in the Nature protocol)."""
    save_replay: bool = False
    """Put the replay buffer in checkpoints, for an exact resume (large for Atari)."""
    n_step: int = param(1, ge=1)
    """Rewards summed into each TD target before bootstrapping (n-step returns; 10 in DrQ(eps) and SPR's DER)."""
    prioritized: bool = False
    """Proportional prioritised replay (Schaul et al. 2016): sample by |TD error|^alpha, weight the loss by
    importance weights with beta annealed linearly to 1 over total_steps."""
    priority_alpha: float = param(0.6, ge=0)
    """Prioritised replay: the priority exponent alpha (0.6 in Schaul et al.'s proportional variant)."""
    priority_beta: float = param(0.4, ge=0, le=1)
    """Prioritised replay: the importance-weight exponent beta at the start (0.4 in Schaul et al.)."""
    augment: Literal["none", "shift", "shift-intensity"] = "none"
    """Augment the observations of each update (DrQ, Kostrikov et al. 2021): shift (pad 4 by repeating the border,
    random crop), or that and intensity noise (Dopamine's DrQ and DrQ(eps)); each image its own draw, on the device."""
    eps_decay_steps: int = param(0, ge=0)
    """Agent steps over which epsilon falls from eps_start to eps_end once learning starts (Dopamine's
    linearly_decaying_epsilon); 0: over eps_fraction of total_steps from step 0."""
    async_env: Literal["auto", "on", "off"] = "auto"
    """Issue the next env step before the gradient update and collect it after, so the envs step while the
    network learns (acting then uses the weights from before that update): auto is on for Atari on CUDA, where
    ale-py's C++ envs step in threads of their own; off keeps the strict act, step, learn order."""

    def validate(self) -> None:
        super().validate()
        if self.batch_size > self.buffer_size:
            raise ConfigError(
                f"DQNConfig.batch_size = {self.batch_size} is larger than buffer_size = {self.buffer_size}"
            )
        if self.buffer_size // self.num_envs < 8:
            raise ConfigError(f"DQNConfig.buffer_size = {self.buffer_size} is too small for num_envs = {self.num_envs}")
        if self.buffer_size // self.num_envs < self.n_step + 6:
            raise ConfigError(f"DQNConfig.buffer_size = {self.buffer_size} is too small for n_step = {self.n_step} "
                              f"with num_envs = {self.num_envs}: give each env at least n_step + 6 slots")  # fmt: skip
        if self.augment != "none" and not vector.describe(self.env).image:
            raise ConfigError(f"DQNConfig.augment = {self.augment!r} shifts images; {self.env}'s observations "
                              "are a state vector: use --augment none")  # fmt: skip

    def overlaps_env(self, device: torch.device | str) -> bool:
        """Whether ``async_env`` steps the envs during the update on ``device``."""
        auto = self.atari and torch.device(device).type == "cuda"
        return self.async_env == "on" or (self.async_env == "auto" and auto)

    @property
    def target_is_online(self) -> bool:
        """Whether the target network is a copy of the online one at every update (one update per agent step, the
        target copied after each: DrQ(eps)'s target_update_period = 1), so the online network can stand in for it."""
        once = self.num_envs == self.train_every == self.gradient_steps == 1
        return once and self.target_update_every == 1 and self.tau == 1

    def priority_beta_at(self, agent_steps: int) -> float:
        """Importance-weight exponent at ``agent_steps``: priority_beta rising linearly to 1 at total_steps."""
        return self.priority_beta + (1.0 - self.priority_beta) * min(1.0, agent_steps / self.total_steps)

    def epsilon(self, agent_steps: int) -> float:
        """Exploration epsilon at ``agent_steps`` (the loop acts uniformly before learning_starts)."""
        if self.eps_decay_steps:
            frac = min(1.0, max(0.0, (agent_steps - self.learning_starts) / self.eps_decay_steps))
            return self.eps_start + frac * (self.eps_end - self.eps_start)
        frac = min(1.0, agent_steps / (self.eps_fraction * self.total_steps))
        return self.eps_start + frac * (self.eps_end - self.eps_start)
