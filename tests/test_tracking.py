"""W&B as its users expect: a trained agent's offline W&B run holds a model artifact (latest and best), a table,
system-metric settings and an evaluation video; `fovea eval` is its own W&B run; search tables and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_CNN
from wandb_reader import history, records

from fovea.cli import main

slow = pytest.mark.slow  # one tiny agent trained, filmed and evaluated: about 20 s on 2 cores


def parsed(path: Path) -> list:
    """Every record of an offline W&B run file, parsed."""
    from wandb.proto import wandb_internal_pb2

    out = []
    for data in records(path):
        r = wandb_internal_pb2.Record()
        r.ParseFromString(data)
        out.append(r)
    return out


def offline_files(run_dir: Path) -> dict[str, list[Path]]:
    """job_type -> the offline W&B run files in ``run_dir`` (training and `fovea eval` each write one)."""
    files: dict[str, list[Path]] = {}
    for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        job = next(r.run.job_type for r in parsed(f) if r.WhichOneof("record_type") == "run")
        files.setdefault(job, []).append(f)
    return files


def offline_runs(run_dir: Path) -> dict[str, list]:
    """job_type -> the parsed records of each offline W&B run in ``run_dir``."""
    return {job: [parsed(f) for f in files] for job, files in offline_files(run_dir).items()}


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
        argv = ["train", "dqn-catch", "--name", "c", "--total-steps", "400", "--learning-starts", "100", "--eval-every",
                "200", "--eval-episodes", "2", "--eval-video", "on", "--checkpoint-every", "240"]  # fmt: skip
        assert main(argv) == 0
        assert main(["eval", "runs/c", "--episodes", "3", "--wandb", "offline"]) == 0
    finally:
        os.chdir(cwd)
    return root / "runs" / "c"


@slow
def test_training_run_holds_model_artifacts_with_latest_and_best(agent):
    (train,) = offline_runs(agent)["train"]
    arts = of_type(train, "artifact")
    assert arts and all(a.type == "model" and a.name == "run-c-model" for a in arts)
    files = {e.path for e in arts[-1].manifest.contents}
    assert "config.json" in files
    assert any(f.startswith("checkpoints/step_") and f.endswith("tensors.safetensors") for f in files)
    aliases = [set(a.aliases) for a in arts]
    assert all("latest" in a for a in aliases) and any("best" in a for a in aliases)
    # the first checkpoint at once, then at most one version per FOVEA_ARTIFACT_EVERY_S; the final one at the end
    assert len(arts) == 2 and any(f.startswith("checkpoints/step_000000400/") for f in files)


@slow
def test_training_run_settings_job_group_tags_and_system_metrics(agent):
    (train,) = offline_runs(agent)["train"]
    (run,) = of_type(train, "run")
    assert run.job_type == "train" and run.run_group.startswith("dqn-catch-")  # overridden fields: its own group
    assert set(run.tags) >= {"dqn-catch", "agents", "train"}
    stats = {i.key for s in of_type(train, "stats") for i in s.item}  # (x_disable_stats=True recorded none)
    assert {"proc.memory.rssMB", "proc.cpu.threads"} <= stats
    # (the console's output.log is not asserted: W&B's console wrap catches what reaches the sys.stdout/stderr it
    # wrapped at init, which in a long pytest session are pytest's capture objects; the whole slow tier wrote none)


@slow
def test_training_run_films_each_evaluation(agent):
    (train,) = offline_files(agent)["train"]
    videos = [r for r in history(train) if "eval/video/path" in r]
    assert len(list((agent / "videos").glob("play-step*.mp4"))) >= 2
    assert {r["global_step"] for r in videos} >= {200, 400}


@slow
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


@pytest.mark.slow
def test_a_stopped_search_resumes_skipping_finished_trials_and_logs_a_table(in_tmp, capsys):
    argv = ["search", "cnn-digits", "--param", "lr=log:1e-3:1e-1", "--trials", "2", "--rounds", "1", "--name", "s",
            "--epochs", "1", "--wandb", "offline", *TINY_CNN]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    log = in_tmp / "runs/s/trials.jsonl"
    rows = log.read_text().splitlines()
    log.write_text(rows[0] + "\n")  # as if stopped during trial-01
    shutil.rmtree(in_tmp / "runs/s/trial-01")
    kept = (in_tmp / "runs/s/trial-00/metrics.jsonl").stat().st_mtime_ns
    assert main(argv) == 0  # (before: "runs/s already exists; pick another --name")
    out = capsys.readouterr()
    again = json.loads(out.out.strip().splitlines()[-1])
    assert "1 finished trial(s) skipped" in out.err and again["trials"] == first["trials"]
    assert (in_tmp / "runs/s/trial-00/metrics.jsonl").stat().st_mtime_ns == kept
    assert len(log.read_text().splitlines()) == 2
    tables = [r for f in (in_tmp / "runs/s/wandb").glob("offline-run-*/run-*.wandb") for r in history(f)
              if r.get("search/trials/_type") == "table-file"]  # fmt: skip
    assert tables and tables[-1]["search/trials/nrows"] == 2
    assert main([*argv[: -len(TINY_CNN)], "--trials", "3", *TINY_CNN]) == 2  # another search under the same name
    assert "holds another search" in capsys.readouterr().err


def test_ctrl_c_during_eval_says_stopped_not_checkpoint(monkeypatch, capsys):
    import fovea.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fovea.cli, "run_job", interrupted)
    assert main(["eval", "runs/whatever"]) == 130
    err = capsys.readouterr().err
    assert "Stopped." in err and "checkpoint" not in err


@pytest.mark.slow
def test_sample_interpolation_has_its_own_file_and_o_writes_the_suffix_format(in_tmp, capsys):
    assert main(["train", "vae-digits", "--name", "v", "--epochs", "1", "--wandb", "disabled"]) == 0
    assert main(["sample", "runs/v", "-n", "8", "--wandb", "disabled"]) == 0
    assert main(["sample", "runs/v", "-n", "8", "--interpolate", "--wandb", "disabled"]) == 0
    samples = in_tmp / "runs/v/samples"
    assert (samples / "sample_seed0.png").is_file() and (samples / "interpolation_seed0.png").is_file()
    assert main(["sample", "runs/v", "-n", "8", "-o", "grid.jpg", "--wandb", "disabled"]) == 0
    assert (in_tmp / "grid.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    capsys.readouterr()
    assert main(["sample", "runs/v", "-n", "8", "-o", "grid.txt", "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    assert "-o grid.txt: name a picture file ending in .png, .jpg" in err and "Traceback" not in err


def test_fetch_artifact_downloads_a_run_folder_and_names_what_failed(in_tmp, monkeypatch):
    import wandb

    from fovea.errors import RunError
    from fovea.run import read_run
    from fovea.tracking import fetch_artifact

    asked = []

    class Artifact:  # what wandb.Api().artifact returns: a name with its version, and download(root)
        name, version = "run-c-model:v3", "v3"

        def download(self, root: str) -> str:
            (Path(root) / "checkpoints/step_000000001").mkdir(parents=True)
            (Path(root) / "checkpoints/step_000000001/state.json").write_text("{}")
            (Path(root) / "config.json").write_text(json.dumps({"recipe": "dqn-catch", "config": {}}))
            return root

    class Api:
        def artifact(self, ref: str, type: str) -> Artifact:
            asked.append((ref, type))
            if "missing" in ref:
                raise ValueError("artifact 'missing' not found\nmore detail")
            return Artifact()

    monkeypatch.setattr(wandb, "Api", Api)
    folder = fetch_artifact("me/fovea/run-c-model")
    assert asked[-1] == ("me/fovea/run-c-model:latest", "model") and folder == Path("runs/run-c-model-v3")
    assert read_run(folder)["recipe"] == "dqn-catch"
    assert fetch_artifact("me/fovea/run-c-model:best", root="here") == Path("here")
    with pytest.raises(RunError, match="cannot fetch W&B artifact 'me/fovea/missing:latest' .*wandb login"):
        fetch_artifact("me/fovea/missing")


def test_summaries_leave_local_paths_out(in_tmp):
    from fovea.tracking import public_figures

    Path("runs/c/videos").mkdir(parents=True)
    figures = {"run": "runs/c", "video": "runs/c/videos/play.mp4", "network": "final", "eval/mean_return": 0.5,
               "rank_by": "val/acc"}  # fmt: skip
    assert public_figures(figures) == {"network": "final", "eval/mean_return": 0.5, "rank_by": "val/acc"}


@pytest.mark.slow
def test_classifier_eval_logs_a_per_class_table_and_a_confusion_matrix_chart(in_tmp):
    assert main(["train", "cnn-digits", "--name", "k", "--epochs", "1", "--wandb", "disabled", *TINY_CNN]) == 0
    assert main(["eval", "runs/k", "--wandb", "offline"]) == 0
    (ev,) = offline_runs(in_tmp / "runs/k")["eval"]
    keys = {i.key or "/".join(i.nested_key) for h in of_type(ev, "history") for i in h.item}
    assert "test/per_class/_type" in keys and any(k.startswith("test/confusion_matrix") for k in keys)
