"""An agent recipe's score over seeds: the interquartile mean (IQM) and the minimum of the final networks' scores.

Each seed trains the recipe from scratch (``fovea train RECIPE --seed S``) and its figure is the summary's
``eval/mean_return``: the final network on fresh games, seeded apart from every training game and from the
evaluations that picked the best network (``agents/evaluation.py``). The IQM is the mean of the middle half of the
scores (rliable's ``iqm``, ``scipy.stats.trim_mean(x, 0.25)``): robust to one lucky or unlucky seed, unlike the mean,
and less noisy than the median (Agarwal et al., NeurIPS 2021). Seeds 1..5 by default: seed 0 is the one the learning
tests use, so the reported seeds were not tuned on.

Resumable: a seed whose run folder already holds a summary is read, not trained again. Writes one JSON per recipe
to ``--out`` (default benchmarks/results/agent_seeds/RECIPE.json) with every seed's score and wall time.

    python -m benchmarks.agent_seeds ppo-cartpole dqn-cartpole [--seeds 1 2 3 4 5] [--runs-dir ~/fovea-runs/seeds]

Last line: {"recipes": {RECIPE: {"iqm", "min", "mean", "scores", "seeds", ...}}}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import trim_mean

REPO = Path(__file__).resolve().parents[1]


def iqm(scores: list[float]) -> float:
    """The interquartile mean: the mean of the middle 50% of the scores (rliable's IQM)."""
    return float(trim_mean(np.asarray(scores, dtype=np.float64), 0.25))


def run_seed(recipe: str, seed: int, runs_dir: Path, extra: list[str]) -> dict:
    """Train ``recipe`` with ``seed`` (unless its run folder already has a summary); its summary figures."""
    run_dir = runs_dir / f"{recipe}-seed{seed}"
    summary = run_dir / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "fovea", "train", recipe, "--seed", str(seed), "--name", run_dir.name,
               "--runs-dir", str(runs_dir), "--wandb", "disabled", *extra]  # fmt: skip
        if run_dir.exists():  # a seed stopped part-way resumes from its checkpoint
            cmd = [sys.executable, "-m", "fovea", "train", "--resume", str(run_dir)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--runs-dir", default=str(Path.home() / "fovea-runs" / "seeds"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "agent_seeds"))
    p.add_argument("--extra", default="", help="overrides passed to every run, e.g. '--total-steps 20000'")
    p.add_argument("--commit", help="the Fovea commit the runs train with (default: this checkout's HEAD)")
    args = p.parse_args(argv)
    runs_dir, out = Path(args.runs_dir).expanduser(), Path(args.out)
    runs_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout  # fmt: skip
    results = {}
    for recipe in args.recipes:
        start, rows = time.perf_counter(), []
        for seed in args.seeds:
            s = run_seed(recipe, seed, runs_dir, args.extra.split())
            rows.append({"seed": seed, "final": s["eval/mean_return"], "best": s.get("eval/best_mean_return"),
                         "best_step": s.get("eval/best_step"), "agent_steps": s["agent_steps"],
                         "wall_s": s.get("wall_s")})  # fmt: skip
            print(f"{recipe} seed {seed}: final network {s['eval/mean_return']:.1f} on fresh games", flush=True)
        scores = [r["final"] for r in rows]
        command = f"python -m benchmarks.agent_seeds {recipe} --seeds {' '.join(map(str, args.seeds))}"
        results[recipe] = {"iqm": iqm(scores), "min": min(scores), "mean": float(np.mean(scores)), "scores": scores,
                           "seeds": args.seeds, "runs": rows, "figure": "eval/mean_return: the final network on "
                           "fresh-seed games", "command": command + (f" --extra '{args.extra}'" if args.extra else ""),
                           "commit": commit.strip(), "device": "cpu",
                           "wall_s": time.perf_counter() - start}  # fmt: skip
        (out / f"{recipe}.json").write_text(json.dumps(results[recipe], indent=1) + "\n")
    line = {"recipes": {k: {x: v[x] for x in ("iqm", "min", "mean", "scores", "seeds")} for k, v in results.items()}}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
