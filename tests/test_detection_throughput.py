"""The detection-throughput benchmark runs end to end, tiny, on the CPU, and ends with its JSON figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_detection_throughput_measures_ours_with_and_without_workers_and_the_reference_loop(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.detection_throughput", "--epochs", "2", "--images", "64", "--size", "64",
           "--batch-size", "16", "--workers", "1", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "disabled", "TMPDIR": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "detection_throughput" and figures["device"].startswith("cpu")
    assert figures["workers"] == 1 and figures["augment"] == "flip,iou-crop"
    assert min(figures["ours"], figures["peer"], figures["ours_workers_0"]) > 0
    assert figures["ratio"] == pytest.approx(figures["ours"] / figures["peer"], rel=0.01)
    assert figures["workers_gain"] == pytest.approx(figures["ours"] / figures["ours_workers_0"], rel=0.01)


@pytest.mark.parametrize("args,message", [
    (["--epochs", "1"], "--epochs 1: give at least 2"),
    (["--workers", "0"], "--workers 0: give at least 1"),
    (["--augment", "flip,scale:0.5:1.5"], "--augment: the peer has no 'scale'"),
    (["--augment", "flop"], "--augment: unknown augmentation 'flop'"),
])  # fmt: skip
def test_detection_throughput_refuses_bad_arguments_with_one_line(args, message, monkeypatch, capsys):
    # in this process (argparse's error exits with 2 and one line): a subprocess per case cost 4 s of torch imports
    from benchmarks import detection_throughput

    monkeypatch.setattr(sys, "argv", ["detection_throughput", *args])
    with pytest.raises(SystemExit) as exit_:
        detection_throughput.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err
