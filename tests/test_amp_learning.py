"""The bf16-vs-fp32 learning benchmark runs end to end, tiny, on the CPU, and ends with both sides' curves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_amp_learning_prints_both_curves_and_their_ratio(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.amp_learning", "--seeds", "0", "--eval-every", "500", "--eval-episodes",
           "4", "--device", "cpu", "--total-steps", "1000", "--learning-starts", "200"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "disabled", "TMPDIR": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "amp_learning" and figures["device"].startswith("cpu")
    for amp in ("bf16", "off"):
        steps = [step for step, _ in figures["curves"][amp]["0"]]
        assert steps == [500, 1000]
    if figures["peer"]:
        assert figures["ratio"] == pytest.approx(figures["ours"] / figures["peer"], rel=0.01)


def test_amp_learning_names_a_failing_train_command(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.amp_learning", "--recipe", "no-such-recipe", "--seeds", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WANDB_MODE": "disabled", "TMPDIR": str(tmp_path)})  # fmt: skip
    assert proc.returncode != 0
    assert "no-such-recipe" in proc.stderr and "Traceback" not in proc.stderr
