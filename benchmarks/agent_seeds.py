"""An agent recipe's score over seeds: the interquartile mean (IQM) and the minimum of the final networks' scores.

Each seed trains the recipe from scratch (``fovea train RECIPE --seed S``) and its figure is the summary's
``eval/mean_return``: the final network on fresh games, seeded apart from every training game and from the
evaluations that picked the best network (``agents/evaluation.py``). The IQM is the mean of the middle half of the
scores (rliable's ``iqm``, ``scipy.stats.trim_mean(x, 0.25)``): robust to one lucky or unlucky seed, unlike the mean,
and less noisy than the median (Agarwal et al., NeurIPS 2021). Seeds 1..5 by default: seed 0 is the one the learning
tests use, so the reported seeds were not tuned on.

Resumable twice over: a seed whose run folder already holds a summary is read, not trained again, and every seed
already in the JSON is kept (asked for or not: ``--seeds 3`` after ``--seeds 1 2`` makes a study of 1, 2 and 3), so
a study can span sessions whose run folders are lost as long as its JSON was committed. A JSON written with other
``--extra`` overrides is refused, not overwritten: give the variant its own ``--tag``. Writes one JSON per recipe to
``--out`` (default benchmarks/results/agent_seeds/RECIPE.json, ``RECIPE-TAG.json`` with ``--tag``) with every
finished seed's score and wall time, rewritten after each seed. ``--tag`` names a variant (e.g. the optimiser form
compared), in the JSON's name and the run folders'.

    python -m benchmarks.agent_seeds ppo-cartpole dqn-cartpole [--seeds 1 2 3 4 5] [--runs-dir ~/fovea-runs/seeds]
    python -m benchmarks.agent_seeds a2c-breakout --seeds 1 2 3 --tag rmsprop-tf \
        --extra "--total-steps 2000000 --optimizer rmsprop-tf"

Last line: {"recipes": {RECIPE: {"iqm", "min", "mean", "scores", "seeds", ...}}}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.stats import trim_mean

REPO = Path(__file__).resolve().parents[1]


def iqm(scores: list[float]) -> float:
    """The interquartile mean: the mean of the middle 50% of the scores (rliable's IQM)."""
    return float(trim_mean(np.asarray(scores, dtype=np.float64), 0.25))


def run_seed(recipe: str, seed: int, runs_dir: Path, extra: list[str], tag: str = "") -> dict:
    """Train ``recipe`` with ``seed`` (unless its run folder already has a summary); its summary figures."""
    run_dir = runs_dir / f"{recipe}{'-' + tag if tag else ''}-seed{seed}"
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
    p.add_argument("--tag", default="", help="a variant's name: RECIPE-TAG.json and RECIPE-TAG-seedS run folders")
    p.add_argument("--commit", help="the Fovea commit the runs train with (default: this checkout's HEAD)")
    args = p.parse_args(argv)
    runs_dir, out = Path(args.runs_dir).expanduser(), Path(args.out)
    runs_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout.strip()  # fmt: skip
    studies = []  # every JSON is checked before anything trains: a clash shows at once, not hours in
    for recipe in args.recipes:
        name = f"{recipe}-{args.tag}" if args.tag else recipe
        path = out / f"{name}.json"
        try:
            earlier = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError as e:
            sys.exit(f"{path} is not valid JSON ({e}); restore it (git checkout -- {path}) or move it aside")
        if earlier and (earlier.get("extra") or "") != args.extra:
            sys.exit(f"{path} holds a study run with --extra '{earlier.get('extra') or ''}', not '{args.extra}': "
                     "give this one its own --tag (or --out) so that neither is lost")  # fmt: skip
        kept = {r["seed"]: {**r, "commit": r.get("commit") or earlier.get("commit")} for r in earlier.get("runs", [])}
        studies.append((recipe, name, path, kept))
    results = {}
    for recipe, name, path, kept in studies:
        seeds = sorted(set(args.seeds) | set(kept))  # seeds from earlier sessions stay in the study
        command = f"python -m benchmarks.agent_seeds {recipe} --seeds {' '.join(map(str, seeds))}" + (
            f" --tag {args.tag}" if args.tag else "") + (f" --extra '{args.extra}'" if args.extra else "")  # fmt: skip
        rows = []
        for seed in seeds:
            if seed in kept:
                rows.append(kept[seed])
                print(f"{name} seed {seed}: {kept[seed]['final']:.1f}, kept from {path.name}", flush=True)
            else:
                s = run_seed(recipe, seed, runs_dir, args.extra.split(), args.tag)
                rows.append({"seed": seed, "final": s["eval/mean_return"], "best": s.get("eval/best_mean_return"),
                             "best_step": s.get("eval/best_step"), "agent_steps": s["agent_steps"],
                             "wall_s": s.get("wall_s"), "commit": commit})  # fmt: skip
                print(f"{name} seed {seed}: final network {s['eval/mean_return']:.1f} on fresh games", flush=True)
            scores = [r["final"] for r in rows]
            results[name] = {"iqm": iqm(scores), "min": min(scores), "mean": float(np.mean(scores)), "scores": scores,
                             "seeds": [r["seed"] for r in rows], "runs": rows, "figure": "eval/mean_return: the final "
                             "network on fresh-seed games", "command": command, "extra": args.extra,
                             "commit": ", ".join(dict.fromkeys(r["commit"] for r in rows if r.get("commit"))),
                             "device": "cpu",
                             "wall_s": float(sum(r.get("wall_s") or 0.0 for r in rows))}  # fmt: skip
            path.write_text(json.dumps(results[name], indent=1) + "\n")  # after every seed: a cut session keeps it
    line = {"recipes": {k: {x: v[x] for x in ("iqm", "min", "mean", "scores", "seeds")} for k, v in results.items()}}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
