"""What every agent shares: the config fields of an RL run, building its envs and its trunk, and
playing whole episodes for evaluation.

The fast path of DESIGN.md's "Speed" section lives here too (``FastPath``): bf16 autocast for the forward
passes, channels_last convolutions and the CUDA-only choices, an optional compiled forward, and ``EnvStepper``,
which lets a learner run while ale-py's C++ envs step.

A policy, for ``play``, is any callable ``policy(obs, starts) -> actions`` over a batch of envs:
``obs`` as the vector env returns it and ``starts`` the (num_envs,) mask of envs whose episode
begins with this observation (a recurrent policy resets its state there; others ignore it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from fovea.backbones.transfer import start_from
from fovea.config import BackboneSpec, Config, param
from fovea.envs import vector
from fovea.envs.atari import AtariVector
from fovea.errors import ConfigError
from fovea.precision import amp_dtype, autocast, channels_last

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]

# The games an agent plays are kept apart by seed. Training plays cfg.seed + run.step (a new stream at each start or
# resume); the periodic evaluations that pick the best network replay the same games, cfg.seed + SELECTION; scores
# (the summary's eval/* figures and `fovea eval`) come from games at cfg.seed + SCORE that nothing else plays, so a
# score is a fresh estimate, never the maximum of the evaluations that chose the network; the video plays
# cfg.seed + VIDEO. Each offset seeds the envs and the policy's action draws alike.
SELECTION, VIDEO, SCORE = 10_000, 20_000, 1 << 30


@dataclass(kw_only=True)
class AgentConfig(Config):
    """Fields every agent has: the env, the budget, the trunk, evaluation and Atari options."""

    env: str = "cartpole"
    """cartpole, catch, or an Atari game (pong, breakout, ...)."""
    num_envs: int = param(1, ge=1)
    """Environments stepped together; actions for all of them come from one forward pass."""
    total_steps: int = param(50_000, ge=1)
    """Agent steps (env steps summed over the envs) to train for."""
    backbone: BackboneSpec = field(
        default_factory=lambda: BackboneSpec(name="mlp", options={"hidden": (64, 64), "activation": "tanh"})
    )
    """Trunk of the network (SB3's MlpPolicy by default): --backbone nature-cnn for Atari."""
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
    seed: int = 0
    """Seeds every RNG and the envs."""
    checkpoint_every: int = param(10_000, ge=1)
    """Loop iterations between checkpoints: vector steps (DQN), rollouts (A2C) or batches of episodes (REINFORCE)."""
    amp: Literal["auto", "off", "bf16"] = "auto"
    """Mixed precision of the forward passes: auto (bf16 autocast on CUDA, fp32 elsewhere), off, or bf16 (also on
    the CPU, slowly). The heads, TD targets, returns and losses stay in fp32."""
    compile: bool = False
    """torch.compile the network's forward, in place (checkpoints keep their keys); the first steps pay for it."""

    def validate(self) -> None:
        vector.check_name(self.env)
        if self.freeze_backbone and not self.backbone_from:
            raise ConfigError("freeze_backbone = true needs --backbone-from runs/NAME (weights to freeze)")

    @property
    def atari(self) -> bool:
        return self.env not in vector.CLASSIC


# CUDA graphs ("reduce-overhead") are left out: a graph replays into static output buffers that its next replay
# overwrites, and here outputs outlive the call (the target net's Q-values next to the online net's in one update,
# a rollout's values kept until its update), and one forward serves alternating shapes (acting on num_envs, learning
# on a batch). Without them, max-autotune picks the fastest conv / matmul kernels for those few static shapes.
COMPILE_MODE = {"cuda": "max-autotune-no-cudagraphs"}  # other devices: torch.compile's default mode


@dataclass(frozen=True)
class FastPath:
    """How a run uses its device (DESIGN.md, "Speed"): ``autocast()`` around forward passes (bf16 or nothing),
    ``prepare(net)`` for channels_last convolutions on CUDA and a compiled forward, and ``sync_free``: on CUDA
    the update reads nothing back to the host (the replay samples on the device and masks what it cannot redraw).

    ``FastPath.of(cfg, device)`` resolves a config's ``amp`` and ``compile`` for ``device``.
    """

    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    compile: bool = False

    @classmethod
    def of(cls, cfg: AgentConfig, device: torch.device | str) -> FastPath:
        device = torch.device(device)
        dtype = amp_dtype(cfg.amp, device)
        # auto on a GPU without bf16 would mean fp16, which needs loss scaling: the agents keep fp32 there
        return cls(device, dtype if dtype == torch.bfloat16 else None, cfg.compile)

    @property
    def sync_free(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def prepare(self, net: nn.Module, *, dynamic: bool | None = False) -> nn.Module:
        """channels_last weights on CUDA and, with ``compile``, a compiled forward (``nn.Module.compile`` compiles
        in place, so ``state_dict`` keys keep no ``_orig_mod.`` prefix and checkpoints load either way).
        ``dynamic=False`` specialises on each input shape (acting and learning batches are fixed); None lets
        torch mark a changing batch size dynamic (REINFORCE's batches of whole episodes)."""
        channels_last(net, self.device)
        if self.compile:
            net.compile(mode=COMPILE_MODE.get(self.device.type), dynamic=dynamic)
        return net


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off (fp32) for a network's heads: they are small, and their outputs feed argmax, TD targets and
    log-probabilities."""
    return torch.autocast(x.device.type, enabled=False)


class EnvStepper:
    """``env.step`` in two halves, so that a learner can work while the envs step: ``send(actions)`` starts a
    vector step and ``recv()`` returns what ``env.step(actions)`` would have.

    With ``overlap`` an ``AtariVector`` steps in ale-py's C++ threads between the two calls (its own ``send`` /
    ``recv``); any other env, or no ``overlap``, steps inside ``recv()``.
    """

    def __init__(self, env, overlap: bool):
        self.env, self.background = env, overlap and isinstance(env, AtariVector)
        self.actions: np.ndarray | None = None

    def send(self, actions: np.ndarray) -> None:
        self.actions = actions
        if self.background:
            self.env.send(actions)

    def recv(self):
        actions, self.actions = self.actions, None
        return self.env.recv() if self.background else self.env.step(actions)


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


def to_device(x, device: torch.device):
    """A tensor, or a tuple of them (a recurrent state), on ``device``; None stays None."""
    if x is None:
        return None
    return tuple(t.to(device) for t in x) if isinstance(x, tuple | list) else x.to(device)


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


NETWORKS = ("final", "best")


def load_network(cfg: AgentConfig, run, build: Callable[[AgentConfig, object], nn.Module], network: str,
                 key: str) -> nn.Module:  # fmt: skip
    """From the run's latest checkpoint, in eval mode: the ``final`` network (the one training ended with, or the
    latest of a run still under way, held under ``key``) or the ``best`` one (of the periodic evaluations).

    It is built without ``backbone_from``: the checkpoint holds every weight, and the source run may be gone.
    """
    if network not in NETWORKS:
        raise ConfigError(f"--network {network!r}: choose final (the last weights) or best (of the evaluations)")
    env = make_env(cfg, 1, cfg.seed)
    net = build(dataclasses.replace(cfg, backbone_from="", freeze_backbone=False), env).to(run.device)
    env.close()
    run.track(**{"best" if network == "best" else key: net})
    if not run.restore():
        raise ConfigError(f"{run.dir} has no checkpoint yet; train it first (fovea train --resume {run.dir})")
    return net.eval()


def play(cfg: AgentConfig, policy: Policy, episodes: int, *, seed: int, num_envs: int = 8) -> np.ndarray:
    """Full-game, unclipped returns of ``episodes`` episodes played by ``policy`` (no life loss)."""
    env = make_env(cfg, min(episodes, num_envs), seed, evaluation=True)
    n = env.num_envs
    # A fixed quota per env: keeping the first episodes to finish would favour short ones (as SB3's evaluate_policy).
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    played = np.zeros(n, np.int64)
    returns: list[float] = []
    try:
        obs = env.reset()
        starts = np.ones(n, bool)
        while (played < quota).any():
            obs, _, _, _, info = env.step(policy(obs, starts))
            starts = info["reset"]  # NEXT_STEP autoreset: this obs begins a new episode
            for i, r in zip(np.flatnonzero(info["game_over"]), info["episodes"].returns, strict=True):
                if played[i] < quota[i]:
                    returns.append(float(r))
                played[i] += 1
    finally:
        env.close()
    return np.asarray(returns, dtype=np.float64)


def return_figures(returns: np.ndarray) -> dict:
    return {"eval/mean_return": float(returns.mean()), "eval/std_return": float(returns.std()),
            "eval/min_return": float(returns.min()), "eval/max_return": float(returns.max()),
            "eval/episodes": len(returns)}  # fmt: skip


def clip_grads(module: nn.Module, max_norm: float) -> torch.Tensor | None:
    """Clip the gradient norm of ``module`` to ``max_norm`` (no-op for 0); returns the norm before clipping."""
    if max_norm <= 0:
        return None
    return nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_norm)


Evaluate = Callable[..., dict]  # evaluate(net, seed_offset) -> return_figures of full games


def keep_best(run, net: nn.Module, best: nn.Module, steps: int, evaluate: Evaluate) -> dict:
    """Evaluate ``net`` on the selection games, log it, and copy it into ``best`` when it beats every earlier
    evaluation."""
    res = evaluate(net, SELECTION)
    run.log({"eval/mean_return": res["eval/mean_return"], "eval/std_return": res["eval/std_return"]}, step=steps)
    if res["eval/mean_return"] > run.state.get("best_return", -float("inf")):
        run.state.update(best_return=res["eval/mean_return"], best_step=steps)
        best.load_state_dict(net.state_dict())
    return res


def finish_training(cfg: AgentConfig, run, net: nn.Module, best: nn.Module, agent_steps: int,
                    evaluate: Evaluate) -> dict:  # fmt: skip
    """The last selection evaluation (or, without evaluations, the final network taken as the best), then the
    scores on fresh games, saved with the run; returns the figures of the run.

    ``eval/mean_return`` (and std, min, max) is the final network's score on the fresh games, as ``fovea eval``
    reports it (the same games, so the same figure); ``eval/final_mean_return`` says so explicitly;
    ``eval/best_mean_return`` is the best network's score on the same fresh games, and ``eval/best_selection_return``
    what it scored on the selection games that picked it (biased upwards: it won that comparison)."""
    figures: dict = {"agent_steps": agent_steps}
    if cfg.eval_episodes:
        keep_best(run, net, best, agent_steps, evaluate)
        final = evaluate(net, SCORE)
        same = run.state["best_step"] == agent_steps
        best_score = final if same else evaluate(best, SCORE)
        figures.update(final)
        figures.update({"eval/final_mean_return": final["eval/mean_return"],
                        "eval/best_mean_return": best_score["eval/mean_return"],
                        "eval/best_selection_return": run.state["best_return"],
                        "eval/best_step": run.state["best_step"]})  # fmt: skip
        run.log({k: figures[k] for k in ("eval/final_mean_return", "eval/best_mean_return")}, step=agent_steps)
    else:
        best.load_state_dict(net.state_dict())
        run.state["best_step"] = agent_steps
    run.save()
    return figures


def crossed(steps: int, width: int, every: int) -> bool:
    """Whether the agent-step counter crossed a multiple of ``every`` in the last ``width`` steps."""
    return every > 0 and steps // every > (steps - width) // every
