"""benchmarks.atari_curve: a run folder's evaluations turned into the committed summary and picture."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits at the repository root, uninstalled
from benchmarks import atari_curve  # noqa: E402


def test_thresholds_are_the_first_evaluation_at_or_above_them(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"recipe": "a2c-pong", "config": {"env": "pong", "eval_episodes": 10}}))
    rows = [{"step": s, "train/episodic_return": r} for s, r in [(100, -21.0), (200, -5.0), (300, 12.0)]]
    rows += [{"step": s, "eval/mean_return": v} for s, v in [(100, -20.0), (200, -9.5), (300, 0.0), (400, 10.5)]]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    summary = atari_curve.main([str(run), "--out", str(out), "--commit", "abc1234"])
    assert summary["steps_to"] == {"-10": 200, "0": 300, "10": 400, "18": None}
    assert summary["wall_s_to"] == {"-10": None, "0": None, "10": None, "18": None}  # no W&B files: no times
    assert summary["best_return"] == 10.5 and summary["final_return"] == 10.5 and summary["agent_steps"] == 400
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
