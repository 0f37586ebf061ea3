"""Tests run offline, on the CPU, with W&B in offline mode and run folders in a temporary directory."""

from __future__ import annotations

import os

import pytest

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)

TINY_CNN = ["--backbone.widths", "8,16", "--dropout", "0"]  # a small, fast cnn-digits for runtime tests


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh temporary directory (runs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
