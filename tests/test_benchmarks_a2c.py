"""The A2C Atari throughput benchmark runs end to end, tiny, on the CPU, and ends with its JSON figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a2c_atari_throughput_prints_figures_per_envs(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.a2c_atari_throughput", "--envs", "2", "3", "--steps", "200",
           "--device", "cpu", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "disabled", "TMPDIR": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "a2c_atari_throughput"
    assert figures["device"].startswith("cpu")
    assert [r["envs"] for r in figures["results"]] == [2, 3]
    for r in figures["results"]:
        assert r["steps"] % (r["envs"] * 5) == 0 and r["steps"] <= 200  # whole 5-step rollouts, both sides
        for key in ("ours", "peer", "ratio", "ours_with_setup", "peer_with_setup", "ratio_with_setup"):
            assert r[key] > 0, (key, r)
    first = figures["results"][0]
    assert (figures["ours"], figures["peer"], figures["ratio"]) == (first["ours"], first["peer"], first["ratio"])


@pytest.mark.slow
def test_ppo_atari_throughput_prints_figures(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.ppo_atari_throughput", "--envs", "4", "--steps", "512", "--device", "cpu",
           "--threads", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "disabled", "TMPDIR": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "ppo_atari_throughput" and figures["steps"] == 512  # one rollout of 4 x 128
    for key in ("ours", "peer", "ratio", "ours_with_setup", "peer_with_setup"):
        assert figures[key] > 0, key
