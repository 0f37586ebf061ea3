"""benchmarks/agent_seeds: a variant's tag names its JSON and run folders, the JSON is rewritten after every seed,
every seed already in the JSON is kept rather than trained again, and a JSON with other overrides is never
overwritten."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits at the repository root, uninstalled
from benchmarks import agent_seeds  # noqa: E402


def test_a_tagged_study_spans_sessions_through_its_json(tmp_path, monkeypatch):
    trained = []

    def fake(recipe, seed, runs_dir, extra, tag=""):
        trained.append((recipe, seed, tag, tuple(extra)))
        if seed == 3:
            raise KeyboardInterrupt  # the session ends during seed 3
        return {"eval/mean_return": 10.0 * seed, "agent_steps": 100, "wall_s": 2.0}

    monkeypatch.setattr(agent_seeds, "run_seed", fake)
    args = ["a2c-breakout", "--seeds", "1", "2", "3", "--tag", "rmsprop-tf", "--extra", "--optimizer rmsprop-tf",
            "--out", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--commit", "abc"]  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        agent_seeds.main(args)
    saved = json.loads((tmp_path / "a2c-breakout-rmsprop-tf.json").read_text())
    assert saved["seeds"] == [1, 2] and saved["scores"] == [10.0, 20.0] and saved["extra"] == "--optimizer rmsprop-tf"
    assert not (tmp_path / "a2c-breakout.json").exists()

    trained.clear()
    monkeypatch.setattr(agent_seeds, "run_seed", lambda r, s, d, e, tag="": (
        trained.append((r, s, tag)) or {"eval/mean_return": 30.0, "agent_steps": 100, "wall_s": 2.0}))  # fmt: skip
    line = agent_seeds.main(args)
    assert trained == [("a2c-breakout", 3, "rmsprop-tf")]  # seeds 1 and 2 came from the JSON
    figures = line["recipes"]["a2c-breakout-rmsprop-tf"]
    assert figures["scores"] == [10.0, 20.0, 30.0] and figures["iqm"] == pytest.approx(20.0)

    trained.clear()  # a later session asks for seed 4 alone: seeds 1-3 stay in the study
    line = agent_seeds.main([*args[:2], "4", *args[5:]])
    assert trained == [("a2c-breakout", 4, "rmsprop-tf")]
    saved = json.loads((tmp_path / "a2c-breakout-rmsprop-tf.json").read_text())
    assert saved["seeds"] == [1, 2, 3, 4] and saved["scores"] == [10.0, 20.0, 30.0, 30.0]
    assert "--seeds 1 2 3 4 " in saved["command"] and saved["commit"] == "abc"
    assert line["recipes"]["a2c-breakout-rmsprop-tf"]["seeds"] == [1, 2, 3, 4]


def test_a_study_with_other_overrides_or_a_corrupt_json_is_refused_not_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(agent_seeds, "run_seed", lambda *a, **k: pytest.fail("nothing may train"))
    path = tmp_path / "a2c-breakout-rmsprop-tf.json"
    path.write_text(json.dumps({"extra": "--optimizer rmsprop-tf", "runs": [{"seed": 1, "final": 3.0}]}))
    before = path.read_text()
    args = ["a2c-breakout", "--seeds", "2", "--tag", "rmsprop-tf", "--out", str(tmp_path), "--runs-dir",
            str(tmp_path / "runs"), "--commit", "abc"]  # fmt: skip
    with pytest.raises(SystemExit, match="--extra '--optimizer rmsprop-tf', not '--optimizer rmsprop'.*--tag"):
        agent_seeds.main([*args, "--extra", "--optimizer rmsprop"])
    assert path.read_text() == before
    path.write_text(before[:20])
    with pytest.raises(SystemExit, match="not valid JSON.*git checkout"):
        agent_seeds.main([*args, "--extra", "--optimizer rmsprop-tf"])
    assert path.read_text() == before[:20]


def test_the_run_folder_carries_the_tag(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, check, stdout):
        calls.append(cmd)
        run_dir = Path(cmd[cmd.index("--runs-dir") + 1]) / cmd[cmd.index("--name") + 1]
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"eval/mean_return": 1.0, "agent_steps": 5}))

    monkeypatch.setattr(agent_seeds.subprocess, "run", fake_run)
    agent_seeds.run_seed("a2c-pong", 2, tmp_path, ["--optimizer", "rmsprop-tf"], tag="tf")
    assert calls[0][calls[0].index("--name") + 1] == "a2c-pong-tf-seed2" and calls[0][-2:] == ["--optimizer",
                                                                                                "rmsprop-tf"]
    agent_seeds.run_seed("a2c-pong", 2, tmp_path, [])
    assert calls[1][calls[1].index("--name") + 1] == "a2c-pong-seed2"
