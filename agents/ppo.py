"""Proximal policy optimisation (PPO): Schulman et al., "Proximal Policy Optimization Algorithms" (2017).

The actor-critic of A2C (the notes, chapter 14.6) learns more from each rollout: ``n_epochs`` passes over it in
``num_minibatches`` shuffled minibatches, each a step on the clipped surrogate

    L = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] + vf_coef * (V - R)^2 - ent_coef * H[pi],   r = pi(a|s) / pi_old(a|s),

which stops rewarding a move of the policy once the probability ratio ``r`` leaves [1 - eps, 1 + eps]. Everything
else is A2C's: rollouts of ``n_steps`` on vector envs (``a2c.collect``), GAE, the shared ``ActorCritic`` with an
optional recurrent core (minibatches then split the envs, so each keeps its whole sequence and starting state), the
run loop and exact resume. The loss is SB3's, term for term (tests/test_ppo.py checks it against SB3's PPO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from fovea.agents import a2c
from fovea.agents.a2c import A2CConfig, Rollout, transitions
from fovea.agents.base import catch_cnn
from fovea.agents.fastpath import FastPath
from fovea.agents.loop import clip_grads
from fovea.agents.policy import ActorCritic
from fovea.config import BackboneSpec, param, register_recipe, register_task
from fovea.errors import ConfigError
from fovea.run import Run


@dataclass(kw_only=True)
class PPOConfig(A2CConfig):
    """PPO: defaults are RL Zoo's tuned CartPole-v1 settings (500 within 100k steps)."""

    total_steps: int = param(100_000, ge=1)
    """Agent steps (env steps summed over the envs) to train for."""
    n_steps: int = param(32, ge=1)
    """Steps per env in each rollout."""
    gamma: float = param(0.98, ge=0, le=1)
    """Discount factor."""
    gae_lambda: float = param(0.8, ge=0, le=1)
    """GAE lambda."""
    n_epochs: int = param(20, ge=1)
    """Passes over each rollout."""
    num_minibatches: int = param(1, ge=1)
    """Minibatches per pass (a recurrent policy splits the envs, so at most num_envs)."""
    clip_range: float = param(0.2, gt=0)
    """eps of the clipped surrogate: how far the probability ratio may move before the gain stops counting."""
    clip_decay: bool = True
    """Anneal the clip range linearly to 0 over training (RL Zoo's lin_0.2)."""
    clip_range_vf: float = param(0.0, ge=0)
    """Clip the new value within this distance of the value seen while acting (0: no value clipping)."""
    target_kl: float = param(0.0, ge=0)
    """Stop a rollout's epochs once a minibatch's approximate KL exceeds 1.5 x this, as SB3 (0: never); reads the
    KL back to the host each minibatch."""
    normalize_advantages: bool = True
    """Standardise the advantages of each minibatch."""
    ent_coef: float = param(0.0, ge=0)
    """Weight of the entropy bonus."""
    vf_coef: float = param(0.5, ge=0)
    """Weight of the value loss."""
    optimizer: Literal["rmsprop", "rmsprop-tf", "adam"] = "adam"
    """adam (PPO's), rmsprop (torch's) or rmsprop-tf (TensorFlow's); agents/optim.py has the formulas."""
    lr: float = param(1e-3, gt=0)
    """Learning rate."""
    lr_decay: bool = True
    """Anneal the learning rate linearly to 0 over training."""
    shared_backbone: bool = False
    """Actor and critic share the trunk (false: the critic has its own, as SB3's MlpPolicy)."""

    def validate(self) -> None:
        super().validate()
        if self.recurrent != "none" and self.num_minibatches > self.num_envs:
            raise ConfigError(f"PPOConfig.num_minibatches = {self.num_minibatches} is more than num_envs = "
                              f"{self.num_envs}: a recurrent policy's minibatches split the envs")  # fmt: skip
        if self.num_minibatches > self.num_envs * self.n_steps:
            raise ConfigError(f"PPOConfig.num_minibatches = {self.num_minibatches} is more than a rollout's "
                              f"{self.num_envs * self.n_steps} steps")  # fmt: skip


def ppo_loss(logits: torch.Tensor, values: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor,
             old_values: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor, *, clip: float,
             clip_vf: float = 0.0, vf_coef: float = 0.5, ent_coef: float = 0.0,
             normalize: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
    """The clipped-surrogate loss of a minibatch of B transitions: ``logits`` (B, A) and ``values`` (B,) from the
    current network, the rest (B,) from the rollout. Returns ``loss`` and its terms, the approximate KL
    (E[(r - 1) - log r], Schulman's unbiased estimator) and the fraction of clipped ratios."""
    if normalize and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    logp_all = F.log_softmax(logits, -1)  # (B, A)
    log_ratio = logp_all.gather(1, actions[:, None]).squeeze(1) - old_logp
    ratio = log_ratio.exp()
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
    if clip_vf > 0:  # SB3's value clipping: the new value stays within clip_vf of the one seen while acting
        values = old_values + (values - old_values).clamp(-clip_vf, clip_vf)
    value_loss = F.mse_loss(values, returns)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    return {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
            "approx_kl": approx_kl, "clip_fraction": clip_fraction}  # fmt: skip


def update(cfg: PPOConfig, net: ActorCritic, optimizer, buf: Rollout, last_value: torch.Tensor, state0,
           fast: FastPath | None = None, skip=None, progress: float = 0.0) -> dict | None:  # fmt: skip
    """``n_epochs`` passes over the rollout in shuffled minibatches, a clipped-surrogate step each; ``progress``
    (the fraction of training done) anneals the clip range. Returns the minibatches' mean figures as tensors (no
    host sync unless ``target_kl``), or None when nothing was learned."""
    if not buf.valid.any():  # only reset steps: nothing to learn from
        return None
    dev = buf.values.device
    fast = fast or FastPath(dev)
    t = transitions(cfg, buf, last_value)
    old_logp = buf.logp.flatten(0, 1).gather(1, t.actions[:, None]).squeeze(1)  # (N*T,)
    old_values = buf.values.reshape(-1)
    clip = cfg.clip_range * (1.0 - progress if cfg.clip_decay else 1.0)
    valid = torch.as_tensor(buf.valid)  # (N, T) on the host: which steps are transitions
    figures: list[dict] = []
    for _ in range(cfg.n_epochs):
        for rows, idx, own in _minibatches(cfg, valid, dev):
            with fast.autocast():
                if rows is None:  # independent steps: each a sequence of one
                    logits, values, _ = net(buf.obs.flatten(0, 1)[idx][:, None])
                else:  # whole sequences of the envs in ``rows`` from their state at the rollout's start
                    logits, values, _ = net(buf.obs[rows], tuple(s[:, rows] for s in state0), buf.starts[rows])
            logits, values = logits.flatten(0, 1), values.flatten(0, 1)  # (B, A), (B,)
            if own is not None:  # the transitions among the envs' steps
                logits, values = logits[own], values[own]
            out = ppo_loss(logits, values, t.actions[idx], old_logp[idx],
                           old_values[idx], t.advantages[idx], t.returns[idx], clip=clip, clip_vf=cfg.clip_range_vf,
                           vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef, normalize=cfg.normalize_advantages)  # fmt: skip
            if cfg.target_kl and float(out["approx_kl"]) > 1.5 * cfg.target_kl:  # SB3: stop before this step
                return _mean(figures, clip, stopped=True)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if skip is not None and skip(out["loss"], net.parameters()):  # Run.skip_step: a NaN, left out
                optimizer.zero_grad(set_to_none=True)
                continue
            grad_norm = clip_grads(net, cfg.max_grad_norm)
            optimizer.step()
            if grad_norm is not None:
                out["grad_norm"] = grad_norm
            figures.append({k: v.detach() for k, v in out.items()})
    return _mean(figures, clip, stopped=False)


def _minibatches(cfg: PPOConfig, valid: torch.Tensor, dev: torch.device):
    """(rows, idx, own) per minibatch, drawn on the host from the global RNG (which checkpoints keep): ``idx``
    indexes the flattened rollout's transitions in it. A feed-forward policy shuffles all steps (rows and own are
    None); a recurrent one takes whole envs ``rows``, and ``own`` picks the transitions among their R*T steps."""
    n, t_len = valid.shape
    if cfg.recurrent == "none":
        keep = valid.reshape(-1).nonzero().squeeze(1)
        for idx in keep[torch.randperm(len(keep))].tensor_split(cfg.num_minibatches):
            if len(idx):
                yield None, idx.to(dev), None
        return
    for rows in torch.randperm(n).tensor_split(cfg.num_minibatches):
        own = valid[rows].reshape(-1).nonzero().squeeze(1)  # (K,) within the R*T steps of these envs
        idx = (rows[:, None] * t_len + torch.arange(t_len)).reshape(-1)[own]  # (K,) in the whole rollout
        if len(idx):
            yield rows.to(dev), idx.to(dev), own.to(dev)


def _mean(figures: list[dict], clip: float, stopped: bool) -> dict | None:
    if not figures:
        return None
    out = {k: torch.stack([f[k] for f in figures]).mean() for k in figures[0] if k != "loss"}
    out.update(clip_range=torch.tensor(clip), minibatches=torch.tensor(float(len(figures))),
               early_stop=torch.tensor(float(stopped)))  # fmt: skip
    return out


def train(cfg: PPOConfig, run: Run) -> dict:
    """Train PPO: A2C's rollouts and run loop with PPO's ``update``. Returns the run's figures (the final network's
    score on fresh games, see ``evaluation.finish_training``)."""
    return a2c.train(cfg, run, learn=update)


register_task(PPOConfig, train, a2c.evaluate)
register_recipe("ppo-cartpole", PPOConfig(), "PPO on CartPole-v1 with RL Zoo's tuned settings: 500 within 100k steps")
register_recipe(
    "ppo-catch",
    PPOConfig(env="catch", backbone=catch_cnn(), num_envs=16, n_steps=16, n_epochs=4, num_minibatches=4,
              total_steps=40_000, gamma=0.99, gae_lambda=0.95, ent_coef=0.01, lr=1e-3, shared_backbone=True,
              eval_episodes=100, eval_every=10_000, checkpoint_every=50_000),  # fmt: skip
    "PPO with a small CNN on the 10x5 Catch pixels",
)
# CleanRL's ppo_atari.py (and RL Zoo's PPO on Atari): 8 envs x 128 steps, 4 epochs of 4 minibatches, clip 0.1, Adam
# 2.5e-4 (eps 1e-5) annealed to 0, entropy 0.01, value 0.5, GAE 0.95, gradient norm 0.5, orthogonal initialisation,
# clipped rewards, the NoFrameskip-v4 envs (no sticky actions), 10M steps. The LSTM variant follows ppo_atari_lstm.py.
_ATARI = dict(backbone=BackboneSpec(name="nature-cnn"), num_envs=8, n_steps=128, n_epochs=4, num_minibatches=4,
              total_steps=10_000_000, gamma=0.99, gae_lambda=0.95, clip_range=0.1, clip_decay=False, ent_coef=0.01,
              lr=2.5e-4, shared_backbone=True, clip_rewards=True, sticky=0.0, eval_greedy=False, eval_episodes=30,
              eval_every=500_000, checkpoint_every=500_000)  # fmt: skip
for _game in ("pong", "breakout"):
    register_recipe(f"ppo-{_game}", PPOConfig(env=_game, **_ATARI),
                    f"PPO on Atari {_game.capitalize()} with CleanRL's ppo_atari settings (8 envs x 128 steps, "
                    "no sticky actions, 10M steps)")  # fmt: skip
    register_recipe(f"ppo-lstm-{_game}", PPOConfig(env=_game, recurrent="lstm", hidden_size=128, **_ATARI),
                    f"Recurrent PPO (Nature CNN + LSTM 128) on Atari {_game.capitalize()}, after CleanRL's "
                    "ppo_atari_lstm")  # fmt: skip
