"""The Atari 100k benchmark (Kaiser et al. 2019): a grid of (game, seed) cells, each a 100,000-agent-step run of a
recipe (``drq100k``: DrQ(epsilon), Dopamine's settings), scored as Agarwal et al. (NeurIPS 2021) score it.

Each cell trains ``fovea train RECIPE --env GAME --seed S`` in its own run folder and its score is the summary's
``eval/mean_return``: the final network's mean return over the recipe's evaluation episodes (100, epsilon 0.001),
played on fresh-seed games. The grid is resumable cell by cell: a cell whose JSON is written is skipped, a cell
whose run was stopped resumes from its latest checkpoint (``fovea train --resume``). ``--max-minutes`` is a budget
for this call: a cell still training when it runs out is sent SIGTERM (the run saves a checkpoint and stops) and the
grid stops, so a window of GPU time fills with as many cells as fit and the next call goes on from there.

Writes ``OUT/cells/GAME-sSEED.json`` per finished cell and ``OUT/summary.json``: per game its seeds, scores,
human-normalised scores and the published DER and DrQ(epsilon) scores beside them (``published.json`` in OUT, each
number with its source, null where none was entered), then the IQM, median and mean of the human-normalised scores
with 95% stratified-bootstrap intervals (``benchmarks/rl_stats.py``, as rliable computes them), the wall time per
run, and ``OUT/games.png``, ours beside the published scores, per game.

    python -m benchmarks.atari100k --games boxing breakout pong --seeds 1 2 [--max-minutes 50] [--device auto]
        [--runs-dir ~/fovea-runs/atari100k] [--extra "--eval-episodes 10"]

Last line: {"iqm", "iqm_ci", "median", "mean", "cells", "done", ...}.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks import rl_stats

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "atari100k"
SCORE = "eval/mean_return"


def cell_name(recipe: str, game: str, seed: int) -> str:
    return f"{recipe}-{game}-s{seed}"


def train_command(recipe: str, game: str, seed: int, run_dir: Path, device: str, extra: list[str]) -> list[str]:
    """The command that trains the cell (or resumes it, when its run folder holds a checkpoint); checkpoints hold
    the replay (up to 0.7 GB for 100k Atari steps) and the two newest are kept."""
    common = ["--device", device, "--wandb", "disabled", "--keep-checkpoints", "2"]
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        return [sys.executable, "-m", "fovea", "train", "--resume", str(run_dir), *common]
    # the replay goes into the checkpoints, so that a stopped cell resumes with the experience it had gathered
    return [sys.executable, "-m", "fovea", "train", recipe, "--env", game, "--seed", str(seed), "--name",
            run_dir.name, "--runs-dir", str(run_dir.parent), "--save-replay", "true", *common, *extra]  # fmt: skip


def device_name(requested: str) -> str:
    """The device a cell trains on, in words: the GPU's name, or the CPU with its core count."""
    import os

    if requested == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    import torch

    if (requested in ("auto", "cuda") or requested.startswith("cuda:")) and torch.cuda.is_available():
        return torch.cuda.get_device_name(0 if requested in ("auto", "cuda") else int(requested.split(":")[1]))
    return f"cpu ({os.cpu_count()} cores)"


def run_cell(cmd: list[str], deadline: float, grace_s: float = 180.0) -> tuple[str, float]:
    """Run ``cmd`` until it ends or ``deadline`` (time.monotonic()) passes, then SIGTERM it (its run checkpoints and
    stops); returns ("done" | "stopped" | "failed", wall seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        rc = proc.wait(timeout=max(1.0, deadline - start))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return "stopped", time.monotonic() - start
    return ("done" if rc == 0 else "failed"), time.monotonic() - start


def published_scores(out: Path) -> dict:
    """``out/published.json``'s per-game scores: {game: {"DER": x or None, "DrQ(eps)": y or None}}."""
    path = out / "published.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("games", {})


def summarize(out: Path, reps: int = 50_000) -> dict:
    """summary.json from the cells written under ``out/cells``: per-game figures and the aggregates of the
    human-normalised scores over the games (the first k seeds of each, k the fewest any game has: the bootstrap needs
    a full runs x games table)."""
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    published = published_scores(out)
    games: dict = {}
    for c in sorted(cells, key=lambda c: (c["game"], c["seed"])):
        g = games.setdefault(c["game"], {"seeds": [], "scores": [], "hns": []})
        g["seeds"].append(c["seed"])
        g["scores"].append(c["score"])
        g["hns"].append(float(rl_stats.human_normalized(c["score"], c["game"])))
    for game, g in games.items():
        g["mean_score"] = float(np.mean(g["scores"]))
        g["published"] = {k: published.get(game, {}).get(k) for k in ("DER", "DrQ(eps)")}
    summary: dict = {"games": games, "cells": len(cells)}
    if games:
        k = min(len(g["hns"]) for g in games.values())
        table = np.array([g["hns"][:k] for g in games.values()]).T  # (runs, games)
        summary.update(rl_stats.summarize(table, reps=reps), runs_per_game=k)
        summary["wall_s_per_run"] = float(np.mean([c["wall_s"] for c in cells]))
        for key in ("recipe", "agent_steps"):
            summary[key] = sorted({c[key] for c in cells})
        summary["devices"] = sorted({c["device"] for c in cells})
        summary["commits"] = sorted({c["commit"] for c in cells})
    summary["score"] = (
        f"{SCORE}: the final network's mean return over the recipe's evaluation episodes (100 at "
        "epsilon 0.001 for drq100k) on fresh-seed games; hns = (score - random) / (human - random)"
    )
    source = out / "published.json"
    summary["published_source"] = json.loads(source.read_text()).get("source") if source.exists() else None
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if games:
        bars(games, out / "games.png")
    return summary


def bars(games: dict, path: Path) -> None:
    """Per game, the human-normalised score of each of our seeds (dots), their mean (a bar) and the published DER
    and DrQ(epsilon) scores (ticks), drawn with PIL."""
    w, row, left = 760, 34, 150
    img = Image.new("RGB", (w, 40 + row * len(games)), "white")
    d = ImageDraw.Draw(img)
    hi = max([1.0] + [max(g["hns"]) for g in games.values()])
    lo = min([0.0] + [min(g["hns"]) for g in games.values()])
    x = lambda v: left + (w - left - 20) * (v - lo) / (hi - lo)  # noqa: E731
    d.text((left, 8), f"human-normalised score ({lo:.2f} .. {hi:.2f}); bar: ours; | blue DER, | red DrQ(eps)", "black")
    d.line([(x(0), 26), (x(0), img.height - 4)], "gray")
    for i, (game, g) in enumerate(games.items()):
        y = 30 + i * row
        d.text((8, y + 8), game, "black")
        d.rectangle([x(min(0.0, np.mean(g["hns"]))), y + 6, x(max(0.0, np.mean(g["hns"]))), y + 22], "#8fbf8f")
        for h in g["hns"]:
            d.ellipse([x(h) - 3, y + 11, x(h) + 3, y + 17], "#206020")
        for name, colour in (("DER", "blue"), ("DrQ(eps)", "red")):
            score = g["published"].get(name)
            if score is not None:
                v = float(np.clip(rl_stats.human_normalized(score, game), lo, hi))
                d.line([(x(v), y + 2), (x(v), y + 26)], colour, 2)
    img.save(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", nargs="+", default=["boxing", "breakout", "pong"], choices=rl_stats.GAMES,
                   metavar="GAME", help="ale-py names of Atari 100k games (default: boxing breakout pong)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--recipe", default="drq100k")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-minutes", type=float, default=0.0, help="budget of this call (0: no limit)")
    p.add_argument("--runs-dir", default=str(Path.home() / "fovea-runs" / "atari100k"))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--extra", default="", help="overrides for every new cell, e.g. '--eval-episodes 10'")
    p.add_argument("--reps", type=int, default=50_000, help="bootstrap resamples (rliable's default)")
    p.add_argument("--commit", help="the Fovea commit the cells train with (default: this checkout's HEAD)")
    args = p.parse_args(argv)
    runs_dir, out = Path(args.runs_dir).expanduser(), Path(args.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout.strip()  # fmt: skip
    device = device_name(args.device)
    deadline = time.monotonic() + (args.max_minutes * 60 if args.max_minutes > 0 else 1e12)
    status = {}
    for game in args.games:
        for seed in args.seeds:
            name = cell_name(args.recipe, game, seed)
            cell, run_dir = out / "cells" / f"{game}-s{seed}.json", runs_dir / name
            if cell.exists():
                status[name] = "skipped (finished)"
                continue
            ledger = run_dir / "grid_wall.json"  # every session of this cell: its command, wall time summed
            sessions = json.loads(ledger.read_text()) if ledger.exists() else {"wall_s": 0.0, "commands": []}
            summary_path = run_dir / "summary.json"  # written when the run finished (a stopped run has none)
            if summary_path.exists():
                outcome = "done"  # finished in an earlier call that stopped before writing the cell
            elif time.monotonic() >= deadline:
                status[name] = "waiting (budget spent)"
                continue
            else:
                cmd = train_command(args.recipe, game, seed, run_dir, args.device, args.extra.split())
                outcome, wall = run_cell(cmd, deadline)
                sessions = {"wall_s": sessions["wall_s"] + wall, "commands": [*sessions["commands"], " ".join(cmd)]}
                if run_dir.is_dir():
                    ledger.write_text(json.dumps(sessions) + "\n")
            status[name] = outcome
            if outcome != "done" or not summary_path.exists():
                continue
            s = json.loads(summary_path.read_text())
            config = json.loads((run_dir / "config.json").read_text())
            record = {"game": game, "seed": seed, "recipe": args.recipe, "score": s[SCORE],
                      "hns": float(rl_stats.human_normalized(s[SCORE], game)), "agent_steps": s["agent_steps"],
                      "eval_episodes": s.get("eval/episodes"), "best_mean_return": s.get("eval/best_mean_return"),
                      "wall_s": sessions["wall_s"], "device": device, "commit": commit,
                      "commands": sessions["commands"], "config": config}  # fmt: skip
            cell.write_text(json.dumps(record, indent=1) + "\n")
    summary = summarize(out, reps=args.reps)
    line = {k: summary.get(k) for k in ("iqm", "iqm_ci", "median", "mean", "wall_s_per_run", "cells")}
    line["status"] = status
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
