"""Advantage actor-critic (A2C), the synchronous form of Mnih et al., "Asynchronous Methods for Deep
Reinforcement Learning" (ICML 2016); the notes, chapter 14.6: an actor (the policy) pushed along
grad log pi(a|s) * A(s, a), and a critic V(s) that supplies the advantage A = Q - V.

Each update collects ``n_steps`` steps from ``num_envs`` envs, estimates advantages with GAE(lambda)
(lambda = 1: the n-step returns of the paper), and takes one gradient step on
policy loss + vf_coef * value loss - ent_coef * entropy. With ``--recurrent lstm`` (or ``gru``) a
RecurrentCore sits between the CNN and the heads; its state is carried across rollouts and reset
where an episode starts.

Rollouts live on the device but for what the host produces (rewards and flags from the envs, the
sampled actions, which the envs need on the CPU): those move over once per update, so a step copies
only its observations over and its action probabilities back. Forward passes run under ``amp``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from fovea.agents import evaluation, optim, watch
from fovea.agents.base import AgentConfig, build_trunk, catch_cnn, make_env, pixel_scale
from fovea.agents.evaluation import finish_training, load_network, play, return_figures
from fovea.agents.fastpath import FastPath, to_device
from fovea.agents.loop import Carry, clip_grads, crossed
from fovea.agents.policy import ActorCritic, PolicyActor, orthogonal_init, sample
from fovea.agents.returns import gae
from fovea.backbones.rnn import RecurrentCore
from fovea.config import BackboneSpec, param, register_recipe, register_task
from fovea.errors import ConfigError
from fovea.run import Run


@dataclass(kw_only=True)
class A2CConfig(AgentConfig):
    """A2C: defaults are SB3's A2C (RMSprop 7e-4, 5-step rollouts, vf 0.5, grad norm 0.5) on CartPole-v1."""

    num_envs: int = param(8, ge=1)
    """Environments stepped together; each rollout holds n_steps from each."""
    total_steps: int = param(200_000, ge=1)
    """Agent steps (env steps summed over the envs) to train for."""
    n_steps: int = param(5, ge=1)
    """Steps per env in each rollout: the n of the n-step returns."""
    gae_lambda: float = param(1.0, ge=0, le=1)
    """GAE lambda: 1 gives the n-step returns of A2C, 0.95 the usual GAE trade-off."""
    vf_coef: float = param(0.5, ge=0)
    """Weight of the value (critic) loss."""
    ent_coef: float = param(0.0, ge=0)
    """Weight of the entropy bonus."""
    normalize_advantages: bool = False
    """Standardise the advantages of each rollout."""
    optimizer: Literal["rmsprop", "rmsprop-tf", "adam"] = "rmsprop"
    """rmsprop (torch's: eps outside the root, the average from 0), rmsprop-tf (TensorFlow's, as RL Zoo's A2C via
    SB3's RMSpropTFLike: eps inside the root, the average from 1) or adam; agents/optim.py has the formulas."""
    lr: float = param(7e-4, gt=0)
    """Learning rate."""
    optimizer_eps: float = param(1e-5, gt=0)
    """Optimizer epsilon."""
    rmsprop_alpha: float = param(0.99, ge=0, lt=1)
    """RMSprop's decay of the squared-gradient average (0.99 in the paper and SB3)."""
    ortho_init: bool = True
    """Initialise the trunk orthogonally (gain sqrt 2, zero biases) and a recurrent core orthogonally (gain 1), as
    SB3 and CleanRL do for actor-critics; the heads always start at gains 0.01 (policy) and 1 (value)."""
    lr_decay: bool = False
    """Anneal the learning rate linearly to 0 over training."""
    max_grad_norm: float = param(0.5, ge=0)
    """Clip the gradient norm (0: no clipping)."""
    shared_backbone: bool = True
    """Actor and critic share the trunk; false gives the critic its own (SB3's MlpPolicy does so)."""
    recurrent: Literal["none", "lstm", "gru"] = "none"
    """A RecurrentCore (LSTM or GRU) between the trunk and the heads."""
    hidden_size: int = param(256, ge=1)
    """Size of the recurrent state."""
    eval_greedy: bool = True
    """Evaluate with the most probable action (false: sample from the policy, usual for Atari)."""

    def validate(self) -> None:
        super().validate()
        if self.recurrent != "none" and not self.shared_backbone:
            raise ConfigError("A2CConfig.recurrent needs shared_backbone = true (the core feeds both heads)")


def build(cfg: A2CConfig | AgentConfig, env) -> ActorCritic:
    shape = env.single_observation_space.shape
    ortho = getattr(cfg, "ortho_init", False)  # (REINFORCE keeps torch's initialisation)
    trunk = build_trunk(cfg, shape, init=orthogonal_init if ortho else None)
    shared = getattr(cfg, "shared_backbone", True)
    critic = None if shared else cfg.backbone.build(shape)
    recurrent = getattr(cfg, "recurrent", "none")
    core = None
    if recurrent != "none":
        core = RecurrentCore((trunk.out_features,), hidden_size=cfg.hidden_size, cell=recurrent)
    for part in (critic, core) if ortho else ():
        if part is not None:
            orthogonal_init(part, gain=1.0 if part is core else 2**0.5)
    return ActorCritic(trunk, env.num_actions, critic_trunk=critic, core=core, pixel_scale=pixel_scale(env))


def make_optimizer(cfg, net: ActorCritic) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]  # all but a frozen --backbone-from trunk
    alpha = getattr(cfg, "rmsprop_alpha", 0.99)
    return optim.make_optimizer(cfg.optimizer, params, lr=cfg.lr, eps=cfg.optimizer_eps, alpha=alpha)


class Rollout:
    """(N, T) buffers of one rollout, batch-first like the network's inputs: what the network produces on the
    device, what the envs produce (and the actions, sampled on the CPU for them) on the host."""

    def __init__(self, n: int, t: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype, device: torch.device,
                 num_actions: int):  # fmt: skip
        self.obs = torch.zeros((n, t, *obs_shape), dtype=obs_dtype, device=device)
        self.starts = torch.zeros((n, t), dtype=torch.bool, device=device)
        self.values = torch.zeros((n, t), device=device)
        self.logp = torch.zeros((n, t, num_actions), device=device)  # log pi(.|s) of the acting policy (PPO's ratio)
        self.actions = torch.zeros((n, t), dtype=torch.long)
        self.rewards = np.zeros((n, t), np.float32)
        self.terminated, self.ends, self.valid = (np.zeros((n, t), bool) for _ in range(3))


Learn = Callable[..., "dict | None"]  # update(cfg, net, optimizer, buf, last_value, state0, fast, skip=, progress=)


def train(cfg: A2CConfig, run: Run, learn: Learn | None = None) -> dict:
    """Train an actor-critic on rollouts of ``n_steps`` from ``num_envs`` envs, one ``learn`` call per rollout
    (``update``: A2C's single gradient step; PPO passes its epochs of minibatches). Returns the run's figures (the
    final network's score on fresh games, see ``evaluation.finish_training``)."""
    learn = learn or update
    env = make_env(cfg, cfg.num_envs, cfg.seed)
    fast = FastPath.of(cfg, run.device)
    net = build(cfg, env).to(run.device)
    best = copy.deepcopy(net).requires_grad_(False)
    fast.prepare(net)  # after the copy: best stays a plain module
    optimizer = make_optimizer(cfg, net)
    iterations = max(1, cfg.total_steps // (cfg.num_envs * cfg.n_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / iterations if cfg.lr_decay else 1.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    run.track(net=net, best=best, optimizer=optimizer, scheduler=sched, generator=gen)
    n, t_len, dev = cfg.num_envs, cfg.n_steps, run.device
    # starts: the observations that begin episodes; state: the recurrent state before them
    carry = Carry(starts=np.ones(n, bool), state=net.initial_state(n, dev))
    if hasattr(env, "state_dict"):  # CartPole, Catch: an exact resume plays on from the step it stopped at
        run.track_optional(env=env, carry=carry)
    evaluate = lambda m, offset: evaluate_policy(cfg, m, run.device, seed_offset=offset)  # noqa: E731
    run.restore()

    space = env.single_observation_space
    dtype = torch.uint8 if space.dtype == np.uint8 else torch.float32
    buf = Rollout(n, t_len, space.shape, dtype, dev, env.num_actions)
    if run.restored("env") and run.restored("carry"):
        obs, starts, state = env.obs, np.asarray(carry.values["starts"], bool), to_device(carry.values["state"], dev)
    else:  # a new run, or a resumed Atari run, which plays new games
        obs, starts, state = env.reset(seed=cfg.seed + run.step), np.ones(n, bool), net.initial_state(n, dev)
    width = n * t_len
    episodes: list = []  # (rollout step, finished games) of the current rollout
    start_time, start_steps = time.perf_counter(), run.step * width
    for it in run.loop(iterations, unit="agent steps", show="train/episodic_return", per_step=width):
        steps = it * width
        state0 = None if state is None else tuple(s.clone() for s in state)
        with fast.autocast():
            obs, starts, state, last_value = collect(cfg, env, net, buf, obs, starts, state, gen, episodes)
        carry.values.update(starts=starts, state=state)
        for t, done in episodes:
            run.log({"train/episodic_return": done.returns.mean(), "train/episode_length": done.lengths.mean()},
                    step=steps - width + (t + 1) * n)  # fmt: skip
        episodes.clear()
        progress = (it - 1) / iterations  # the fraction of training done before this update
        out = learn(cfg, net, optimizer, buf, last_value, state0, fast, skip=run.skip_step, progress=progress)
        sched.step()
        if out is not None and (it % 20 == 0 or it == iterations):
            sps = (steps - start_steps) / (time.perf_counter() - start_time)
            run.log({**{f"train/{k}": float(v) for k, v in out.items()}, "perf/sps": sps,
                     "train/lr": sched.get_last_lr()[0]}, step=steps)  # fmt: skip
        if cfg.eval_episodes and crossed(steps, width, cfg.eval_every) and it < iterations:
            evaluation.keep_best(run, net, best, steps, evaluate)  # (the last one follows the loop)
    env.close()
    return finish_training(cfg, run, net, best, run.step * width, evaluate)


@torch.no_grad()
def collect(cfg: A2CConfig, env, net: ActorCritic, buf: Rollout, obs: np.ndarray, starts: np.ndarray, state, gen,
            episodes: list):  # fmt: skip
    """Fill ``buf`` with ``n_steps`` steps of every env, sampling actions from the policy.

    ``starts`` marks the observations that begin an episode; ``state`` is the recurrent state before
    ``obs``. Returns the observation, starts and state that follow the rollout, and V(obs) to bootstrap
    from; the games that ended are appended to ``episodes`` with their rollout step.
    """
    dev = buf.values.device
    for t in range(cfg.n_steps):
        o, s = torch.as_tensor(obs, device=dev), torch.as_tensor(starts, device=dev)
        buf.obs[:, t], buf.starts[:, t] = o, s
        logits, value, state = net(o[:, None], state, s[:, None])
        actions = sample(logits[:, 0], False, gen)
        obs, reward, term, trunc, info = env.step(actions.numpy())
        buf.actions[:, t], buf.values[:, t], buf.logp[:, t] = actions, value[:, 0], F.log_softmax(logits[:, 0], -1)
        buf.rewards[:, t] = np.sign(reward) if cfg.clip_rewards else reward
        buf.terminated[:, t], buf.ends[:, t], buf.valid[:, t] = term, term | trunc, ~(info["reset"] | info["fired"])
        # The state restarts with each game (not at a lost life, as in evaluation); a truncated game's final
        # obs still reads the old state, for its bootstrap value.
        starts = (term & info["game_over"]) | info["reset"]
        if len(info["episodes"].returns):
            episodes.append((t, info["episodes"]))
    _, last_value, _ = net(
        torch.as_tensor(obs, device=dev)[:, None], state, torch.as_tensor(starts, device=dev)[:, None]
    )
    return obs, starts, state, last_value[:, 0]


@dataclass(frozen=True)
class Transitions:
    """A rollout's learning targets, flattened env-major to (N*T,) like ``buf.obs.flatten(0, 1)``; ``keep`` indexes
    the steps that are transitions (not a reset, not FIRE pressed for the agent)."""

    keep: torch.Tensor  # (K,) int64
    actions: torch.Tensor  # (N*T,) int64
    advantages: torch.Tensor  # (N*T,) GAE(lambda) from the values seen while acting
    returns: torch.Tensor  # (N*T,) advantages + values: the critic's targets


def transitions(cfg: A2CConfig, buf: Rollout, last_value: torch.Tensor) -> Transitions:
    """GAE advantages and returns of ``buf`` (bootstrapping from ``last_value``) on the device. No host sync."""
    dev = buf.values.device
    # the host's part of the rollout goes over first, before any work is queued on the device
    rewards, actions = torch.as_tensor(buf.rewards, device=dev), buf.actions.to(dev)
    terminated, ends = torch.as_tensor(buf.terminated, device=dev), torch.as_tensor(buf.ends, device=dev)
    # the transitions as indices into the flattened (N*T) rollout: the host knows which they are, so selecting them
    # needs no device-to-host read (a boolean mask would, for the size of the result)
    keep = torch.as_tensor(np.flatnonzero(buf.valid.reshape(-1)), device=dev)
    next_values = torch.cat([buf.values[:, 1:], last_value[:, None]], dim=1)
    adv = gae(rewards, buf.values, next_values, terminated, ends, cfg.gamma, cfg.gae_lambda)
    return Transitions(keep, actions.reshape(-1), adv.reshape(-1), (adv + buf.values).reshape(-1))


def update(cfg: A2CConfig, net: ActorCritic, optimizer, buf: Rollout, last_value: torch.Tensor, state0,
           fast: FastPath | None = None, skip=None, progress: float = 0.0) -> dict | None:  # fmt: skip
    """One gradient step on a rollout: advantages from the values seen while acting, losses from a fresh forward
    (under ``fast.autocast()``; logits and values come out in fp32, so the losses are fp32). No host sync.
    (``progress``, the fraction of training done, is for learners with schedules of their own, as PPO's clip.)"""
    if not buf.valid.any():  # only reset steps (e.g. one env, one step per rollout): nothing to learn from
        return None
    fast = fast or FastPath(buf.values.device)
    t = transitions(cfg, buf, last_value)
    keep, actions, adv, returns = t.keep, t.actions[t.keep], t.advantages[t.keep], t.returns[t.keep]
    if cfg.normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    with fast.autocast():
        logits, values, _ = net(buf.obs, state0, buf.starts)
    logp_all = F.log_softmax(logits.reshape(-1, logits.shape[-1])[keep], -1)
    logp = logp_all.gather(1, actions[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    policy_loss = -(adv * logp).mean()
    value_loss = F.mse_loss(values.reshape(-1)[keep], returns)
    loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if skip is not None and skip(loss, net.parameters()):  # Run.skip_step: a NaN loss or gradient, left out
        optimizer.zero_grad(set_to_none=True)
        return None
    grad_norm = clip_grads(net, cfg.max_grad_norm)
    optimizer.step()
    out = {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(), "entropy": entropy.detach()}
    if grad_norm is not None:
        out["grad_norm"] = grad_norm
    return out


def evaluate_policy(cfg: A2CConfig, net: ActorCritic, device: torch.device, episodes: int | None = None, *,
                    seed_offset: int = evaluation.SCORE) -> dict:  # fmt: skip
    """Mean and spread of full-episode (unclipped) returns of the policy (greedy when ``eval_greedy``), on the games
    of ``cfg.seed + seed_offset`` (``evaluation.SELECTION``: the games that pick the best network; ``SCORE``: fresh)."""
    seed = cfg.seed + seed_offset
    actor = PolicyActor(net, device, greedy=cfg.eval_greedy, generator=torch.Generator().manual_seed(seed))
    was_training = net.training
    net.eval()
    try:
        returns = play(cfg, actor, episodes or cfg.eval_episodes or 10, seed=seed)
    finally:
        net.train(was_training)
    return return_figures(returns)


def evaluate(cfg: A2CConfig, run: Run, *, episodes: int | None = None, network: str = "final", video: bool = False,
             saliency: bool = False, step: int | None = None) -> dict:  # fmt: skip
    """Score the ``final`` (default) or ``best`` policy of training, or that of the checkpoint at agent ``step``,
    on ``episodes`` fresh full games (seeds no training game or selection evaluation used), and with ``video`` /
    ``saliency`` record one more to MP4 (saliency of the chosen action's logit). Returns the figures:
    ``eval/mean_return`` and its spread, the network (``checkpoint`` with ``step``) and the agent steps it was
    trained for."""
    net = load_network(cfg, run, build, network, key="net", step=step)
    final_steps = run.step * cfg.num_envs * getattr(cfg, "n_steps", 1)
    trained = evaluation.best_record(run).at if network == "best" else final_steps
    figures = {"network": network if step is None else "checkpoint", "trained_steps": trained,
               **evaluate_policy(cfg, net, run.device, episodes)}  # fmt: skip
    if video or saliency:
        actor = PolicyActor(net, run.device, greedy=cfg.eval_greedy,
                            generator=torch.Generator().manual_seed(cfg.seed + evaluation.VIDEO))  # fmt: skip
        before: list = [None]  # the recurrent state before the latest action

        def policy(obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
            before[0] = None if actor.state is None else tuple(s.clone() for s in actor.state)
            return actor(obs, starts)

        def score(x: torch.Tensor, starts: torch.Tensor, action: int) -> torch.Tensor:
            logits, _, _ = net(x[None, None], before[0], starts[None])
            return logits[0, 0, action]

        figures.update(watch.record(cfg, run, policy, score=score if saliency else None, step=trained or 0))
    return figures


register_task(A2CConfig, train, evaluate)
register_recipe("a2c-cartpole", A2CConfig(shared_backbone=False, eval_every=10_000),
                "A2C on CartPole-v1 (8 envs, 5-step returns, RMSprop): 475+ within 200k steps")  # fmt: skip
register_recipe(
    "a2c-catch",
    A2CConfig(
        env="catch",
        backbone=catch_cnn(),
        num_envs=16,
        total_steps=40_000,
        ent_coef=0.01,
        eval_episodes=100,
        eval_every=10_000,
        checkpoint_every=16_000,
    ),  # fmt: skip
    "A2C with a small CNN on the 10x5 Catch pixels",
)
# RL Zoo's A2C on Atari (after Mnih et al. 2016): 16 envs, 5 steps, RMSprop 7e-4 with eps 1e-5, entropy 0.01, value
# 0.25, clipped rewards, orthogonal initialisation, 10M steps, the NoFrameskip-v4 envs (no sticky actions); evaluation
# samples from the policy. One difference: RL Zoo uses TensorFlow's RMSprop form (--optimizer rmsprop-tf), these
# recipes torch's, which learned far faster on seeds 1-3 (final networks at 2M steps on 30 fresh games: Breakout
# 281.2, 268.9, 47.7 (201.6 at 1.6M) vs 2.9, 3.4, 3.3; Pong 17.3, -8.2, 10.3 vs -20.0, -20.1, -20.2; docs/recipes.md).
_ATARI = dict(backbone=BackboneSpec(name="nature-cnn"), num_envs=16, total_steps=10_000_000, ent_coef=0.01,
              vf_coef=0.25, clip_rewards=True, sticky=0.0, eval_greedy=False, eval_episodes=30, eval_every=500_000,
              checkpoint_every=400_000)  # fmt: skip
for _game in ("pong", "breakout"):
    register_recipe(f"a2c-{_game}", A2CConfig(env=_game, **_ATARI),
                    f"A2C on Atari {_game.capitalize()} with RL Zoo's settings but torch's RMSprop (16 envs, no "
                    "sticky actions, 10M steps)")  # fmt: skip
    register_recipe(f"a2c-lstm-{_game}", A2CConfig(env=_game, recurrent="lstm", hidden_size=256, **_ATARI),
                    f"Recurrent A2C (Nature CNN + LSTM 256) on Atari {_game.capitalize()}")  # fmt: skip
