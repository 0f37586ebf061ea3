"""Agent steps per second of PPO on Atari, learning included: Fovea against stable-baselines3, in one script.

Both sides run CleanRL's ``ppo_atari.py`` settings (RL Zoo's PPO on Atari is the same): 8 envs x 128-step rollouts,
4 epochs of 4 minibatches (256 steps each), the Nature CNN shared by actor and critic, Adam (lr 2.5e-4, eps 1e-5),
clip 0.1, entropy 0.01, value 0.5, GAE 0.95, gradient norm 0.5, clipped rewards, a lost life ending the episode for
learning, no sticky actions. The learning rate is held constant on both sides (an annealing schedule costs
nothing). Fovea takes the ``ppo-pong`` recipe and steps ale-py's C++ vector env; SB3 takes RL Zoo's
``make_atari_env`` + ``VecFrameStack(4)`` + ``PPO("CnnPolicy")`` (``DummyVecEnv``; ``--peer-subproc`` for
``SubprocVecEnv``). Each side is timed over the same agent steps (whole rollouts) from after its env reset to the
end of its last update; the peer runs before and after ours and its two runs are averaged.

    python -m benchmarks.ppo_atari_throughput [--steps 4096] [--envs 8] [--game pong] [--device auto]

Last line: {"ours", "peer", "ratio", "steps", "envs", "device", ...}; steps/s are agent steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings

import torch

from benchmarks.a2c_atari_throughput import clock, loop_sps, sb3_atari_env
from fovea.agents.ppo import train
from fovea.cli import print_figures
from fovea.config import get_recipe
from fovea.envs.atari import game_id
from fovea.errors import ConfigError, RunError
from fovea.run import pick_device

N_STEPS, EPOCHS, MINIBATCHES = 128, 4, 4
HYPER = dict(lr=2.5e-4, clip_range=0.1, ent_coef=0.01, vf_coef=0.5, gae_lambda=0.95, gamma=0.99, max_grad_norm=0.5)


def fovea_sps(game: str, envs: int, steps: int, device: str, runs_dir: str) -> tuple[float, float]:
    start = time.perf_counter()
    cfg = dataclasses.replace(
        get_recipe("ppo-pong").config, env=game, num_envs=envs, total_steps=steps, n_steps=N_STEPS, n_epochs=EPOCHS,
        num_minibatches=MINIBATCHES, lr_decay=False, clip_decay=False, eval_episodes=0, checkpoint_every=10**9,
        seed=0, **HYPER,
    )  # fmt: skip
    return loop_sps(cfg, train, steps, device, runs_dir, start)


def sb3_sps(game: str, envs: int, steps: int, device: str, subproc: bool = False) -> tuple[float, float]:
    from stable_baselines3 import PPO

    start = time.perf_counter()
    env = sb3_atari_env(game, envs, subproc)
    timer = clock()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PPO("CnnPolicy", env, learning_rate=HYPER["lr"], n_steps=N_STEPS, batch_size=envs * N_STEPS //
                        MINIBATCHES, n_epochs=EPOCHS, gamma=HYPER["gamma"], gae_lambda=HYPER["gae_lambda"],
                        clip_range=HYPER["clip_range"], ent_coef=HYPER["ent_coef"], vf_coef=HYPER["vf_coef"],
                        max_grad_norm=HYPER["max_grad_norm"], policy_kwargs=dict(optimizer_kwargs=dict(eps=1e-5)),
                        device=device, seed=0, verbose=0)  # fmt: skip
            model.learn(total_timesteps=steps, callback=timer)
        total = steps / (time.perf_counter() - start)
    finally:
        env.close()
    return steps / (timer.end - timer.start), total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", type=int, default=8, help="envs on both sides (default: 8, CleanRL's)")
    p.add_argument("--steps", type=int, default=4096, help="agent steps per run, each side (default: 4096)")
    p.add_argument("--game", default="pong", help="Atari game (default: pong)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, both sides (default 0: torch's)")
    p.add_argument("--peer-subproc", action="store_true", help="SB3 steps its envs in subprocesses (SubprocVecEnv)")
    args = p.parse_args()
    if args.envs < MINIBATCHES or args.steps < 1:
        p.error(f"--envs must be at least {MINIBATCHES} and --steps positive; got --envs {args.envs} --steps "
                f"{args.steps}")  # fmt: skip
    try:
        game, device = game_id(args.game), pick_device(args.device)
    except (ConfigError, RunError) as e:
        p.error(str(e))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}", flush=True)
    steps = max(1, args.steps // (args.envs * N_STEPS)) * args.envs * N_STEPS  # whole rollouts on both sides
    with tempfile.TemporaryDirectory() as runs_dir:
        peer_first = sb3_sps(game, args.envs, steps, str(device), args.peer_subproc)
        ours = fovea_sps(game, args.envs, steps, str(device), runs_dir)
        peer_last = sb3_sps(game, args.envs, steps, str(device), args.peer_subproc)
    peer = [(a + b) / 2 for a, b in zip(peer_first, peer_last, strict=True)]
    figures = {"benchmark": "ppo_atari_throughput", "device": name, "game": game, "envs": args.envs, "steps": steps,
               "n_steps": N_STEPS, "epochs": EPOCHS, "minibatches": MINIBATCHES, "ours": round(ours[0], 1),
               "peer": round(peer[0], 1), "ratio": round(ours[0] / peer[0], 3), "ours_with_setup": round(ours[1], 1),
               "peer_with_setup": round(peer[1], 1), "ratio_with_setup": round(ours[1] / peer[1], 3),
               "peer_vec_env": "SubprocVecEnv" if args.peer_subproc else "DummyVecEnv"}  # fmt: skip
    print_figures(f"PPO on {game}, agent steps/s with learning: Fovea vs stable-baselines3", figures)


if __name__ == "__main__":
    main()
