"""W&B as its users expect: a trained agent's offline W&B run holds a model artifact (latest and best), a table,
system-metric settings and an evaluation video; `fovea eval` is its own W&B run; search tables and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wandb_reader import history, records

from fovea.cli import main

pytestmark = pytest.mark.slow  # one tiny agent trained, filmed and evaluated: about 20 s on 2 cores


def parsed(path: Path) -> list:
    """Every record of an offline W&B run file, parsed."""
    from wandb.proto import wandb_internal_pb2

    out = []
    for data in records(path):
        r = wandb_internal_pb2.Record()
        r.ParseFromString(data)
        out.append(r)
    return out


def offline_runs(run_dir: Path) -> dict[str, list]:
    """job_type -> the parsed records of each offline W&B run in ``run_dir``."""
    runs: dict[str, list] = {}
    for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        recs = parsed(f)
        job = next(r.run.job_type for r in recs if r.WhichOneof("record_type") == "run")
        runs.setdefault(job, []).append(recs)
    return runs


def of_type(recs: list, kind: str) -> list:
    return [getattr(r, kind) for r in recs if r.WhichOneof("record_type") == kind]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """A tiny DQN on Catch trained offline with two evaluations, each filmed, then `fovea eval` of it."""
    import os

    root = tmp_path_factory.mktemp("agent")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        argv = ["train", "dqn-catch", "--name", "c", "--total-steps", "400", "--learning-starts", "100",
                "--eval-every", "200", "--eval-episodes", "2", "--eval-video", "on", "--checkpoint-every", "60"]  # fmt: skip
        assert main(argv) == 0
        assert main(["eval", "runs/c", "--episodes", "3", "--wandb", "offline"]) == 0
    finally:
        os.chdir(cwd)
    return root / "runs" / "c"


def test_training_run_holds_model_artifacts_with_latest_and_best(agent):
    (train,) = offline_runs(agent)["train"]
    arts = of_type(train, "artifact")
    assert arts and all(a.type == "model" and a.name == "run-c-model" for a in arts)
    files = {e.path for e in arts[-1].manifest.contents}
    assert "config.json" in files and any(f.startswith("checkpoints/step_") and f.endswith("safetensors") for f in files)
    aliases = [set(a.aliases) for a in arts]
    assert all("latest" in a for a in aliases) and any("best" in a for a in aliases)


def test_training_run_settings_job_group_tags_and_system_metrics(agent):
    (train,) = offline_runs(agent)["train"]
    (run,) = of_type(train, "run")
    assert run.job_type == "train" and run.run_group.startswith("dqn-catch-")  # overridden fields: its own group
    assert set(run.tags) >= {"dqn-catch", "agents", "train"}
    stats = {i.key for s in of_type(train, "stats") for i in s.item}  # (x_disable_stats=True recorded none)
    assert {"proc.memory.rssMB", "proc.cpu.threads"} <= stats
    assert (next(agent.glob("wandb/offline-run-*/files")) / "output.log").is_file()  # the console, as W&B shows it


def test_training_run_films_each_evaluation(agent):
    (train,) = offline_runs(agent)["train"]
    videos = [r for r in history(next(agent.glob("wandb/offline-run-*/run-*.wandb"))) if "eval/video/path" in r]
    assert len(list((agent / "videos").glob("play-step*.mp4"))) >= 2
    assert {r["global_step"] for r in videos} >= {200, 400}


def test_eval_is_its_own_run_linked_to_training_and_leaves_its_summary_alone(agent):
    runs = offline_runs(agent)
    (train,), (ev,) = runs["train"], runs["eval"]
    (t,), (e,) = of_type(train, "run"), of_type(ev, "run")
    assert e.run_id != t.run_id and e.run_group == t.run_group
    config = {i.key: json.loads(i.value_json) for i in e.config.update}
    assert config["train_run_id"] == t.run_id and config["model_artifact"] == "run-c-model:latest"
    summary = {i.key: json.loads(i.value_json) for s in of_type(ev, "summary") for i in s.update}
    assert summary["eval/episodes"] == 3 and "run" not in summary  # no local path in the summary
    train_summary = {i.key: json.loads(i.value_json) for s in of_type(train, "summary") for i in s.update}
    assert train_summary.get("eval/episodes") == 2  # what training wrote, not the evaluation's 3
