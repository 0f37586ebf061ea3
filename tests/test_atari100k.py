"""The Atari 100k benchmark: human-normalised scores and rliable's aggregates, the resumable grid of (game, seed)
cells and its summary, and (slow) a short run of the drq100k recipe that trains, checkpoints, resumes and
evaluates."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits at the repository root, uninstalled
from benchmarks import atari100k, rl_stats  # noqa: E402

# Human-normalised scores of 3 runs (rows) x 5 games, and what rliable 1.2.0 gives for them: the point estimates of
# metrics.aggregate_iqm / aggregate_median / aggregate_mean and library.get_interval_estimates(..., reps=5000) after
# np.random.seed(3) (run with rliable 1.2.0, arch 7.2.0, pandas 2.3.3 in a separate virtualenv).
TABLE = np.array([[0.10, 1.50, -0.02, 0.40, 0.95], [0.25, 0.80, 0.01, 0.35, 1.20], [0.05, 2.10, 0.00, 0.60, 0.70]])
RLIABLE = {
    "iqm": (0.4666666666666667, (0.4055555555555555, 0.5833333333333334)),
    "median": (0.45, (0.3499999999999999, 0.6)),
    "mean": (0.5993333333333333, (0.47000000000000003, 0.7266666666666667)),
}


def test_human_normalised_scores():
    for game in rl_stats.GAMES:
        assert rl_stats.human_normalized(rl_stats.RANDOM[game], game) == 0
        assert rl_stats.human_normalized(rl_stats.HUMAN[game], game) == pytest.approx(1)
    assert len(rl_stats.GAMES) == 26 and rl_stats.human_normalized(-2.1, "pong") == pytest.approx(18.6 / 35.3)
    with pytest.raises(KeyError, match="no random and human scores for 'Pong'"):
        rl_stats.human_normalized(0, "Pong")


def test_published_scores_name_their_sources_and_cover_the_26_games():
    published = json.loads((atari100k.OUT / "published.json").read_text())
    assert set(published["games"]) == set(rl_stats.GAMES)
    for name, source in published["sources"].items():
        assert source["paper"] and {"repo", "path", "commit"} <= set(source["data"]), name
    for game, scores in published["games"].items():
        assert set(scores) == set(published["sources"]), game
        for name, score in scores.items():
            if score is None:  # a missing figure says why
                assert published["missing"][game][name], (game, name)
            else:  # a game-name mix-up would put a score far off the random-to-human scale
                assert -1 < rl_stats.human_normalized(score, game) < 3, (game, name, score)


def test_aggregates_by_hand():
    middle = np.sort(TABLE.ravel())[3:-3]  # 15 scores: the 25%-trimmed mean drops int(15 / 4) = 3 at each end
    assert rl_stats.aggregate_iqm(TABLE) == pytest.approx(middle.mean()) == pytest.approx(4.2 / 9)
    per_game = TABLE.mean(0)
    assert rl_stats.aggregate_median(TABLE) == pytest.approx(0.45) == pytest.approx(np.median(per_game))
    assert rl_stats.aggregate_mean(TABLE) == pytest.approx(per_game.mean())


@pytest.mark.parametrize("name", sorted(RLIABLE))
def test_aggregates_and_intervals_equal_rliable_s(name):
    point, (lo, hi) = RLIABLE[name]
    assert rl_stats.AGGREGATES[name](TABLE) == pytest.approx(point, rel=1e-12)
    ci = rl_stats.stratified_bootstrap_ci(TABLE, name, reps=5000, seed=3, chunk=777)
    np.testing.assert_allclose(ci, (lo, hi), rtol=1e-12)


def test_aggregates_equal_rliable_s_on_random_scores():
    """rliable itself (the `bench` extra, which `test` pulls in), not a table copied from it."""
    from rliable import library as rly
    from rliable import metrics

    scores = np.random.default_rng(0).gamma(1.0, 0.5, size=(4, 7))
    for name, fn in (("iqm", metrics.aggregate_iqm), ("median", metrics.aggregate_median)):
        np.random.seed(11)
        point, interval = rly.get_interval_estimates({"x": scores}, lambda s, f=fn: np.array([f(s)]), reps=3000)
        assert rl_stats.AGGREGATES[name](scores) == pytest.approx(float(point["x"][0]), rel=1e-12)
        ours = rl_stats.stratified_bootstrap_ci(scores, name, reps=3000, seed=11)
        np.testing.assert_allclose(ours, interval["x"][:, 0], rtol=1e-12)


def test_the_grid_resumes_cell_by_cell_and_writes_the_summary(tmp_path, monkeypatch, capsys):
    """A fake trainer: the first call stops the breakout seed-2 cell part-way (as the budget's SIGTERM would); the
    second call skips the finished cells and resumes that one from its checkpoint."""
    calls = []

    def fake(cmd, deadline):
        resume = "--resume" in cmd
        run_dir = Path(cmd[cmd.index("--resume") + 1]) if resume else (
            Path(cmd[cmd.index("--runs-dir") + 1]) / cmd[cmd.index("--name") + 1])  # fmt: skip
        calls.append((run_dir.name, resume))
        (run_dir / "checkpoints" / "step_000000500").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text("{}")
        if run_dir.name == "drq100k-breakout-s2" and not resume:
            return "stopped", 30.0
        score = {"pong": -15.0, "breakout": 10.0}[run_dir.name.split("-")[1]] + int(run_dir.name[-1])
        (run_dir / "summary.json").write_text(json.dumps({"eval/mean_return": score, "agent_steps": 100_000}))
        return "done", 60.0

    monkeypatch.setattr(atari100k, "run_cell", fake)
    argv = ["--games", "pong", "breakout", "--seeds", "1", "2", "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "out"), "--reps", "200", "--commit", "abc", "--device", "cpu"]  # fmt: skip
    first = atari100k.main(argv)
    assert first["status"]["drq100k-breakout-s2"] == "stopped" and first["cells"] == 3
    second = atari100k.main(argv)
    assert calls[4:] == [("drq100k-breakout-s2", True)]  # only the stopped cell ran again, resumed
    assert set(second["status"].values()) == {"skipped (finished)", "done"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    pong = summary["games"]["pong"]
    assert pong["seeds"] == [1, 2] and pong["scores"] == [-14.0, -13.0]
    assert pong["hns"] == pytest.approx([(s + 20.7) / 35.3 for s in (-14.0, -13.0)])
    assert pong["published"] == {"DER": None, "DrQ(eps)": None}
    table = np.array([summary["games"][g]["hns"] for g in ("breakout", "pong")]).T
    assert summary["iqm"] == pytest.approx(rl_stats.aggregate_iqm(table))
    assert summary["iqm_ci"][0] <= summary["iqm"] <= summary["iqm_ci"][1]
    assert {"median", "mean", "wall_s_per_run"} <= set(summary)
    cell = json.loads((tmp_path / "out" / "cells" / "breakout-s2.json").read_text())
    assert cell["wall_s"] == 90.0 and cell["commit"] == "abc"  # both sessions of the stopped cell counted
    assert (tmp_path / "out" / "games.png").exists()


@pytest.mark.slow
def test_a_short_drq100k_run_trains_checkpoints_resumes_and_evaluates(in_tmp, monkeypatch, capsys):
    from test_exact_resume import stop_after

    from fovea import checkpoint
    from fovea.cli import main

    argv = ["train", "drq100k", "--env", "pong", "--name", "d", "--wandb", "disabled", "--total-steps", "2000",
            "--buffer-size", "3000", "--batch-size", "8", "--save-replay", "true", "--checkpoint-every", "500",
            "--eval-episodes", "1"]  # fmt: skip
    with monkeypatch.context() as m:
        stop_after(m, 1000)
        assert main(argv) == 128 + signal.SIGTERM
    capsys.readouterr()
    assert main(["train", "--resume", "runs/d"]) == 0
    out = capsys.readouterr()
    assert "from step_000001000" in out.err
    figures = json.loads(out.out.strip().splitlines()[-1])
    assert figures["agent_steps"] == 2000 and -21 <= figures["eval/mean_return"] <= 21 and figures["eval/episodes"] == 1
    state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/d/checkpoints")[-1])
    opt = state["objects"]["optimizer"]["state"]
    assert opt and all(int(s["step"]) == 401 for s in opt.values())  # one update per agent step 1600..2000, none redone
    rows = [json.loads(line) for line in (in_tmp / "runs/d/metrics.jsonl").read_text().splitlines()]
    eps = {r["step"]: r["train/epsilon"] for r in rows if "train/epsilon" in r}
    assert all(e == 1.0 for s, e in eps.items() if s <= 1600) and all(e < 1 for s, e in eps.items() if s > 1700)


def test_the_sb3_peer_runs_the_recipes_replay_ratio_and_optimiser():
    """benchmarks/dqn_atari_throughput --recipe drq100k times SB3's DQN with drq100k's own settings where SB3 has
    them: one update per agent step, 10-step returns, Adam 1e-4 with eps 1.5e-4, the target copied every update."""
    from benchmarks import dqn_atari_throughput as bench
    from fovea.config import get_recipe

    cfg, peer = get_recipe("drq100k").config, bench.SB3_SETTINGS["drq100k"]
    assert (cfg.train_every, cfg.gradient_steps, cfg.batch_size) == (peer["train_freq"], 1, 32)
    assert (cfg.n_step, cfg.lr, cfg.optimizer) == (peer["n_steps"], peer["learning_rate"], "adam")
    assert cfg.optimizer_eps == peer["policy_kwargs"]["optimizer_kwargs"]["eps"]
    assert (cfg.target_update_every, cfg.tau) == (peer["target_update_interval"], 1.0)
    assert bench.fovea_config(300, 200, "off", False, "auto", "drq100k").n_step == 10


@pytest.mark.slow
def test_the_drq100k_throughput_benchmark_prints_both_sides(tmp_path):
    import os
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.dqn_atari_throughput", "--recipe", "drq100k", "--steps", "300",
           "--learning-starts", "200", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "disabled", "TMPDIR": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["recipe"] == "drq100k" and figures["steps"] == 300
    for key in ("ours", "peer", "ratio"):
        assert figures[key] > 0, key


@pytest.mark.slow
def test_the_update_benchmark_times_every_variant(tmp_path):
    import os
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.dqn_update", "--updates", "1", "--rounds", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(figures["ms"]) == {"foreach-fp32", "fused-fp32", "foreach-bf16", "fused-bf16"}
    assert figures["ratio"]["foreach-fp32"] == 1.0 and all(v > 0 for v in figures["ms"].values())
