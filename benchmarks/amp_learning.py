"""Does bf16 autocast harm learning? An agent recipe trained with ``--amp bf16`` and with ``--amp off`` (fp32), seed
by seed, in one script: the evaluation curves side by side, their means, and the wall time of each side.

Both sides run the same recipe, seeds and evaluation schedule on the same device; only the precision of the
forward passes differs (the heads, TD targets, returns and losses are fp32 either way). The figure of a run is the
mean evaluation return over its evaluations (the area under its learning curve, so a slower or a shakier start
counts, not only the end); ours is bf16's mean over seeds, the peer fp32's.

    python -m benchmarks.amp_learning [--recipe dqn-catch] [--seeds 0 1 2] [--eval-every 2000]
        [--eval-episodes 50] [--device auto] [--field VALUE ...]

Other ``--field value`` words go to both sides' ``fovea train`` (e.g. ``--total-steps 50000``).
Last line: {"ours": bf16's mean return, "peer": fp32's, "ratio": ours / peer, "curves": ..., "device": ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fovea.cli import main as fovea
from fovea.cli import print_figures
from fovea.run import pick_device

SIDES = {"ours": "bf16", "peer": "off"}


def curve(runs_dir: Path, name: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (runs_dir / name / "metrics.jsonl").read_text().splitlines()]
    return [(int(r["step"]), float(r["eval/mean_return"])) for r in rows if "eval/mean_return" in r]


def train(runs_dir: Path, args: argparse.Namespace, extra: list[str], amp: str, seed: int) -> tuple[list, float]:
    name = f"{amp}-{seed}"
    argv = ["train", args.recipe, "--runs-dir", str(runs_dir), "--name", name, "--amp", amp, "--seed", str(seed),
            "--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes), "--device", args.device,
            "--wandb", "disabled", *extra]  # fmt: skip
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its table; this script prints its own
        code = fovea(argv)
    if code != 0:
        raise SystemExit(f"`fovea {' '.join(argv)}` failed (exit {code}); see the message above")
    points = curve(runs_dir, name)
    if not points:
        raise SystemExit(f"{args.recipe} logged no eval/mean_return: lower --eval-every below its --total-steps")
    return points, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="dqn-catch", help="an agent recipe (default: dqn-catch)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--eval-every", type=int, default=2000, help="agent steps between evaluations (default: 2000)")
    p.add_argument("--eval-episodes", type=int, default=50, help="episodes per evaluation (default: 50)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    args, extra = p.parse_known_args()
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}", flush=True)
    curves: dict[str, dict[int, list]] = {side: {} for side in SIDES}
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for side in ("peer", "ours") if seed % 2 == 0 else ("ours", "peer"):  # alternate who goes first
                points, s = train(Path(tmp), args, extra, SIDES[side], seed)
                curves[side][seed], seconds[side] = points, [*seconds[side], s]
                shown = " ".join(f"{step // 1000}k:{ret:.2f}" for step, ret in points)
                print(f"{SIDES[side]:>4} seed {seed}: {shown}  ({s:.1f} s)", flush=True)
    means = {side: statistics.mean(statistics.mean(r for _, r in c) for c in curves[side].values()) for side in SIDES}
    finals = {side: statistics.mean(c[-1][1] for c in curves[side].values()) for side in SIDES}
    ratio = means["ours"] / means["peer"] if means["peer"] else float("nan")
    figures = {"benchmark": "amp_learning", "device": name, "recipe": args.recipe, "seeds": args.seeds,
               "ours": round(means["ours"], 4), "peer": round(means["peer"], 4), "ratio": round(ratio, 3),
               "ours_final": round(finals["ours"], 4), "peer_final": round(finals["peer"], 4),
               "ours_s": round(statistics.mean(seconds["ours"]), 2),
               "peer_s": round(statistics.mean(seconds["peer"]), 2),
               "curves": {SIDES[side]: {str(k): v for k, v in c.items()} for side, c in curves.items()}}  # fmt: skip
    print_figures(f"{args.recipe}: mean evaluation return, bf16 autocast (ours) vs fp32 (peer)", figures)


if __name__ == "__main__":
    main()
