"""What every agent shares: the config fields of an RL run, building its envs and its trunk."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from torch import nn

from fovea import backbones
from fovea.backbones.transfer import start_from
from fovea.config import BackboneSpec, Config, param
from fovea.envs import vector
from fovea.envs.gymenv import EnvInfo
from fovea.errors import ConfigError


@dataclass(kw_only=True)
class AgentConfig(Config):
    """Fields every agent has: the env, the budget, the trunk, evaluation and Atari options."""

    env: str = "cartpole"
    """cartpole, catch, an Atari game (pong, breakout, ...) or any registered gymnasium id with Discrete actions and
    image or vector observations (Acrobot-v1, MountainCar-v0, ...)."""
    num_envs: int = param(1, ge=1)
    """Environments stepped together; actions for all of them come from one forward pass."""
    total_steps: int = param(50_000, ge=1)
    """Agent steps (env steps summed over the envs) to train for."""
    backbone: BackboneSpec = field(
        default_factory=lambda: BackboneSpec(name="mlp", options={"hidden": (64, 64), "activation": "tanh"})
    )
    """Trunk of the network (SB3's MlpPolicy by default; on image observations the default becomes a CNN, see
    ``choose_trunk``): --backbone nature-cnn for Atari."""
    backbone_from: str = ""
    """Start the trunk from the weights of another run's checkpoint: runs/NAME (the one part that fits, e.g. an
    autoencoder's encoder) or runs/NAME:PREFIX (that part, e.g. runs/a2c:net.trunk)."""
    freeze_backbone: bool = False
    """With --backbone-from: keep those weights fixed and train only the heads."""
    gamma: float = param(0.99, ge=0, le=1)
    """Discount factor."""
    max_grad_norm: float = param(10.0, ge=0)
    """Clip the gradient norm (0: no clipping)."""
    clip_rewards: bool = False
    """Learn from sign(reward) (Atari); the reported return is always unclipped."""
    sticky: float = param(0.25, ge=0, le=1)
    """Atari: sticky-action probability (Machado et al. 2018; 0 for the Nature setting)."""
    life_loss: bool = True
    """Atari: a lost life ends the episode for learning (never for the reported score)."""
    fire_on_life_loss: bool = True
    """Atari: press FIRE on the step after a lost life in games that have it (as SB3's and CleanRL's wrappers do);
    that step is not learned from as the agent's action."""
    eval_every: int = param(10_000, ge=0)
    """Agent steps between evaluations during training (0: only at the end); the best network is kept."""
    eval_episodes: int = param(10, ge=0)
    """Episodes played by each evaluation and by `fovea eval` (0: no evaluation during training)."""
    eval_video: Literal["auto", "on", "off"] = "auto"
    """Film one more episode at each evaluation during training (runs/NAME/videos/, W&B): auto films Atari only."""
    seed: int = 0
    """Seeds every RNG and the envs."""
    checkpoint_every: int = param(100_000, ge=1)
    """Agent steps between checkpoints (rounded down to whole vector steps or rollouts; at least one of those)."""
    amp: Literal["auto", "off", "bf16"] = "auto"
    """Mixed precision of the forward passes: auto (bf16 autocast on CUDA, fp32 elsewhere), off, or bf16 (also on
    the CPU, slowly). The heads, TD targets, returns and losses stay in fp32."""
    compile: bool = False
    """torch.compile the network's forward, in place (checkpoints keep their keys); the first steps pay for it."""

    def validate(self) -> None:
        self.backbone = choose_trunk(self, vector.describe(self.env))
        if self.freeze_backbone and not self.backbone_from:
            raise ConfigError("freeze_backbone = true needs --backbone-from runs/NAME (weights to freeze)")

    @property
    def atari(self) -> bool:
        return vector.is_atari(self.env)


def choose_trunk(cfg: AgentConfig, env: EnvInfo) -> BackboneSpec:
    """The trunk for ``env``'s observations: ``cfg.backbone`` as given, except that the config's default (an MLP) on
    images becomes a CNN (``image_trunk``); a backbone that takes images is refused on vector observations."""
    f = next(f for f in dataclasses.fields(cfg) if f.name == "backbone")
    default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    spec = cfg.backbone
    if env.image and (spec.name, spec.options) == (default.name, default.options) and default.name == "mlp":
        return image_trunk(env.shape)
    if not env.image and backbones.entry(spec.name).kind == "image":
        raise ConfigError(f"backbone = {spec.name!r} takes images; {cfg.env}'s observations are vectors of "
                          f"{env.shape[0]} numbers: use --backbone mlp")  # fmt: skip
    return spec


def image_trunk(shape: tuple[int, ...]) -> BackboneSpec:
    """A CNN for (C, H, W) images: the Nature DQN's trunk from 36x36 up (Atari's 84x84), below that the small
    full-resolution ``catch_cnn`` (Catch, grid worlds)."""
    return BackboneSpec(name="nature-cnn") if min(shape[1:]) >= 36 else catch_cnn()


def make_env(cfg: AgentConfig, num_envs: int, seed: int, evaluation: bool = False):
    """The training (or, with ``evaluation``, the full-game) vector env of ``cfg``."""
    atari = dict(sticky=cfg.sticky, life_loss=cfg.life_loss and not evaluation, fire_on_life_loss=cfg.fire_on_life_loss)
    return vector.make(cfg.env, num_envs, seed=seed, **(atari if cfg.atari else {}))


def pixel_scale(env) -> float:
    """255 for uint8 frames, 1 for state vectors."""
    return 255.0 if env.single_observation_space.dtype == np.uint8 else 1.0


def build_trunk(cfg: AgentConfig, in_shape: tuple[int, ...], init: Callable[[nn.Module], None] | None = None
                ) -> nn.Module:  # fmt: skip
    """The configured backbone, initialised by ``init`` (default: torch's), then its weights taken from
    ``backbone_from`` (and frozen) when asked."""
    trunk = cfg.backbone.build(in_shape)
    if init is not None:
        init(trunk)
    if cfg.backbone_from:
        start_from(trunk, cfg.backbone_from, cfg.freeze_backbone)
    return trunk


def catch_cnn() -> BackboneSpec:
    """The small trunk of the Catch recipes: one 3x3 conv stage at full resolution, no batch norm (batch
    statistics would differ between acting on N observations and learning from a batch)."""
    return BackboneSpec(name="convnet", options={"widths": (32,), "downsample": "none", "norm": "none"})
