"""Faults (issue 8): a disk that fills while a sample grid is written, and a W&B that fails in the middle of a run."""

from __future__ import annotations

import json

from PIL import Image

from fovea import checkpoint
from fovea.cli import main


def test_a_full_disk_while_writing_a_sample_grid_keeps_the_last_checkpoint(in_tmp, capsys, monkeypatch):
    real, calls = Image.Image.save, []

    def fills_the_disk(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:  # the second grid: epoch 2's
            raise OSError(28, "No space left on device", str(fp))
        return real(self, fp, *args, **kwargs)

    argv = ["train", "vae-digits", "--name", "full", "--epochs", "3", "--eval-every", "1", "--checkpoint-every", "1",
            "--iwae-samples", "4", "--wandb", "disabled"]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", fills_the_disk)
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "checkpoint is intact" in err and "Traceback" not in err
    (only,) = checkpoint.list_checkpoints(in_tmp / "runs/full/checkpoints")
    assert checkpoint.step_of(only) == 1 and checkpoint.load(only)[0]["step"] == 1
    assert not list((in_tmp / "runs/full/samples").glob(".tmp-*"))  # no half-written picture
    assert main(["train", "--resume", "runs/full", "--wandb", "disabled"]) == 0  # space freed: it goes on
    assert json.loads((in_tmp / "runs/full/summary.json").read_text())["epochs"] == 3


def test_wandb_failing_mid_run_leaves_training_and_metrics_whole(in_tmp, capsys, monkeypatch):
    import wandb.sdk.wandb_run as wandb_run

    real, calls = wandb_run.Run.log, []

    def breaks(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionError("connection to the W&B server lost")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(wandb_run.Run, "log", breaks)
    argv = ["train", "cnn-digits", "--name", "wb", "--epochs", "4", "--backbone.widths", "8,16", "--wandb", "offline"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("W&B: logging failed (ConnectionError") == 1  # told once
    assert "training goes on" in err and "wandb sync" in err
    rows = [json.loads(x) for x in (in_tmp / "runs/wb/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # every epoch still reached metrics.jsonl
    assert json.loads((in_tmp / "runs/wb/summary.json").read_text())["epochs"] == 4
