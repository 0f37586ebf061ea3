"""The scripts in examples/ run as a user runs them (in-process, on small budgets given as their argument), print
what they say, and stay short."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, argument: str, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), argument])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_every_example_is_under_30_lines():
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert [p.name for p in scripts] == ["compare_classifiers.py", "sample_images.py", "train_agent.py"]
    assert all(len(p.read_text().splitlines()) < 30 for p in scripts)


def test_train_agent_trains_and_watches(in_tmp, monkeypatch, capsys):
    run_example("train_agent.py", "1024", monkeypatch)
    out = capsys.readouterr().out
    video = Path(out.split("video of one game: ")[1].split()[0])
    assert video.suffix == ".mp4" and video.stat().st_size > 1000
    assert "mean return" in out and all(f"game {g}: return" in out for g in range(3))


def test_compare_classifiers_trains_two_baselines_and_compares_them(in_tmp, monkeypatch, capsys):
    run_example("compare_classifiers.py", "1", monkeypatch)
    out = capsys.readouterr().out
    assert "softmax-digits: test accuracy" in out and "cnn-digits: test accuracy" in out and "both miss" in out
    assert len(list((in_tmp / "runs").iterdir())) == 2


@pytest.mark.slow  # the VAE's likelihood estimate (IWAE, 200 draws per image) takes about 10 s
def test_sample_images_draws_a_grid_and_scores_it(in_tmp, monkeypatch, capsys):
    run_example("sample_images.py", "2", monkeypatch)
    out = capsys.readouterr().out
    grid = Path(out.split("64 samples: ")[1].split()[0])
    assert grid.stat().st_size > 100 and "real test digits" in out
