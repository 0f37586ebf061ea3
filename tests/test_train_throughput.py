"""The training-throughput benchmark runs end to end, tiny, on the CPU, and ends with its JSON figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_throughput_measures_ours_and_the_plain_loop_per_model(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--models", "cnn", "gan", "--epochs", "2",
           "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "disabled", "TMPDIR": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "train_throughput" and figures["device"].startswith("cpu")
    assert [r["recipe"] for r in figures["results"]] == ["cnn-digits", "gan-digits"]
    for r in figures["results"]:
        assert r["ours"] > 0 and r["peer"] > 0
        assert r["ratio"] == pytest.approx(r["ours"] / r["peer"], rel=0.01)
    assert figures["ratio"] == figures["results"][0]["ratio"]


def test_train_throughput_refuses_a_single_epoch_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--epochs", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert "--epochs 1: give at least 2" in proc.stderr and "Traceback" not in proc.stderr
