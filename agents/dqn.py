"""DQN with experience replay.

Mnih et al., "Human-level control through deep reinforcement learning", Nature 518 (2015); with the
options of double DQN (van Hasselt et al., AAAI 2016), the dueling head (Wang et al., ICML 2016) and
Polyak-averaged targets. The notes, chapter 14.4: a Q-network trained towards the Bellman target
r + gamma * max_a' Q_target(s', a') on random minibatches from a replay memory. The data-efficient family of the
Atari 100k benchmark is the same agent with more options (``DQNConfig``): n-step returns and prioritised replay
(in ``FrameReplay``), a replay ratio of one update per agent step, DrQ's random shifts of the observations
(``agents/augment.py``), and Dopamine's schedules; the recipes, with their sources, are in ``dqn_recipes.py``.

The network is a registered backbone plus a linear (or dueling) head over the actions. The loop
steps ``num_envs`` envs at once with batched epsilon-greedy actions, stores each transition in
``FrameReplay``, and runs ``gradient_steps`` updates every ``train_every`` agent steps (the replay
ratio). No bootstrap past a termination; a time-limit truncation bootstraps.

On CUDA the update reads nothing back to the host: the replay samples on the device and masks the
rare draw it could not redraw into a transition, the TD loss is a mean over the kept ones, and the
forward passes run under bf16 autocast (the heads, the TD target and the loss in fp32). With
``async_env`` the next env step runs in ale-py's C++ threads while the update runs.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fovea.agents import augment, evaluation, watch
from fovea.agents.base import build_trunk, make_env, pixel_scale
from fovea.agents.dqn_config import DQNConfig
from fovea.agents.evaluation import finish_training, load_network, play, return_figures
from fovea.agents.fastpath import EnvStepper, FastPath, full_precision, learning_layout
from fovea.agents.loop import Carry, clip_grads, crossed
from fovea.agents.optim import make_optimizer
from fovea.agents.replay import Batch, FrameReplay
from fovea.config import register_task
from fovea.run import Run

__all__ = ["DQNConfig", "QNetwork", "build", "evaluate", "masked_mean", "td_loss", "td_target", "train", "update"]


class QNetwork(nn.Module):
    """``backbone`` -> Q-values over ``num_actions``; with ``dueling``, V(s) + A(s, a) - mean_a A(s, a).

    Args:
        backbone: any backbone exposing ``out_features``.
        num_actions: size of the discrete action space.
        dueling: use the dueling head of Wang et al. (2016).
        pixel_scale: divide inputs by this (255 for uint8 frames, 1 for state vectors).
    """

    def __init__(self, backbone: nn.Module, num_actions: int, dueling: bool = False, pixel_scale: float = 1.0):
        super().__init__()
        self.backbone, self.dueling, self.pixel_scale = backbone, dueling, pixel_scale
        f = backbone.out_features
        self.head = nn.Linear(f, num_actions)
        self.value = nn.Linear(f, 1) if dueling else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.backbone(learning_layout(obs.float() / self.pixel_scale))  # (B, F), bf16 under autocast
        with full_precision(h):  # the head in fp32: its Q-values feed argmax and the TD target
            h = h.float()
            q = self.head(h)  # (B, A)
            if self.value is not None:
                q = self.value(h) + q - q.mean(1, keepdim=True)
        return q

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
        """Epsilon-greedy actions (B,) on the CPU for a batch of observations, chosen together; no forward
        pass when every env explores. The draws come from a CPU ``generator``, so checking them reads host
        memory (no device sync); the one device-to-host copy is the greedy actions the envs need."""
        n = obs.shape[0]
        explore = torch.rand(n, generator=generator) < epsilon
        random = torch.randint(0, self.head.out_features, (n,), generator=generator)
        if bool(explore.all()):
            return random
        return torch.where(explore, random, self(obs).argmax(1).cpu())


def td_loss(q: torch.Tensor, y: torch.Tensor, kind: str, mask: torch.Tensor | None = None,
            weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Huber (``kind = "huber"``) or squared TD error, averaged over the batch, or with ``mask`` over the
    transitions it keeps (the others weigh nothing, whatever their values); each error times its importance weight
    when ``weights`` are given (prioritised replay); no host sync either way."""
    fn = F.smooth_l1_loss if kind == "huber" else F.mse_loss
    if mask is None and weights is None:
        return fn(q, y)
    if mask is not None:
        y = torch.where(mask, y, q.detach())  # a left-out error is exactly 0, with a 0 gradient, even from a NaN
    if weights is None:
        return fn(q, y, reduction="sum") / mask.sum().clamp_min(1)
    errors = fn(q, y, reduction="none") * weights
    return errors.sum() / (mask.sum().clamp_min(1) if mask is not None else q.shape[0])


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (all of it for None); 0 for an empty mask."""
    if mask is None:
        return x.mean()
    return torch.where(mask, x, 0).sum() / mask.sum().clamp_min(1)


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q_target: torch.Tensor,
              next_q_online: torch.Tensor | None, gamma: float | torch.Tensor) -> torch.Tensor:  # fmt: skip
    """r + gamma * (1 - terminated) * Q_target(s', a*), a* = argmax Q_target (DQN) or argmax Q_online (double);
    for n-step returns ``rewards`` are the discounted sums and ``gamma`` the (B,) gamma^m of each."""
    a_star = (next_q_online if next_q_online is not None else next_q_target).argmax(1, keepdim=True)
    return rewards + gamma * (1.0 - terminated) * next_q_target.gather(1, a_star).squeeze(1)


def build(cfg: DQNConfig, env) -> QNetwork:
    trunk = build_trunk(cfg, env.single_observation_space.shape)
    return QNetwork(trunk, env.num_actions, cfg.dueling, pixel_scale(env))


def train(cfg: DQNConfig, run: Run) -> dict:
    env = make_env(cfg, cfg.num_envs, cfg.seed)
    fast = FastPath.of(cfg, run.device)
    qnet = build(cfg, env).to(run.device)
    target = copy.deepcopy(qnet).requires_grad_(False)
    best = copy.deepcopy(qnet).requires_grad_(False)  # the network of the best evaluation so far
    for net in (qnet, target):  # after the copies: best stays a plain module
        fast.prepare(net)
    trainable = [p for p in qnet.parameters() if p.requires_grad]  # all but a frozen --backbone-from trunk
    optimizer = make_optimizer(cfg.optimizer, trainable, lr=cfg.lr, eps=cfg.optimizer_eps, alpha=cfg.rmsprop_alpha)
    space = env.single_observation_space
    stack = getattr(env, "frame_stack", 1)
    frame_shape = space.shape[1:] if stack > 1 else space.shape
    dtype = torch.uint8 if space.dtype == np.uint8 else torch.float32
    replay = FrameReplay(cfg.buffer_size, cfg.num_envs, frame_shape, stack=stack, dtype=dtype, device=run.device,
                         sync_free=fast.sync_free, n_step=cfg.n_step, gamma=cfg.gamma, prioritized=cfg.prioritized,
                         alpha=cfg.priority_alpha)  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed)  # acting, and sampling on the CPU
    run.track(qnet=qnet, target=target, best=best, optimizer=optimizer, generator=gen)
    sample_gen = gen
    if replay.sync_free:  # the replay draws on the device, from a generator there
        sample_gen = torch.Generator(device=run.device).manual_seed(cfg.seed + 1)
        run.track(sample_generator=sample_gen)
    evaluate = lambda net, offset: evaluate_policy(cfg, net, run.device, seed_offset=offset)  # noqa: E731
    if cfg.save_replay:
        run.track(replay=replay)
    carry = Carry(pending=None)  # (actions, epsilon) of a step sent to the envs ahead of the next iteration
    if hasattr(env, "state_dict"):  # CartPole, Catch: the envs play on from the step they stopped at
        run.track_optional(env=env, carry=carry)
    run.restore()

    overlap = cfg.overlaps_env(run.device)
    envs = EnvStepper(env, overlap)

    def act(obs: np.ndarray, steps: int) -> tuple[np.ndarray, float]:
        """Send the envs the actions for ``obs``, the observations before agent step ``steps``."""
        epsilon = cfg.epsilon(steps) if steps > cfg.learning_starts else 1.0  # uniform actions until learning starts
        with fast.autocast():
            actions = qnet.act(torch.as_tensor(obs, device=run.device), epsilon, gen).numpy()
        envs.send(actions)
        return actions, epsilon

    # An exact resume (the envs' state and the replay came back) goes on mid-episode; otherwise (Atari, or no
    # --save-replay) the replay starts a new stream, and Atari plays new games.
    obs = env.obs if run.restored("env") else env.reset(seed=cfg.seed + run.step)
    if not (run.restored("env") and run.restored("replay")):
        replay.start(obs)
    iterations = cfg.total_steps // cfg.num_envs
    start_time, start_steps, updates = time.perf_counter(), run.step * cfg.num_envs, run.state.get("updates", 0)
    pending = None  # (actions, epsilon) of a step sent to the envs ahead of this iteration (overlap)
    if overlap and run.restored("carry") and carry.values["pending"] is not None:  # sent before the stop
        actions, epsilon = carry.values["pending"]
        pending = (np.asarray(actions), float(epsilon))
        envs.send(pending[0])
    for it in run.loop(iterations, unit="agent steps", show="train/episodic_return", per_step=cfg.num_envs):
        steps = it * cfg.num_envs  # agent steps after this iteration
        actions, epsilon = pending or act(obs, steps)
        next_obs, reward, term, trunc, info = envs.recv()
        learn_reward = np.sign(reward) if cfg.clip_rewards else reward
        played = np.where(info["fired"], getattr(env, "fire_action", 0), actions)  # FIRE after a lost life
        replay.add(played, learn_reward, term, next_obs, info["reset"])
        obs = next_obs
        done = info["episodes"]
        if len(done.returns):
            episode = {"train/episodic_return": done.returns.mean(), "train/episode_length": done.lengths.mean()}
            run.log({**episode, "train/epsilon": epsilon}, step=steps)
        # overlap: the next step runs in the envs while this one's updates run (they do not need it)
        pending = act(obs, steps + cfg.num_envs) if overlap and it < iterations else None
        carry.values["pending"] = pending  # (read only when a checkpoint is written)
        if steps < cfg.learning_starts or len(replay) < cfg.batch_size:
            continue
        phases = steps // cfg.train_every - (steps - cfg.num_envs) // cfg.train_every
        for _ in range(phases * cfg.gradient_steps):
            out = update(cfg, qnet, target, optimizer, replay, sample_gen, fast, skip=run.skip_step, steps=steps)
            updates += 1
            run.state["updates"] = updates
            if out is not None and updates % 100 == 0:
                sps = (steps - start_steps) / (time.perf_counter() - start_time)
                run.log({"train/loss": out["loss"], "train/q_values": out["q"], "perf/sps": sps}, step=steps)
        if crossed(steps, cfg.num_envs, cfg.target_update_every):
            update_target(qnet, target, cfg.tau)
        if cfg.eval_episodes and crossed(steps, cfg.num_envs, cfg.eval_every) and it < iterations:
            evaluation.keep_best(run, qnet, best, steps, evaluate)  # (the last one follows the loop)
    env.close()
    return finish_training(cfg, run, qnet, best, run.step * cfg.num_envs, evaluate)


def augmented(cfg: DQNConfig, b: Batch, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's observations and next observations, each image shifted by its own draw (and its intensity
    scaled) when ``cfg.augment`` asks, as Dopamine's DrQ does for both (two independent draws)."""
    obs, next_obs = b.obs, b.next_obs
    if cfg.augment == "none":
        return obs, next_obs
    obs, next_obs = augment.random_shift(obs, 4, gen), augment.random_shift(next_obs, 4, gen)
    if cfg.augment == "shift-intensity":
        obs, next_obs = augment.intensity(obs, generator=gen), augment.intensity(next_obs, generator=gen)
    return obs, next_obs


def update(cfg: DQNConfig, qnet: QNetwork, target: QNetwork, optimizer, replay: FrameReplay, gen,
           fast: FastPath | None = None, skip=None, steps: int = 0) -> dict | None:  # fmt: skip
    """One gradient step on a sampled minibatch; returns the loss and mean Q(s, a) as tensors (no host sync
    on CUDA, where the replay samples on the device). The forward passes run under ``fast.autocast()``; the
    Q-values come out of the head in fp32, so the TD target and the loss are fp32. ``skip`` (``Run.skip_step``)
    can leave out an update whose loss or gradient is not finite: then nothing changes and it returns None.
    With prioritised replay, ``steps`` (agent steps so far) sets the importance-weight exponent, and the sampled
    transitions' priorities become their new |TD errors|."""
    fast = fast or FastPath(replay.device)
    b = replay.sample(cfg.batch_size, gen, beta=cfg.priority_beta_at(steps))
    obs, next_obs = augmented(cfg, b, gen)
    with torch.no_grad(), fast.autocast():
        if cfg.target_is_online:  # the target is the online network's copy: one forward pass serves both
            next_q = qnet(next_obs)
            next_online = next_q if cfg.double else None
        else:
            next_q = target(next_obs)
            next_online = qnet(next_obs) if cfg.double else None
    y = td_target(b.rewards, b.terminated, next_q, next_online, b.discount if b.discount is not None else cfg.gamma)
    with fast.autocast():
        q = qnet(obs).gather(1, b.actions[:, None]).squeeze(1)
    loss = td_loss(q, y, cfg.loss, b.mask, b.weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if skip is not None and skip(loss, qnet.parameters()):
        optimizer.zero_grad(set_to_none=True)
        return None
    clip_grads(qnet, cfg.max_grad_norm)
    optimizer.step()
    if b.index is not None:
        replay.update_priorities(b.index, y - q.detach(), b.mask)
    return {"loss": loss.detach(), "q": masked_mean(q.detach(), b.mask)}


@torch.no_grad()
def update_target(qnet: QNetwork, target: QNetwork, tau: float) -> None:
    """Move the target network's weights towards the online network's (tau = 1: copy them)."""
    for p, tp in zip(qnet.parameters(), target.parameters(), strict=True):
        tp.lerp_(p, tau)
    for b, tb in zip(qnet.buffers(), target.buffers(), strict=True):
        tb.copy_(b)


def evaluate_policy(cfg: DQNConfig, qnet: QNetwork, device: torch.device, episodes: int | None = None, *,
                    seed_offset: int = evaluation.SCORE) -> dict:  # fmt: skip
    """Mean and spread of full-episode (unclipped) returns, acting with ``eval_epsilon``, on the games of
    ``cfg.seed + seed_offset`` (``evaluation.SELECTION``: those that pick the best network; ``SCORE``: fresh ones)."""
    seed = cfg.seed + seed_offset
    gen = torch.Generator().manual_seed(seed)
    was_training = qnet.training
    qnet.eval()
    try:
        returns = play(cfg, lambda obs, _: qnet.act(torch.as_tensor(obs, device=device), cfg.eval_epsilon, gen).numpy(),
                       episodes or cfg.eval_episodes or 10, seed=seed)  # fmt: skip
    finally:
        qnet.train(was_training)
    return return_figures(returns)


def evaluate(cfg: DQNConfig, run: Run, *, episodes: int | None = None, network: str = "final", video: bool = False,
             saliency: bool = False, step: int | None = None) -> dict:  # fmt: skip
    """Score the ``final`` (default) or ``best`` network of training, or that of the checkpoint at agent ``step``,
    on ``episodes`` fresh full games (the Nature protocol on Atari: no-op starts, ``eval_epsilon``; seeds no
    training game or selection evaluation used), and with ``video`` / ``saliency`` record one more to MP4. Returns
    the figures: ``eval/mean_return`` and its spread, the network (``checkpoint`` with ``step``) and the agent steps
    it was trained for."""
    qnet = load_network(cfg, run, build, network, key="qnet", step=step)
    trained = evaluation.best_record(run).at if network == "best" else run.step * cfg.num_envs
    figures = {"network": network if step is None else "checkpoint", "trained_steps": trained,
               **evaluate_policy(cfg, qnet, run.device, episodes)}  # fmt: skip
    if video or saliency:
        gen = torch.Generator().manual_seed(cfg.seed + evaluation.VIDEO)
        policy = lambda obs, _: qnet.act(torch.as_tensor(obs, device=run.device), cfg.eval_epsilon, gen).numpy()  # noqa: E731
        score = (lambda x, _, action: qnet(x[None])[0, action]) if saliency else None  # noqa: E731
        figures.update(watch.record(cfg, run, policy, score=score, step=trained or 0))
    return figures


register_task(DQNConfig, train, evaluate)

from fovea.agents import dqn_recipes  # noqa: E402, F401  (registers the recipes; it needs the task registered)
