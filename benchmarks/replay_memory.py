"""Bytes per stored Atari transition: Fovea's FrameReplay against stable-baselines3's ReplayBuffer.

Both buffers are built for (4, 84, 84) uint8 observations and counted by the bytes of the arrays
they allocate (numpy and torch allocate lazily, so nothing is filled). SB3 is measured twice: its
default (obs and next_obs stored) and ``optimize_memory_usage=True`` (next_obs taken from the next
slot). Last line: {"ours": bytes, "peer": bytes (SB3 memory-optimised), "ratio": peer / ours, ...}.

    python -m benchmarks.replay_memory [--capacity 100000] [--envs 8]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from gymnasium import spaces

from fovea.agents.replay import FrameReplay
from fovea.cli import print_figures


def sb3_bytes_per_transition(capacity: int, envs: int, optimize: bool) -> float:
    from stable_baselines3.common.buffers import ReplayBuffer

    obs_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 warns that the buffer may not fit in memory
        buf = ReplayBuffer(capacity, obs_space, spaces.Discrete(6), device="cpu", n_envs=envs,
                           optimize_memory_usage=optimize, handle_timeout_termination=not optimize)  # fmt: skip
    arrays = [v for v in vars(buf).values() if isinstance(v, np.ndarray)]
    return sum(a.nbytes for a in arrays) / (buf.buffer_size * envs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--capacity", type=int, default=100_000)
    p.add_argument("--envs", type=int, default=8)
    args = p.parse_args()
    ours = FrameReplay(args.capacity, args.envs, (84, 84))
    ours_b = ours.nbytes / (ours.slots * ours.num_envs)
    sb3_opt = sb3_bytes_per_transition(args.capacity // args.envs, args.envs, optimize=True)
    sb3_default = sb3_bytes_per_transition(args.capacity // args.envs, args.envs, optimize=False)
    figures = {
        "benchmark": "replay_memory",
        "ours": ours_b,
        "peer": sb3_opt,
        "ratio": round(sb3_opt / ours_b, 2),
        "peer_default": sb3_default,
        "ratio_default": round(sb3_default / ours_b, 2),
        "ours_1M_GB": round(ours_b * 1e6 / 1e9, 2),
        "peer_1M_GB": round(sb3_opt * 1e6 / 1e9, 2),
        "peer_default_1M_GB": round(sb3_default * 1e6 / 1e9, 2),
    }
    print_figures("Bytes per Atari transition: Fovea FrameReplay vs SB3 ReplayBuffer (memory-optimised)", figures)


if __name__ == "__main__":
    main()
