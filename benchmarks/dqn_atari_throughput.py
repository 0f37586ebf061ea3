"""Agent steps per second of DQN on Atari Pong, learning included: Fovea against stable-baselines3, in one script.

Both use the Nature CNN, batch 32, one gradient step every 4 agent steps (replay ratio 1/4), a
target update every 1,000 steps, Adam 1e-4, learning from step ``--learning-starts``, and one env.
Fovea steps ale-py's C++ vector env and stores frames once; SB3 steps its Python Atari wrappers
(``make_atari_env`` + ``VecFrameStack``). Each side is timed over the same number of agent steps
(the random warm-up included); the two runs alternate so neither always goes first.

    python -m benchmarks.dqn_atari_throughput [--steps 4000] [--learning-starts 1000] [--device cpu]

Last line: {"ours": steps/s, "peer": steps/s, "ratio": ours / peer, "device": ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings

import torch

from agents.dqn import train
from fovea.cli import print_figures
from fovea.config import get_recipe
from fovea.run import Run, pick_device


def fovea_sps(steps: int, learning_starts: int, device: str, runs_dir: str) -> float:
    cfg = dataclasses.replace(get_recipe("dqn-pong").config, total_steps=steps, learning_starts=learning_starts,
                              buffer_size=max(10_000, steps), eval_episodes=0, checkpoint_every=10**9)  # fmt: skip
    with Run("dqn-pong", cfg, runs_dir=runs_dir, device=device, wandb="disabled") as run:
        start = time.perf_counter()
        train(cfg, run)
        return steps / (time.perf_counter() - start)


def sb3_sps(steps: int, learning_starts: int, device: str) -> float:
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env = VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=1, seed=0), n_stack=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DQN("CnnPolicy", env, learning_rate=1e-4, buffer_size=max(10_000, steps), batch_size=32,
                    learning_starts=learning_starts, train_freq=4, gradient_steps=1, target_update_interval=1000,
                    exploration_fraction=0.1, exploration_final_eps=0.01, device=device, seed=0, verbose=0)  # fmt: skip
        start = time.perf_counter()
        model.learn(total_timesteps=steps)
    env.close()
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as runs_dir:
        peer_first = sb3_sps(args.steps, args.learning_starts, str(device))
        ours = fovea_sps(args.steps, args.learning_starts, str(device), runs_dir)
        peer = (peer_first + sb3_sps(args.steps, args.learning_starts, str(device))) / 2  # before and after ours
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    figures = {"benchmark": "dqn_atari_throughput", "device": name, "steps": args.steps,
               "learning_starts": args.learning_starts, "ours": round(ours, 1), "peer": round(peer, 1),
               "ratio": round(ours / peer, 3)}  # fmt: skip
    print_figures("DQN on Pong, agent steps/s with learning: Fovea vs stable-baselines3", figures)


if __name__ == "__main__":
    main()
