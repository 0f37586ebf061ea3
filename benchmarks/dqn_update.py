"""Milliseconds per drq100k update (batch 32, 10-step returns, DrQ's augmentation, dueling double DQN, Adam) on
the device, for the choices a run can make: Adam's foreach form (the peer, torch's default) against its fused form,
and fp32 against bf16 autocast. The variants take turns, ``--rounds`` times, on the same filled replay, so a busy
machine slows them alike; the median of the rounds is printed with its ratio to the foreach fp32 update.

This is what decided two of the agents' choices on the CPU: the fused Adam (every agent) and ``--amp bf16`` for the
Atari 100k grid (on a CPU with bf16 instructions; CUDA's ``auto`` is bf16 already).

    python -m benchmarks.dqn_update [--updates 30] [--rounds 4] [--device auto]

Last line: {"ms": {variant: median ms}, "ratio": {variant: foreach-fp32 ms / variant ms}, "device": ...}.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import numpy as np
import torch

from fovea.agents.base import build_trunk
from fovea.agents.dqn import QNetwork, update
from fovea.agents.fastpath import FastPath
from fovea.agents.replay import FrameReplay
from fovea.cli import print_figures
from fovea.config import get_recipe
from fovea.run import pick_device

VARIANTS = {"foreach-fp32": (False, None), "fused-fp32": (True, None), "foreach-bf16": (False, torch.bfloat16),
            "fused-bf16": (True, torch.bfloat16)}  # fmt: skip


def filled_replay(device: torch.device, transitions: int = 3000) -> FrameReplay:
    """A replay of random Atari frames (the update's cost does not depend on what the pixels show)."""
    rng = np.random.default_rng(0)
    frames = lambda: rng.integers(0, 256, (1, 4, 84, 84), dtype=np.uint8)  # noqa: E731
    replay = FrameReplay(transitions + 100, 1, (84, 84), stack=4, device=device, n_step=10, gamma=0.99,
                         sync_free=device.type == "cuda")  # fmt: skip
    replay.start(frames())
    no = np.array([False])
    for i in range(transitions):
        replay.add(np.array([i % 6]), np.array([float(i % 7 == 0)]), no, frames(), no)
    return replay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=30, help="updates per variant per round (default: 30)")
    p.add_argument("--rounds", type=int, default=4, help="rounds of every variant in turn (default: 4)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = pick_device(args.device)
    cfg = dataclasses.replace(get_recipe("drq100k").config, env="pong")
    replay = filled_replay(device)
    nets = {}
    for name, (fused, dtype) in VARIANTS.items():
        torch.manual_seed(0)
        q = QNetwork(build_trunk(cfg, (4, 84, 84)), 6, cfg.dueling, 255.0).to(device)
        fast = FastPath(device, dtype)
        fast.prepare(q)
        form = {"fused": True} if fused else {"foreach": True}
        opt = torch.optim.Adam(q.parameters(), lr=cfg.lr, eps=cfg.optimizer_eps, **form)
        nets[name] = (q, copy.deepcopy(q).requires_grad_(False), opt, fast)
    gen = torch.Generator(device=device if replay.sync_free else "cpu").manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (q, target, opt, fast) in nets.items():
            for _ in range(3):  # warm-up
                update(cfg, q, target, opt, replay, gen, fast)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.updates):
                update(cfg, q, target, opt, replay, gen, fast)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / args.updates * 1000)
    ms = {name: round(statistics.median(t), 2) for name, t in times.items()}
    base = ms["foreach-fp32"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    figures = {"benchmark": "dqn_update", "recipe": "drq100k", "device": name, "updates": args.updates,
               "rounds": args.rounds, "ms": ms, "ratio": {k: round(base / v, 3) for k, v in ms.items()}}  # fmt: skip
    print_figures("drq100k update, ms (median of rounds) and speed-up over foreach Adam in fp32", figures)


if __name__ == "__main__":
    main()
