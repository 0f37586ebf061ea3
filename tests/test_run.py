"""The Run: run folder, metrics, W&B offline, checkpoints, SIGTERM and resume, evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import TINY_CNN
from wandb_reader import history

from fovea import checkpoint
from fovea.cli import main
from fovea.errors import CheckpointError, RunError
from fovea.run import Run, pick_device
from fovea.vision.classify import ClassifierConfig

REPO = Path(__file__).resolve().parents[1]


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing figures (perf/...), which differ between runs."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state, _ = checkpoint.load(checkpoint.list_checkpoints(run_dir / "checkpoints")[-1])
    return state["objects"]["model"]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_train_writes_the_run_folder_and_wandb_offline(in_tmp, capsys, monkeypatch):
    secret = "fovea-test-secret-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)  # must never reach a file
    assert main(["train", "cnn-digits", "--name", "r1", "--wandb", "offline", "--epochs", "3", *TINY_CNN]) == 0
    captured = capsys.readouterr()
    figures = last_json(captured.out)
    assert figures["run"] == "runs/r1" and figures["epochs"] == 3 and 0 <= figures["test/acc"] <= 1
    assert "wandb sync" in captured.err  # told once how to upload the offline run
    run = in_tmp / "runs" / "r1"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe"] == "cnn-digits" and cfg["config"]["epochs"] == 3
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"train/loss", "val/acc", "val/loss", "train/acc"} <= set(rows[0])
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(run / "checkpoints")] == [3]
    # the W&B offline run folder holds the same scalars
    (wb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    wb_rows = [r for r in history(wb_file) if "train/loss" in r]
    assert [r["global_step"] for r in wb_rows] == [1, 2, 3]
    assert [r["train/loss"] for r in wb_rows] == pytest.approx([r["train/loss"] for r in rows])
    # images go to media/ as PNG and to W&B as media
    assert (run / "media" / "val_confusion_00000003.png").is_file()
    images = [r for r in history(wb_file) if "val/confusion/_type" in r]  # media rows are flattened
    assert images and images[0]["val/confusion/_type"] == "image-file" and images[0]["val/confusion/height"] == 160
    # no API key anywhere in what the run wrote
    for f in run.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f"API key leaked into {f}"
    assert secret not in captured.out + captured.err


def test_eval_reports_the_trained_accuracy(in_tmp, capsys):
    assert main(["train", "cnn-digits", "--name", "r2", "--wandb", "disabled", "--epochs", "2", *TINY_CNN]) == 0
    trained = last_json(capsys.readouterr().out)
    assert main(["eval", "runs/r2"]) == 0
    evaluated = last_json(capsys.readouterr().out)
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"])
    assert len(evaluated["confusion"]) == 10 and sum(map(sum, evaluated["confusion"])) == 447
    assert "test/acc_class_7" in evaluated


def test_existing_run_is_never_overwritten(in_tmp, capsys):
    assert main(["train", "cnn-digits", "--name", "r3", "--wandb", "disabled", "--epochs", "1", *TINY_CNN]) == 0
    before = (in_tmp / "runs/r3/metrics.jsonl").read_bytes()
    assert main(["train", "cnn-digits", "--name", "r3", "--wandb", "disabled"]) == 2
    assert "already exists; resume it with `fovea train --resume runs/r3`" in capsys.readouterr().err
    assert (in_tmp / "runs/r3/metrics.jsonl").read_bytes() == before


def _train_cmd(name: str, *extra: str) -> list[str]:
    args = f"train cnn-digits --name {name} --wandb disabled --epochs 15 --checkpoint-every 100".split()
    return [sys.executable, "-m", "fovea", *args, *TINY_CNN, *extra]


@pytest.mark.slow  # a real recipe in subprocesses: the slow tier
def test_sigterm_then_resume_equals_one_straight_run(in_tmp):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    straight = subprocess.run(_train_cmd("straight"), env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    proc = subprocess.Popen(_train_cmd("cut"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = in_tmp / "runs/cut/metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Resume with: fovea train --resume runs/cut" in err
    stopped_at = checkpoint.step_of(checkpoint.list_checkpoints(in_tmp / "runs/cut/checkpoints")[-1])
    assert 3 <= stopped_at < 15  # it stopped mid-run, at a checkpoint of its own

    resumed = subprocess.run(
        [sys.executable, "-m", "fovea", "train", "--resume", "runs/cut"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step_{stopped_at:09d}" in resumed.stderr
    assert metrics(in_tmp / "runs/cut") == metrics(in_tmp / "runs/straight")  # same steps, same figures
    a, b = final_weights(in_tmp / "runs/cut"), final_weights(in_tmp / "runs/straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise on the CPU
    assert last_json(resumed.stdout)["test/acc"] == last_json(straight.stdout)["test/acc"]


def test_restore_refuses_another_models_checkpoint(in_tmp):
    cfg = ClassifierConfig(epochs=1, backbone={"name": "convnet", "options": {"widths": (4,)}})
    with Run.create("cnn-digits", cfg, name="small", wandb="disabled") as run:
        run.track(model=torch.nn.Linear(3, 2))
        run.save()
    with Run.resume("runs/small", "cnn-digits", cfg, wandb="disabled") as run:
        run.track(model=torch.nn.Linear(5, 2))
        with pytest.raises(CheckpointError, match="does not fit this model"):
            run.restore()
        run.track(optimizer=torch.optim.SGD(torch.nn.Linear(5, 2).parameters(), lr=0.1))
        with pytest.raises(CheckpointError, match="holds no optimizer"):
            run.restore()


def test_device_choice():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(RunError, match="not a device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RunError, match="CUDA is not available"):
            pick_device("cuda")


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(in_tmp, capsys, monkeypatch):
    real, calls = checkpoint.save_file, []

    def fills_the_disk(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fills_the_disk)
    argv = ["train", "cnn-digits", "--name", "full", "--wandb", "disabled", "--epochs", "4", "--checkpoint-every", "2"]
    assert main([*argv, *TINY_CNN]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    (only,) = checkpoint.list_checkpoints(in_tmp / "runs/full/checkpoints")
    assert checkpoint.step_of(only) == 2 and checkpoint.load(only)[0]["step"] == 2
    assert not list((in_tmp / "runs/full/checkpoints").glob(".tmp-*"))


def test_resume_before_any_checkpoint_starts_over(in_tmp):
    cfg = ClassifierConfig(epochs=1)
    with Run.create("cnn-digits", cfg, name="early", wandb="disabled") as run:
        run.log({"train/loss": 1.0}, step=1)  # killed here, before a checkpoint
    with Run.resume("runs/early", "cnn-digits", cfg, wandb="disabled") as run:
        run.track(model=torch.nn.Linear(2, 2))
        assert run.restore() is False and run.step == 0
        assert (in_tmp / "runs/early/metrics.jsonl").read_text() == ""  # no stale rows from the first attempt


def test_default_run_names_never_collide(in_tmp, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr("fovea.run.datetime", Frozen)
    cfg = ClassifierConfig(epochs=1)
    with Run.create("cnn-digits", cfg, wandb="disabled") as a, Run.create("cnn-digits", cfg, wandb="disabled") as b:
        assert (a.dir.name, b.dir.name) == ("cnn-digits-20260102-030405", "cnn-digits-20260102-030405-2")


def test_resume_trains_longer_with_overrides(in_tmp, capsys):
    assert main(["train", "cnn-digits", "--name", "ext", "--wandb", "disabled", "--epochs", "2", *TINY_CNN]) == 0
    assert main(["train", "--resume", "runs/ext", "--epochs", "4"]) == 0
    assert last_json(capsys.readouterr().out)["epochs"] == 4
    rows = metrics(in_tmp / "runs/ext")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train/lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine now ends at the new last epoch
    assert json.loads((in_tmp / "runs/ext/config.json").read_text())["config"]["epochs"] == 4
    assert main(["train", "--resume", "runs/ext", "--name", "other"]) == 2  # a resume continues its own folder


def test_failed_resume_changes_nothing(in_tmp, capsys):
    assert main(["train", "cnn-digits", "--name", "keep", "--wandb", "disabled", "--epochs", "1", *TINY_CNN]) == 0
    before = (in_tmp / "runs/keep/config.json").read_text()
    assert main(["train", "--resume", "runs/keep", "--backbone", "resnet"]) == 2
    assert "does not fit this model" in capsys.readouterr().err
    assert (in_tmp / "runs/keep/config.json").read_text() == before
    assert main(["eval", "runs/keep"]) == 0


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(in_tmp, capsys):
    argv = ["train", "cnn-digits", "--name", "fb", "--wandb", "disabled", "--epochs", "3", "--checkpoint-every", "1"]
    assert main([*argv, *TINY_CNN]) == 0
    straight = metrics(in_tmp / "runs/fb")
    (in_tmp / "runs/fb/checkpoints/step_000000003/state.json").write_text('{"format": "fovea-checkpoint/1", "st')
    assert main(["train", "--resume", "runs/fb"]) == 0
    err = capsys.readouterr().err
    assert "Cannot resume from step_000000003" in err and "from step_000000002 (step 2)" in err
    assert metrics(in_tmp / "runs/fb") == straight


def test_a_backbone_that_cannot_take_the_data_leaves_no_run_folder(in_tmp, capsys):
    assert main(["train", "cnn-digits", "--name", "bad", "--wandb", "disabled", "--backbone", "nature-cnn"]) == 2
    assert "cannot take inputs of shape (1, 8, 8)" in capsys.readouterr().err
    assert not (in_tmp / "runs/bad").exists()


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(in_tmp, capsys):
    argv = ["train", "cnn-digits", "--name", "nan", "--wandb", "disabled", "--epochs", "6", "--checkpoint-every", "1"]
    assert main([*argv, "--lr", "1e9", "--optimizer", "sgd", "--momentum", "0", *TINY_CNN]) == 2
    err = capsys.readouterr().err
    assert "training diverged and was stopped" in err and "Traceback" not in err
    for ck in checkpoint.list_checkpoints(in_tmp / "runs/nan/checkpoints"):
        weights = checkpoint.load(ck)[0]["objects"]["model"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_unreachable_wandb_server_falls_back_to_offline(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    monkeypatch.delenv("WANDB_MODE")
    argv = ["train", "cnn-digits", "--name", "net", "--wandb", "online", "--epochs", "2", *TINY_CNN]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "online mode failed, logging offline" in err and "wandb sync" in err
    (wb_file,) = (in_tmp / "runs/net").glob("wandb/offline-run-*/run-*.wandb")
    assert [r["global_step"] for r in history(wb_file) if "train/loss" in r] == [1, 2]
    assert [r["step"] for r in metrics(in_tmp / "runs/net")] == [1, 2]
