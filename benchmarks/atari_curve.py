"""An Atari learning curve from a run folder, committed as evidence: summary.json, curve.png and the curve's points.

Reads ``RUN_DIR/metrics.jsonl`` (and config.json): the training games' returns against agent steps and wall time,
and the periodic evaluations (``eval/mean_return``: the network at that step on games seeded apart from every
training game). ``steps_to`` gives, for each threshold, the first evaluation at or above it (None if none was).
``wall_s_to`` the training time to that evaluation (the W&B runtimes of the run's sessions added up, pauses left
out), and ``wall_s`` the whole run's. ``final_return`` is the last evaluation's and ``best_return`` the best
one's; where the run has finished, its summary's fresh-game score of the final network is added as
``final_fresh_return`` (or, for a stopped run, that of ``fovea eval RUN_DIR``'s eval.json).

    python -m benchmarks.atari_curve ~/fovea-runs/a2c-pong --out benchmarks/results/a2c_pong --commit 61122f3

Last line: the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

THRESHOLDS = (-10, 0, 10, 18)


def read(run_dir: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows, json.loads((run_dir / "config.json").read_text())


def training_seconds(run_dir: Path) -> list[tuple[int, float]]:
    """(step, seconds of training so far) for every history row of the run's W&B offline files, one file per
    session, each session's ``_runtime`` added to the sessions before it (the pauses between sessions do not
    count). Empty when the run logged no W&B offline files."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from wandb_reader import history  # the offline-file reader the tests use

    out, before = [], 0.0
    for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        rows = [r for r in history(f) if "_runtime" in r and "global_step" in r]
        out += [(int(r["global_step"]), before + float(r["_runtime"])) for r in rows]
        before += max((float(r["_runtime"]) for r in rows), default=0.0)
    return sorted(out)


def smooth(y: np.ndarray, k: int) -> np.ndarray:
    """Running mean over the last ``k`` points (fewer at the start)."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    i = np.arange(1, len(y) + 1)
    return (c[i] - c[np.maximum(i - k, 0)]) / np.minimum(i, k)


def plot(train: np.ndarray, evals: np.ndarray, path: Path, title: str, lo: float = -21, hi: float = 21) -> None:
    """Training returns (grey, and their running mean over 20 games in blue) and evaluations (red dots) against
    millions of agent steps, drawn with PIL."""
    w, h, m = 900, 500, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    x_max = max(float(train[:, 0].max()) if len(train) else 1.0, float(evals[:, 0].max()) if len(evals) else 1.0)
    sx = lambda x: m + (w - 2 * m) * x / x_max  # noqa: E731
    sy = lambda y: h - m - (h - 2 * m) * (y - lo) / (hi - lo)  # noqa: E731
    d.rectangle([m, m, w - m, h - m], outline="black")
    for y in range(int(lo), int(hi) + 1, 7 if hi - lo > 30 else 5):
        d.line([m - 4, sy(y), w - m, sy(y)], fill=(225, 225, 225))
        d.text((m - 30, sy(y) - 6), f"{y:d}", fill="black")
    for i in range(6):
        x = x_max * i / 5
        d.text((sx(x) - 12, h - m + 8), f"{x / 1e6:.1f}M", fill="black")
    if len(train):
        pts = list(zip(map(sx, train[:, 0]), map(sy, train[:, 1]), strict=True))
        for p in pts:
            d.point(p, fill=(170, 170, 170))
        mean = smooth(train[:, 1], 20)
        d.line(list(zip(map(sx, train[:, 0]), map(sy, mean), strict=True)), fill=(30, 80, 200), width=2)
    for x, y in evals:
        d.ellipse([sx(x) - 4, sy(y) - 4, sx(x) + 4, sy(y) + 4], fill=(210, 40, 40))
    d.text((m, 20), title, fill="black")
    d.text((w - m - 330, 20), "grey: training games, blue: mean of 20, red: evaluations", fill="black")
    d.text((w // 2 - 40, h - 25), "agent steps", fill="black")
    img.save(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="folder for summary.json, curve.png and curve.json")
    p.add_argument("--commit", required=True, help="the Fovea commit the run trained with")
    p.add_argument("--device", default="cpu (2 cores, shared with other jobs)")
    p.add_argument("--command", default="", help="the command that trained the run")
    args = p.parse_args(argv)
    run_dir, out = Path(args.run_dir).expanduser(), Path(args.out)
    rows, config = read(run_dir)
    train = np.array([(r["step"], r["train/episodic_return"]) for r in rows if "train/episodic_return" in r])
    evals = np.array([(r["step"], r["eval/mean_return"]) for r in rows if "eval/mean_return" in r])
    # training time: the sessions' W&B runtimes added up (pauses between sessions left out); without W&B
    # files, from the run folder's creation to its latest metrics line
    timed = training_seconds(run_dir)
    folder_s = (run_dir / "metrics.jsonl").stat().st_mtime - (run_dir / "config.json").stat().st_mtime
    wall = timed[-1][1] if timed else folder_s
    steps = int(max(r["step"] for r in rows))
    eval_list = [(int(s), float(v)) for s, v in evals]

    def seconds_at(step: int | None) -> float | None:
        return next((round(t, 1) for s, t in timed if s >= step), None) if step is not None and timed else None

    summary = {
        "algo": config["recipe"].split("-")[0], "env": config["config"]["env"], "recipe": config["recipe"],
        "agent_steps": steps, "wall_s": round(wall, 1) if wall else None, "device": args.device, "commit": args.commit,
        "command": args.command, "best_return": max(v for _, v in eval_list) if eval_list else None,
        "final_return": eval_list[-1][1] if eval_list else None,
        "steps_to": {str(t): next((s for s, v in eval_list if v >= t), None) for t in THRESHOLDS},
        "wall_s_to": {str(t): seconds_at(next((s for s, v in eval_list if v >= t), None)) for t in THRESHOLDS},
        "evaluations": eval_list, "eval_episodes": config["config"]["eval_episodes"],
        "figure": "eval/mean_return: the network at that step on games seeded apart from every training game",
    }  # fmt: skip
    done, scored = run_dir / "summary.json", run_dir / "eval.json"
    if done.exists():
        summary["final_fresh_return"] = json.loads(done.read_text()).get("eval/mean_return")
    elif scored.exists():  # `fovea eval RUN_DIR` of a stopped run: its final network on fresh games
        e = json.loads(scored.read_text())
        summary.update({"final_fresh_return": e.get("eval/mean_return"), "final_fresh_std": e.get("eval/std_return"),
                        "final_fresh_episodes": e.get("eval/episodes"), "final_fresh_steps": e.get("trained_steps")})
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "curve.json").write_text(json.dumps({"train": train.round(2).tolist(), "eval": eval_list}) + "\n")
    device = args.device.split(":")[0]  # the title keeps the device's name; summary.json has the rest
    plot(train, evals, out / "curve.png", f"{config['recipe']}: {steps / 1e6:.2f}M agent steps, {device}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
