"""Playing whole episodes to score an agent, keeping its best network, and the seeds that keep scores honest.

A policy, for ``play``, is any callable ``policy(obs, starts) -> actions`` over a batch of envs: ``obs`` as the
vector env returns it and ``starts`` the (num_envs,) mask of envs whose episode begins with this observation (a
recurrent policy resets its state there; others ignore it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from fovea import checkpoint
from fovea.agents.base import AgentConfig, make_env
from fovea.errors import ConfigError
from fovea.fit import Best, KeepBest

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]

# The games an agent plays are kept apart by seed. Training plays cfg.seed + run.step (a new stream at each start or
# resume); the periodic evaluations that pick the best network replay the same games, cfg.seed + SELECTION; scores
# (the summary's eval/* figures and `fovea eval`) come from games at cfg.seed + SCORE that nothing else plays, so a
# score is a fresh estimate, never the maximum of the evaluations that chose the network; the video plays
# cfg.seed + VIDEO. Each offset seeds the envs and the policy's action draws alike.
SELECTION, VIDEO, SCORE = 10_000, 20_000, 1 << 30
SELECTED_BY = "eval/mean_return"  # the figure of the selection games that picks the best network


NETWORKS = ("final", "best")


def load_network(cfg: AgentConfig, run, build: Callable[[AgentConfig, object], nn.Module], network: str,
                 key: str, step: int | None = None) -> nn.Module:  # fmt: skip
    """From the run's latest checkpoint, in eval mode: the ``final`` network (the one training ended with, or the
    latest of a run still under way, held under ``key``) or the ``best`` one (of the periodic evaluations). With
    ``step``, the network the checkpoint of that agent step holds instead of the latest's (``checkpoint_at``).

    It is built without ``backbone_from``: the checkpoint holds every weight, and the source run may be gone.
    """
    if network not in NETWORKS:
        raise ConfigError(f"--network {network!r}: choose final (the last weights) or best (of the evaluations)")
    if step is not None and network == "best":
        raise ConfigError(f"--step {step} scores the network trained for {step} steps and --network best another "
                          "one; give one or the other")  # fmt: skip
    path = None if step is None else checkpoint_at(run, step)
    env = make_env(cfg, 1, cfg.seed)
    net = build(dataclasses.replace(cfg, backbone_from="", freeze_backbone=False), env).to(run.device)
    env.close()
    run.track(**{"best" if network == "best" else key: net})
    if not run.restore(path):
        raise ConfigError(f"{run.dir} has no checkpoint yet; train it first (fovea train --resume {run.dir})")
    return net.eval()


def checkpoint_at(run, step: int) -> Path:
    """The checkpoint folder of agent step ``step`` in ``run`` (``checkpoints/step_<step>``); a ConfigError naming
    the steps the run keeps when it has none of that step."""
    kept = {checkpoint.step_of(p): p for p in checkpoint.list_checkpoints(run.ckpt_dir)}
    if step not in kept:
        have = ", ".join(str(s) for s in kept) or "none yet"
        raise ConfigError(f"--step {step}: {run.dir} keeps no checkpoint of that step; it keeps steps {have} (training "
                          "keeps the newest --keep-checkpoints of them, and the best)")  # fmt: skip
    return kept[step]


VIDEO_STEPS = 3_000  # the longest video filmed during training, in agent steps (200 s of Atari at 15 frames a second)
_FILM: list = []  # (run, step) while a periodic evaluation should also film one episode of the policy it plays


def films(cfg: AgentConfig) -> bool:
    """Whether evaluations during training film an episode (``eval_video``: auto films Atari games)."""
    return cfg.eval_video == "on" or (cfg.eval_video == "auto" and cfg.atari)


def play(cfg: AgentConfig, policy: Policy, episodes: int, *, seed: int, num_envs: int = 8) -> np.ndarray:
    """Full-game, unclipped returns of ``episodes`` episodes played by ``policy`` (no life loss). Inside
    ``keep_best`` with ``eval_video``, one more episode of the same policy is filmed (``watch.record``)."""
    returns = _play(cfg, policy, episodes, seed=seed, num_envs=num_envs)
    if _FILM:
        from fovea.agents import watch

        run, step = _FILM.pop()
        try:
            watch.record(cfg, run, policy, step=step, max_steps=VIDEO_STEPS)
        except Exception as e:  # noqa: BLE001 - a video that cannot be made never stops training
            run.say(f"step {step}: no evaluation video ({type(e).__name__}: {str(e)[:200]}); training goes on")
    return returns


def _play(cfg: AgentConfig, policy: Policy, episodes: int, *, seed: int, num_envs: int = 8) -> np.ndarray:
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


Evaluate = Callable[..., dict]  # evaluate(net, seed_offset) -> return_figures of full games


def keep_best(run, net: nn.Module, best: nn.Module, steps: int, evaluate: Evaluate) -> dict:
    """Evaluate ``net`` on the selection games, log it, and copy it into ``best`` when it beats every earlier
    evaluation; with ``eval_video``, film one more episode of it to runs/NAME/videos/ and W&B (``eval/video``)."""
    if films(run.config):
        _FILM[:] = [(run, steps)]
    try:
        res = evaluate(net, SELECTION)
    finally:
        _FILM.clear()
    run.log({"eval/mean_return": res["eval/mean_return"], "eval/std_return": res["eval/std_return"]}, step=steps)
    KeepBest(run, net, best, SELECTED_BY).offer((res["eval/mean_return"],), steps, res["eval/mean_return"])
    return res


def best_record(run) -> Best:
    """What picked the run's best network: its selection return (``figure``) and the agent step (``at``)."""
    return KeepBest(run, None, None, SELECTED_BY).record


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
        record = best_record(run)
        best_score = final if record.at == agent_steps else evaluate(best, SCORE)
        figures.update(final)
        figures.update({"eval/final_mean_return": final["eval/mean_return"],
                        "eval/best_mean_return": best_score["eval/mean_return"],
                        "eval/best_selection_return": record.figure, "eval/best_step": record.at})  # fmt: skip
        run.log({k: figures[k] for k in ("eval/final_mean_return", "eval/best_mean_return")}, step=agent_steps)
    else:
        KeepBest(run, net, best, SELECTED_BY).take(agent_steps)
    run.save()
    return figures
