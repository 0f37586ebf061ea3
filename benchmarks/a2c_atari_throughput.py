"""Agent steps per second of A2C on Atari, learning included: Fovea against stable-baselines3, in one script.

Both sides run RL Zoo's A2C on Atari (``hyperparams/a2c.yml``, ``atari:``) with the same number of
envs: 5-step rollouts, the Nature CNN shared by actor and critic, RMSprop (lr 7e-4, alpha 0.99, eps
1e-5), vf_coef 0.25, ent_coef 0.01, gradient norm 0.5, n-step returns (GAE lambda 1), clipped
rewards, 4 stacked 84x84 frames, frame skip 4, up to 30 no-op starts, a lost life ending the episode
for learning, and no sticky actions (the ``NoFrameskip-v4`` setting). Fovea takes the ``a2c-pong``
recipe with these fields pinned (``dataclasses.replace``) and steps ale-py's C++ vector env; SB3 takes
RL Zoo's ``make_atari_env`` + ``VecFrameStack(n_stack=4)`` + ``A2C("CnnPolicy")`` with RL Zoo's
``RMSpropTFLike`` (the same arithmetic cost as torch's RMSprop; only the moments' start and the
place of eps differ). SB3 steps its Python-wrapped envs one after another in this process
(``DummyVecEnv``, its default); ``--peer-subproc`` gives it one process per env (``SubprocVecEnv``).

Each side is timed over the same agent steps (``--steps``, rounded down to whole rollouts of
envs x 5) and over the same stretch: from just after its env reset to the end of its last update.
For Fovea that is the ``perf/sps`` that ``agents.a2c.train`` logs at its last update; for SB3 a
callback's clock between ``on_training_start`` and ``on_training_end`` of ``learn``. The figures
``*_with_setup`` time each whole call instead (building and resetting the envs and the network, and
for Fovea its run folder and final checkpoint), which matters for short runs only. For each
``--envs`` setting the peer runs before and after ours and its two runs are averaged, so drift on a
shared machine hits both sides. Both sides share this process's torch threads (``--threads``);
Fovea's env also steps in ale-py's C++ threads (one per core).

    python -m benchmarks.a2c_atari_throughput [--envs 16 32 64] [--steps 8000] [--game pong] [--device auto]

Last line: {"results": [{"envs", "steps", "ours", "peer", "ratio", ...}, ...], and "ours", "peer",
"ratio" at the first --envs, "device", ...}; steps/s are agent steps (env steps summed over the envs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import warnings

import torch

from fovea.agents.a2c import train
from fovea.cli import print_figures
from fovea.config import get_recipe
from fovea.envs.atari import game_id
from fovea.errors import ConfigError, RunError
from fovea.run import Run, pick_device

N_STEPS = 5  # steps per env in a rollout (RL Zoo / SB3 A2C)
# RL Zoo's a2c.yml, atari: (the rest are SB3's A2C defaults); both sides take these.
HYPER = dict(lr=7e-4, optimizer_eps=1e-5, vf_coef=0.25, ent_coef=0.01, max_grad_norm=0.5, gamma=0.99, gae_lambda=1.0)


def fovea_sps(game: str, envs: int, steps: int, device: str, runs_dir: str) -> tuple[float, float]:
    """Fovea's steps/s over its training loop (its own ``perf/sps``) and over the whole call, set-up included."""
    start = time.perf_counter()
    cfg = dataclasses.replace(
        get_recipe("a2c-pong").config, env=game, num_envs=envs, total_steps=steps, n_steps=N_STEPS,
        optimizer="rmsprop", lr_decay=False, normalize_advantages=False, shared_backbone=True, recurrent="none",
        clip_rewards=True, sticky=0.0, life_loss=True, eval_episodes=0, checkpoint_every=10**9, seed=0, **HYPER,
    )  # fmt: skip
    return loop_sps(cfg, train, steps, device, runs_dir, start)


def loop_sps(cfg, train_fn, steps: int, device: str, runs_dir: str, start: float) -> tuple[float, float]:
    """Train ``cfg`` with ``train_fn``; its steps/s over the training loop (the ``perf/sps`` that A2C's and PPO's
    loop logs at its last update: steps / time from after the env reset to the end of that update) and over the
    whole call since ``start``."""
    with Run.create("throughput", cfg, runs_dir=runs_dir, device=device, wandb="disabled") as run:
        train_fn(cfg, run)
        total = steps / (time.perf_counter() - start)
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    sps = [row["perf/sps"] for row in rows if "perf/sps" in row]
    if not sps:
        raise RuntimeError(f"{train_fn.__module__}.train logged no perf/sps in {run.dir / 'metrics.jsonl'}")
    return sps[-1], total


def sb3_atari_env(game: str, envs: int, subproc: bool = False):
    """RL Zoo's Atari envs for SB3: ``make_atari_env`` (NoFrameskip-v4, AtariWrapper) + ``VecFrameStack(4)``."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack

    gym.register_envs(ale_py)
    env_id = "".join(part.capitalize() for part in game.split("_")) + "NoFrameskip-v4"  # space_invaders: SpaceInv...
    vec_cls = SubprocVecEnv if subproc else DummyVecEnv
    return VecFrameStack(make_atari_env(env_id, n_envs=envs, seed=0, vec_env_cls=vec_cls), n_stack=4)


def clock():
    """An SB3 callback timing ``learn`` from after its env reset (training start) to the end of the last update."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Clock(BaseCallback):
        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self.end = time.perf_counter()

    return Clock()


def sb3_sps(game: str, envs: int, steps: int, device: str, subproc: bool = False) -> tuple[float, float]:
    """SB3's steps/s over its training loop (from after the env reset to the end of the last update) and over
    the whole call, set-up included."""
    from stable_baselines3 import A2C
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    start = time.perf_counter()
    env = sb3_atari_env(game, envs, subproc)
    timer = clock()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = A2C("CnnPolicy", env, learning_rate=HYPER["lr"], n_steps=N_STEPS, gamma=HYPER["gamma"],
                        gae_lambda=HYPER["gae_lambda"], ent_coef=HYPER["ent_coef"], vf_coef=HYPER["vf_coef"],
                        max_grad_norm=HYPER["max_grad_norm"], normalize_advantage=False,
                        policy_kwargs=dict(optimizer_class=RMSpropTFLike,
                                           optimizer_kwargs=dict(eps=HYPER["optimizer_eps"])),
                        device=device, seed=0, verbose=0)  # fmt: skip
            model.learn(total_timesteps=steps, callback=timer)
        total = steps / (time.perf_counter() - start)
    finally:
        env.close()
    return steps / (timer.end - timer.start), total


def compare(game: str, envs: int, steps: int, device: str, subproc: bool, runs_dir: str) -> dict:
    """Peer, ours, peer at one number of envs; the peer's figures are the means of its two runs."""
    steps = max(1, steps // (envs * N_STEPS)) * envs * N_STEPS  # whole rollouts, the same on both sides
    peer_first = sb3_sps(game, envs, steps, device, subproc)
    ours = fovea_sps(game, envs, steps, device, runs_dir)
    peer_last = sb3_sps(game, envs, steps, device, subproc)
    peer = [(a + b) / 2 for a, b in zip(peer_first, peer_last, strict=True)]
    return {"envs": envs, "steps": steps, "ours": round(ours[0], 1), "peer": round(peer[0], 1),
            "ratio": round(ours[0] / peer[0], 3), "ours_with_setup": round(ours[1], 1),
            "peer_with_setup": round(peer[1], 1), "ratio_with_setup": round(ours[1] / peer[1], 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", type=int, nargs="+", default=[16], help="numbers of envs to compare at (default: 16)")
    p.add_argument("--steps", type=int, default=8000, help="agent steps per run, each side (default: 8000)")
    p.add_argument("--game", default="pong", help="Atari game (default: pong)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads, both sides (default 0: torch's choice; 1 on a busy machine)")  # fmt: skip
    p.add_argument("--peer-subproc", action="store_true", help="SB3 steps its envs in subprocesses (SubprocVecEnv)")
    args = p.parse_args()
    if min(args.envs) < 1 or args.steps < 1:
        p.error(f"--envs and --steps must be positive; got --envs {args.envs} --steps {args.steps}")
    try:
        game, device = game_id(args.game), pick_device(args.device)
    except (ConfigError, RunError) as e:
        p.error(str(e))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = f"{device.type} ({torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"device: {name}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for envs in args.envs:
            results.append(compare(game, envs, args.steps, str(device), args.peer_subproc, runs_dir))
            print(f"envs {envs}: {results[-1]}", flush=True)
    first = results[0]
    figures = {"benchmark": "a2c_atari_throughput", "device": name, "game": game, "n_steps": N_STEPS,
               "peer_vec_env": "SubprocVecEnv" if args.peer_subproc else "DummyVecEnv", "results": results,
               "envs": first["envs"], "steps": first["steps"], "ours": first["ours"], "peer": first["peer"],
               "ratio": first["ratio"]}  # fmt: skip
    print_figures(f"A2C on {game}, agent steps/s with learning: Fovea vs stable-baselines3", figures)


if __name__ == "__main__":
    main()
