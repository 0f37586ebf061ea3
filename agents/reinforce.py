"""REINFORCE with a baseline (Williams 1992; the notes, chapter 14.6).

The policy gradient is estimated from whole episodes as
sum_t (G_t - b(s_t)) grad log pi(a_t | s_t), with G_t the discounted return-to-go. The baseline
``b`` lowers the variance of that estimate without biasing it:

- ``none``: b = 0;
- ``mean``: a running mean of the returns seen in earlier batches (the notes' "simple" baseline);
- ``value``: a learned state value V(s_t), regressed on G_t (the notes' "better" one).

Episodes are played on ``num_envs`` envs at once; every ``batch_episodes`` finished episodes make
one gradient step. An episode still running at an update carries on, so its first steps were
sampled by the policy before the update: a slight lag that vanishes as ``batch_episodes`` grows.
A time-limit truncation bootstraps G from V(final observation) when there is a learned value.
Forward passes run under ``amp``; the returns, advantages and losses are fp32.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from fovea.agents import a2c, evaluation, loop
from fovea.agents.base import AgentConfig, catch_cnn, make_env
from fovea.agents.evaluation import finish_training
from fovea.agents.fastpath import FastPath
from fovea.agents.loop import crossed
from fovea.agents.policy import ActorCritic, sample
from fovea.agents.returns import returns_to_go
from fovea.config import param, register_recipe, register_task
from fovea.errors import ConfigError
from fovea.run import Run


@dataclass(kw_only=True)
class ReinforceConfig(AgentConfig):
    """REINFORCE with a baseline: defaults learn CartPole-v1 (475+ within 200k steps)."""

    num_envs: int = param(8, ge=1)
    """Environments playing episodes at once."""
    total_steps: int = param(200_000, ge=1)
    """Agent steps (env steps summed over the envs) to train for."""
    baseline: Literal["none", "mean", "value"] = "value"
    """none, a running mean of returns, or a learned state value V(s)."""
    batch_episodes: int = param(8, ge=1)
    """Finished episodes per gradient step."""
    mean_decay: float = param(0.9, ge=0, lt=1)
    """baseline = mean: weight of the old mean when a batch's mean return is mixed in."""
    normalize_advantages: bool = True
    """Divide G_t - b(s_t) by its standard deviation within each batch (a scale, not a baseline: the
    mean is kept, so baseline = none stays baseline-free)."""
    vf_coef: float = param(0.5, ge=0)
    """Weight of the value loss (baseline = value)."""
    ent_coef: float = param(0.0, ge=0)
    """Weight of the entropy bonus."""
    optimizer: Literal["adam", "rmsprop", "rmsprop-tf"] = "adam"
    """Optimizer of the policy (and value) network."""
    lr: float = param(1e-3, gt=0)
    """Learning rate."""
    optimizer_eps: float = param(1e-8, gt=0)
    """Optimizer epsilon."""
    max_grad_norm: float = param(0.5, ge=0)
    """Clip the gradient norm (0: no clipping)."""
    shared_backbone: bool = False
    """Policy and value share the trunk (false: V(s) has its own, as for small state-vector tasks)."""
    eval_greedy: bool = True
    """Evaluate with the most probable action (false: sample from the policy)."""
    checkpoint_every: int = param(50_000, ge=1)
    """Agent steps between checkpoints (rounded down to whole vector steps)."""

    def validate(self) -> None:
        super().validate()
        if self.batch_episodes > 10_000:
            raise ConfigError(f"ReinforceConfig.batch_episodes = {self.batch_episodes} is too large (at most 10,000)")


def advantages(returns: torch.Tensor, baseline: str, *, values: torch.Tensor | None = None,
               running_mean: float = 0.0) -> torch.Tensor:  # fmt: skip
    """G_t - b(s_t) for each step: b = 0 (``none``), the running mean (``mean``) or V(s_t) (``value``)."""
    if baseline == "none":
        return returns
    if baseline == "mean":
        return returns - running_mean
    if values is None:
        raise ValueError("baseline 'value' needs the values V(s_t)")
    return returns - values.detach()


def policy_loss(logits: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """-mean_t (adv_t * log pi(a_t | s_t)): its gradient is minus the REINFORCE estimate (per step)."""
    logp = F.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
    return -(adv.detach() * logp).mean()


class Episodes:
    """Per-env trajectories under way, and the finished episodes waiting for the next update."""

    def __init__(self, num_envs: int):
        self.live: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(num_envs)]
        self.done: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []  # obs, actions, rewards, bootstrap

    def add(self, i: int, obs: np.ndarray, action: int, reward: float) -> None:
        self.live[i].append((obs, action, reward))

    def end(self, i: int, bootstrap: float = 0.0) -> None:
        steps, self.live[i] = self.live[i], []
        if steps:
            obs, actions, rewards = zip(*steps, strict=True)
            self.done.append((np.stack(obs), np.array(actions), np.array(rewards, np.float32), bootstrap))

    def take(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
        done, self.done = self.done, []
        return done

    def state_dict(self) -> dict:
        """The episodes under way and those finished but not yet learned from, as arrays (an exact resume)."""
        def stacked(steps):
            if not steps:
                return None
            obs, actions, rewards = zip(*steps, strict=True)
            return {"obs": np.stack(obs), "actions": np.array(actions, np.int64), "rewards": np.array(rewards)}

        done = [{"obs": o, "actions": a, "rewards": r, "bootstrap": b} for o, a, r, b in self.done]
        return {"live": [stacked(steps) for steps in self.live], "done": done}

    def load_state_dict(self, state: dict) -> None:
        live = state["live"]
        if len(live) != len(self.live):
            raise ValueError(f"the checkpoint holds episodes of {len(live)} envs; this run has {len(self.live)}")
        self.live = [[] if s is None else [(o, int(a), float(r)) for o, a, r in zip(s["obs"], s["actions"],
                     s["rewards"], strict=True)] for s in live]  # fmt: skip
        self.done = [(d["obs"], d["actions"], d["rewards"], float(d["bootstrap"])) for d in state["done"]]


def train(cfg: ReinforceConfig, run: Run) -> dict:
    env = make_env(cfg, cfg.num_envs, cfg.seed)
    fast = FastPath.of(cfg, run.device)
    net = a2c.build(cfg, env).to(run.device)
    best = copy.deepcopy(net).requires_grad_(False)
    fast.prepare(net, dynamic=None)  # after the copy: best stays a plain module; batches of episodes vary in length
    optimizer = a2c.make_optimizer(cfg, net)
    gen = torch.Generator().manual_seed(cfg.seed)
    run.track(net=net, best=best, optimizer=optimizer, generator=gen)
    n, dev = cfg.num_envs, run.device
    episodes = Episodes(n)
    if hasattr(env, "state_dict"):  # CartPole, Catch: an exact resume plays on, its episodes under way included
        run.track_optional(env=env, episodes=episodes)
    evaluate = lambda m, offset: a2c.evaluate_policy(cfg, m, run.device, seed_offset=offset)  # noqa: E731
    run.restore()
    run.state.setdefault("running_mean", 0.0)
    run.state.setdefault("updates", 0)

    exact = run.restored("env") and run.restored("episodes")  # else a new run, or an Atari run playing new games
    obs = env.obs if exact else env.reset(seed=cfg.seed + run.step)
    iterations = cfg.total_steps // n
    start_time, start_steps = time.perf_counter(), run.step * n
    for it in run.loop(iterations, unit="agent steps", show="train/episodic_return", per_step=n):
        steps = it * n
        with torch.no_grad(), fast.autocast():
            logits, _, _ = net(torch.as_tensor(obs, device=dev)[:, None])
        actions = sample(logits[:, 0], False, gen).numpy()
        next_obs, reward, term, trunc, info = env.step(actions)
        learn_reward = np.sign(reward) if cfg.clip_rewards else reward
        # a reset, or FIRE pressed after a lost life, is not a transition of the agent's
        for i in np.flatnonzero(~(info["reset"] | info["fired"])):
            episodes.add(i, obs[i].copy(), int(actions[i]), float(learn_reward[i]))  # own copy: envs may reuse obs
        for i in np.flatnonzero(term | trunc):
            episodes.end(i, bootstrap=final_value(cfg, net, next_obs[i], fast) if trunc[i] and not term[i] else 0.0)
        obs = next_obs
        done = info["episodes"]
        if len(done.returns):
            run.log({"train/episodic_return": done.returns.mean(), "train/episode_length": done.lengths.mean()},
                    step=steps)  # fmt: skip
        if len(episodes.done) >= cfg.batch_episodes:
            out = update(cfg, net, optimizer, episodes.take(), run.state, dev, fast, skip=run.skip_step)
            if out is not None:  # (None: --on-nonfinite skip left a non-finite update out)
                run.state["updates"] += 1
                sps = (steps - start_steps) / max(time.perf_counter() - start_time, 1e-9)
                run.log({**{f"train/{k}": float(v) for k, v in out.items()}, "perf/sps": sps}, step=steps)
        if cfg.eval_episodes and crossed(steps, n, cfg.eval_every) and it < iterations:
            evaluation.keep_best(run, net, best, steps, evaluate)  # (the last one follows the loop)
    env.close()
    figures = finish_training(cfg, run, net, best, run.step * n, evaluate)
    return {**figures, "updates": run.state["updates"]}


def final_value(cfg: ReinforceConfig, net: ActorCritic, obs: np.ndarray, fast: FastPath) -> float:
    """V(s) of a truncated episode's final observation, or 0 without a learned value (read back to the host: the
    episode's returns are computed there, and a truncation is rare)."""
    if cfg.baseline != "value":
        return 0.0
    with torch.no_grad(), fast.autocast():
        _, value, _ = net(torch.as_tensor(obs, device=fast.device)[None, None])
    return float(value)


def batch_tensors(cfg: ReinforceConfig, batch, device: torch.device):
    """Concatenate finished episodes into (1, S) tensors: observations, actions and returns-to-go."""
    obs = torch.as_tensor(np.concatenate([e[0] for e in batch]), device=device)[None]
    actions = torch.as_tensor(np.concatenate([e[1] for e in batch]), device=device)[None]
    rewards = torch.as_tensor(np.concatenate([e[2] for e in batch]))[None]
    ends = torch.zeros_like(rewards, dtype=torch.bool)
    bootstrap = torch.zeros_like(rewards)
    ends_at = np.cumsum([len(e[1]) for e in batch]) - 1
    ends[0, ends_at] = True
    bootstrap[0, ends_at] = torch.tensor([e[3] for e in batch], dtype=torch.float32)
    returns = returns_to_go(rewards, ends, cfg.gamma, bootstrap).to(device)
    return obs, actions, returns


def update(cfg: ReinforceConfig, net: ActorCritic, optimizer, batch, state: dict, device: torch.device,
           fast: FastPath | None = None, skip=None) -> dict | None:  # fmt: skip
    """One gradient step on a batch of finished episodes (the forward under ``fast.autocast()``; logits and
    values come out in fp32)."""
    obs, actions, returns = batch_tensors(cfg, batch, device)
    with (fast or FastPath(device)).autocast():
        logits, values, _ = net(obs)
    adv = advantages(returns, cfg.baseline, values=values, running_mean=state["running_mean"])
    if cfg.normalize_advantages and adv.numel() > 1:
        adv = adv / (adv.std() + 1e-8)
    loss_pi = policy_loss(logits, actions, adv)
    logp_all = F.log_softmax(logits, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    loss = loss_pi - cfg.ent_coef * entropy
    out = {"policy_loss": loss_pi.detach(), "entropy": entropy.detach(), "batch_steps": returns.numel()}
    if cfg.baseline == "value":
        value_loss = F.mse_loss(values, returns)
        loss = loss + cfg.vf_coef * value_loss
        out["value_loss"] = value_loss.detach()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if skip is not None and skip(loss, net.parameters()):  # Run.skip_step: a NaN loss or gradient, left out
        optimizer.zero_grad(set_to_none=True)
        return None
    grad_norm = loop.clip_grads(net, cfg.max_grad_norm)
    optimizer.step()
    # the running mean moves after it was used, so each batch's baseline does not depend on its own returns;
    # the first batch's mean starts it (rather than a zero it would take ~20 batches to forget)
    mean = float(returns.mean())
    first = state.get("updates", 0) == 0
    state["running_mean"] = mean if first else cfg.mean_decay * state["running_mean"] + (1 - cfg.mean_decay) * mean
    if grad_norm is not None:
        out["grad_norm"] = grad_norm
    return out


register_task(ReinforceConfig, train, a2c.evaluate)
register_recipe("reinforce-cartpole", ReinforceConfig(),
                "REINFORCE with a learned value baseline on CartPole-v1: 475+ within 200k steps")  # fmt: skip
register_recipe(
    "reinforce-catch",
    ReinforceConfig(
        env="catch",
        backbone=catch_cnn(),
        num_envs=16,
        batch_episodes=32,
        total_steps=40_000,
        ent_coef=0.01,
        eval_episodes=100,
        eval_every=10_000,
    ),  # fmt: skip
    "REINFORCE with a learned baseline and a small CNN on the 10x5 Catch pixels",
)
