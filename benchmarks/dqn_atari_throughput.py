"""Agent steps per second of DQN on Atari Pong, learning included: Fovea against stable-baselines3, in one script.

``--recipe dqn-pong`` (the default): both use the Nature CNN, batch 32, one gradient step every 4 agent steps
(replay ratio 1/4), a target update every 1,000 steps, Adam 1e-4, learning from step ``--learning-starts``, and one
env, on the same device. ``--recipe drq100k``: the Atari 100k agent's replay ratio, one gradient step per agent step,
10-step returns, Adam 1e-4 (eps 1.5e-4), the target copied every update; Fovea adds what SB3's DQN has not (the
dueling head, double targets, DrQ's shifts and intensity noise), so ours does more work per update (the wall time of
whole 100k runs is in the Atari 100k grid's cells, ``benchmarks/atari100k.py``). Fovea steps ale-py's C++ vector
env and stores frames once; SB3 steps its Python Atari wrappers (``make_atari_env`` + ``VecFrameStack``). Each side
is timed over the same number of agent steps (the random warm-up included); the peer runs before and after ours and
the two are averaged.

On CUDA Fovea takes its fast path: the replay on the GPU (uint8, sampled there without host syncs),
bf16 autocast (``--amp``), channels_last convolutions, the next env step running while the network
learns (``--async-env``) and, with ``--compile``, a compiled forward; compilation is paid for in an
untimed warm-up run first (reported as ``compile_warmup_s``).

    python -m benchmarks.dqn_atari_throughput [--recipe dqn-pong|drq100k] [--steps 4000] [--learning-starts 1000]
        [--device auto] [--amp auto|off|bf16] [--compile] [--async-env auto|on|off]

Last line: {"ours": steps/s, "peer": steps/s, "ratio": ours / peer, "device": the GPU's name or the CPU,
"replay_bytes_1m": bytes of Fovea's replay for 1M Atari transitions, ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings

import torch

from fovea.agents.dqn import DQNConfig, train
from fovea.agents.fastpath import FastPath
from fovea.agents.replay import FrameReplay
from fovea.cli import print_figures
from fovea.config import get_recipe
from fovea.run import Run, pick_device


def fovea_config(steps: int, learning_starts: int, amp: str, compile: bool, async_env: str,
                 recipe: str = "dqn-pong") -> DQNConfig:  # fmt: skip
    return dataclasses.replace(get_recipe(recipe).config, env="pong", total_steps=steps,
                               learning_starts=learning_starts, buffer_size=max(10_000, steps), eval_episodes=0,
                               checkpoint_every=10**9, amp=amp, compile=compile, async_env=async_env)  # fmt: skip


def fovea_sps(cfg: DQNConfig, device: str, runs_dir: str, recipe: str = "dqn-pong") -> float:
    with Run.create(recipe, cfg, runs_dir=runs_dir, device=device, wandb="disabled") as run:
        start = time.perf_counter()
        train(cfg, run)
        return cfg.total_steps / (time.perf_counter() - start)


# SB3's DQN with the settings of each recipe that it has (the rest: SB3's defaults for Atari)
SB3_SETTINGS = {
    "dqn-pong": dict(learning_rate=1e-4, train_freq=4, target_update_interval=1000, exploration_fraction=0.1,
                     exploration_final_eps=0.01),
    "drq100k": dict(learning_rate=1e-4, train_freq=1, target_update_interval=1, n_steps=10, exploration_fraction=0.05,
                    exploration_final_eps=0.01, policy_kwargs=dict(optimizer_kwargs=dict(eps=1.5e-4))),
}  # fmt: skip


def sb3_sps(steps: int, learning_starts: int, device: str, recipe: str = "dqn-pong") -> float:
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env = VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=1, seed=0), n_stack=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DQN("CnnPolicy", env, buffer_size=max(10_000, steps), batch_size=32, learning_starts=learning_starts,
                    gradient_steps=1, device=device, seed=0, verbose=0, **SB3_SETTINGS[recipe])  # fmt: skip
        start = time.perf_counter()
        model.learn(total_timesteps=steps)
    env.close()
    return steps / (time.perf_counter() - start)


def replay_bytes(transitions: int = 1_000_000) -> int:
    """Bytes of the tensors Fovea's replay allocates for ``transitions`` Atari transitions (one env, 84x84 uint8
    frames stored once), counted on the meta device, so nothing is allocated."""
    return FrameReplay(transitions, 1, (84, 84), stack=4, device="meta").nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", choices=tuple(SB3_SETTINGS), default="dqn-pong",
                   help="dqn-pong (replay ratio 1/4) or drq100k (ratio 1, Atari 100k); default: dqn-pong")  # fmt: skip
    p.add_argument("--steps", type=int, default=4000, help="agent steps per run, each side (default: 4000)")
    p.add_argument("--learning-starts", type=int, default=1000, help="random steps before learning (default: 1000)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--amp", choices=("auto", "off", "bf16"), default="auto", help="Fovea's autocast (default: auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile Fovea's Q-network (warm-up run untimed)")
    p.add_argument("--async-env", choices=("auto", "on", "off"), default="auto",
                   help="Fovea steps the env while it learns (default: auto, on with CUDA)")  # fmt: skip
    args = p.parse_args()
    if args.steps <= args.learning_starts or args.learning_starts < 0:
        p.error(f"--steps {args.steps} must exceed --learning-starts {args.learning_starts} (>= 0)")
    device = pick_device(args.device)
    cfg = fovea_config(args.steps, args.learning_starts, args.amp, args.compile, args.async_env, args.recipe)
    fast = FastPath.of(cfg, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}", flush=True)
    warmup = 0.0
    with tempfile.TemporaryDirectory() as runs_dir:
        if args.compile:  # compile (and autotune) every shape the timed run meets, in this process
            start = time.perf_counter()
            short = min(args.steps, args.learning_starts + 400)
            fovea_sps(dataclasses.replace(cfg, total_steps=short), str(device), runs_dir, args.recipe)
            warmup = time.perf_counter() - start
        peer_first = sb3_sps(args.steps, args.learning_starts, str(device), args.recipe)
        ours = fovea_sps(cfg, str(device), runs_dir, args.recipe)
        peer = (peer_first + sb3_sps(args.steps, args.learning_starts, str(device), args.recipe)) / 2  # before, after
    figures = {"benchmark": "dqn_atari_throughput", "recipe": args.recipe, "device": name, "steps": args.steps,
               "learning_starts": args.learning_starts, "amp": {None: "fp32"}.get(fast.dtype, "bf16"),
               "compile": args.compile, "compile_warmup_s": round(warmup, 1), "async_env": cfg.overlaps_env(device),
               "sync_free_replay": fast.sync_free, "replay_bytes_1m": replay_bytes(), "ours": round(ours, 1),
               "peer": round(peer, 1), "ratio": round(ours / peer, 3)}  # fmt: skip
    print_figures("DQN on Pong, agent steps/s with learning: Fovea vs stable-baselines3", figures)


if __name__ == "__main__":
    main()
