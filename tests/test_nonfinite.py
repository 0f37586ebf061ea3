"""A NaN loss (issue 8): by default the run stops naming the step and the loss, keeping the last good checkpoint;
with ``--on-nonfinite skip`` that update is left out, the run goes on and says so, and the weights stay finite."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CNN

from fovea import checkpoint
from fovea.agents import dqn
from fovea.cli import main
from fovea.generative.autoencoder import VAE
from fovea.vision.classify import Classifier


def poison(monkeypatch, owner, name: str, at: set[int]):
    """Make ``owner.name`` (a loss) return NaN on the calls numbered in ``at`` (from 1)."""
    real, calls = getattr(owner, name), []

    def nan_sometimes(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) in at:
            if isinstance(out, dict):
                return {**out, "loss": out["loss"] * float("nan")}
            return out * float("nan")
        return out

    monkeypatch.setattr(owner, name, nan_sometimes)


CASES = {
    "cnn": (Classifier, "loss", ["train", "cnn-digits", *TINY_CNN, "--epochs", "3"]),
    "vae": (VAE, "loss", ["train", "vae-digits", "--epochs", "2", "--iwae-samples", "4"]),
    "dqn": (dqn, "td_loss", ["train", "dqn-cartpole", "--total-steps", "1200", "--learning-starts", "200",
                             "--eval-episodes", "0"]),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_nan_loss_stops_the_run_or_is_skipped(case, in_tmp, capsys, monkeypatch):
    owner, name, argv = CASES[case]
    with monkeypatch.context() as m:
        poison(m, owner, name, at={5})
        assert main([*argv, "--name", "stop", "--wandb", "disabled", "--checkpoint-every", "1"]) == 2
    err = capsys.readouterr().err
    assert "= nan at step" in err and "training diverged and was stopped" in err and "Traceback" not in err
    with monkeypatch.context() as m:
        poison(m, owner, name, at={5, 9})
        assert main([*argv, "--name", "skip", "--wandb", "disabled", "--on-nonfinite", "skip"]) == 0
    err = capsys.readouterr().err
    assert err.count("this update was skipped") == 2 and "loss = nan" in err, err
    summary = json.loads((in_tmp / "runs/skip/summary.json").read_text())
    assert summary["skipped_updates"] == 2
    for ck in checkpoint.list_checkpoints(in_tmp / "runs/skip/checkpoints"):
        for obj in checkpoint.load(ck)[0]["objects"].values():
            tensors = [v for v in (obj.values() if isinstance(obj, dict) else []) if isinstance(v, torch.Tensor)]
            assert all(torch.isfinite(v).all() for v in tensors if v.is_floating_point())
