"""torchrun / DistributedDataParallel (2 CPU processes, gloo), mixed precision and torch.compile of the loops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fovea import checkpoint, distributed
from fovea.cli import main
from fovea.precision import Precision, amp_dtype
from fovea.vision import data as vdata

# A deterministic classifier (no dropout, augmentation or batch norm), so one process and two must agree.
EXACT = ["--epochs", "2", "--dropout", "0", "--augment=", "--backbone.norm", "none", "--backbone.widths", "8,16",
         "--batch-size", "64", "--checkpoint-every", "1", "--wandb", "disabled"]  # fmt: skip


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "fovea", "train", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    state, _ = checkpoint.load(run_dir / "checkpoints" / f"step_{step:09d}")
    return state["objects"]["model"]


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one_with_the_same_global_batch(in_tmp):
    assert main(["train", "cnn-digits", "--name", "one", *EXACT]) == 0
    done = torchrun(["cnn-digits", "--name", "two", *EXACT], in_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = weights(in_tmp / "runs/one", 2), weights(in_tmp / "runs/two", 2)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    # rank 0 alone wrote: one config, one line of metrics per epoch, figures of the whole global batch
    lines = [json.loads(x) for x in (in_tmp / "runs/two/metrics.jsonl").read_text().splitlines()]
    single = [json.loads(x) for x in (in_tmp / "runs/one/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for a, b in zip(lines, single, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
        assert a["train/acc"] == pytest.approx(b["train/acc"], rel=1e-4)
    assert "torchrun: 2 processes, a global batch of 64" in done.stderr
    assert done.stdout.count('"run": "runs/two"') == 1  # the figures printed once
    # resume works the same under torchrun: every rank reads rank 0's checkpoint
    done = torchrun(["--resume", "runs/two", "--epochs", "3", "--wandb", "disabled"], in_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resumed runs/two from step_000000002 (step 2)" in done.stderr
    assert json.loads((in_tmp / "runs/two/summary.json").read_text())["epochs"] == 3


@pytest.mark.slow
def test_a_vae_and_a_gan_train_under_torchrun(in_tmp):
    done = torchrun(["vae-digits", "--name", "vae", "--epochs", "1", "--eval-every", "1"], in_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((in_tmp / "runs/vae/summary.json").read_text())["val/nll_nats"] < 200
    done = torchrun(["gan-digits", "--name", "gan", "--epochs", "1"], in_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((in_tmp / "runs/gan/samples").glob("samples_final_*.png"))


@pytest.mark.slow  # 7 s: torchrun starts its own processes
def test_torchrun_refuses_an_agent_recipe_with_one_message(in_tmp):
    done = torchrun(["dqn-catch", "--name", "q"], in_tmp)
    assert done.returncode != 0
    assert done.stderr.count("dqn-catch does not train under torchrun") == 1
    assert not (in_tmp / "runs/q").exists()


def test_global_batches_on_one_process_are_the_shuffled_batches():
    data = vdata.load("digits", "val")
    a = list(vdata.batches(data, 50, torch.Generator().manual_seed(3)))
    b = list(vdata.global_batches(data, 50, torch.Generator().manual_seed(3)))
    assert len(a) == len(b)
    for (xa, ya), (xb, yb, total) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and total == len(ya)


def test_scaled_shard_losses_average_to_the_global_mean_gradient(monkeypatch):
    """What DDP computes with ``scale_loss``: the mean over ranks of each rank's scaled mean-loss gradient equals the
    gradient of the global batch's mean loss, also when the shards differ in size (a last batch of 7 over 2)."""
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(7, 3)
    (x @ w).pow(2).mean().backward()
    expected, w.grad = w.grad.clone(), None
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    grads = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        idx = distributed.shard(torch.arange(7))
        assert idx.tolist() == list(range(r, 7, 2))  # DistributedSampler's interleaving
        distributed.scale_loss((x[idx] @ w).pow(2).mean(), len(idx), 7).backward()
        grads.append(w.grad.clone())
        w.grad = None
    torch.testing.assert_close(sum(grads) / 2, expected)


def test_amp_names_the_dtype_each_device_gets():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cuda) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16 and amp_dtype("fp16", cpu) == torch.float16
    assert Precision("fp16", cpu).scaler is not None and Precision("bf16", cpu).scaler is None


@pytest.mark.slow  # a real recipe in subprocesses: the slow tier
def test_classifier_and_gan_train_in_bf16_and_fp16_with_finite_losses_and_resume(in_tmp):
    base = ["--epochs", "1", "--wandb", "disabled"]
    assert main(["train", "cnn-digits", "--name", "bf", "--amp", "bf16", "--backbone.widths", "8,16", *base]) == 0
    acc = json.loads((in_tmp / "runs/bf/summary.json").read_text())["test/acc"]
    assert acc > 0.2  # above chance (0.1) after one short epoch
    assert main(["train", "gan-digits", "--name", "g16", "--amp", "fp16", *base]) == 0
    rows = [json.loads(x) for x in (in_tmp / "runs/g16/metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(v, float) for r in rows for k, v in r.items() if "loss" in k)  # no "nan" / "inf"
    state, _ = checkpoint.load(sorted((in_tmp / "runs/g16/checkpoints").iterdir())[-1])
    assert {"scaler_d", "scaler_g"} <= set(state["objects"])  # the loss scales resume with the run
    assert main(["train", "--resume", "runs/g16", "--epochs", "2", "--wandb", "disabled"]) == 0


@pytest.mark.slow
def test_compiled_training_matches_eager_and_keeps_checkpoint_keys(in_tmp):
    args = ["--epochs", "1", "--dropout", "0", "--augment=", "--backbone.widths", "8,16", "--wandb", "disabled"]
    assert main(["train", "cnn-digits", "--name", "eager", *args]) == 0
    assert main(["train", "cnn-digits", "--name", "comp", "--compile", "true", *args]) == 0
    eager, comp = weights(in_tmp / "runs/eager", 1), weights(in_tmp / "runs/comp", 1)
    assert eager.keys() == comp.keys()  # no _orig_mod. prefixes: the tracked module is not the compiled one
    for k in eager:
        torch.testing.assert_close(comp[k], eager[k], rtol=1e-3, atol=1e-4, msg=k)
    assert main(["train", "--resume", "runs/comp", "--epochs", "2", "--wandb", "disabled"]) == 0


# The locate detector's losses are means over images, so two processes match one exactly (batch norm off, no
# augmentation); 96 canvases make 3 batches of 32.
LOCATE = ["--epochs", "1", "--train-images", "96", "--eval-images", "32", "--backbone.widths", "8,16",
          "--backbone.norm", "none", "--checkpoint-every", "1", "--wandb", "disabled"]  # fmt: skip


@pytest.mark.slow
def test_a_detector_trains_under_torchrun_as_on_one_process_and_fcos_detects(in_tmp):
    assert main(["train", "locate-digits", "--name", "one", *LOCATE]) == 0
    done = torchrun(["locate-digits", "--name", "two", *LOCATE], in_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = weights(in_tmp / "runs/one", 1), weights(in_tmp / "runs/two", 1)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    done = torchrun(["detect-digits", "--name", "fcos", "--epochs", "1", "--train-images", "64", "--eval-images",
                     "16", "--backbone.widths", "8,16,16", "--width", "16", "--wandb", "disabled"], in_tmp)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((in_tmp / "runs/fcos/summary.json").read_text())
    assert 0 <= figures["test/map_50"] <= 1
    assert list((in_tmp / "runs/fcos/media").glob("*.png"))  # rank 0 drew the val detections


def test_detectors_train_in_bf16_on_the_cpu_with_finite_losses(in_tmp):
    for recipe in ("locate-digits", "detect-digits"):
        assert main(["train", recipe, "--name", recipe, "--amp", "bf16", "--epochs", "1", "--train-images", "32",
                     "--eval-images", "8", "--backbone.widths", "8,16,16", "--wandb", "disabled"]) == 0  # fmt: skip
        rows = [json.loads(x) for x in (in_tmp / f"runs/{recipe}/metrics.jsonl").read_text().splitlines()]
        assert any("train/loss" in r for r in rows)
        assert all(isinstance(v, float) for r in rows for k, v in r.items() if "loss" in k)  # no nan / inf
