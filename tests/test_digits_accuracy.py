"""The first recipe's promise: cnn-digits reaches at least 97% test accuracy on the embedded digits."""

from __future__ import annotations

import json

import pytest

from fovea.cli import main


@pytest.mark.slow
def test_cnn_digits_reaches_97_percent(in_tmp, capsys):
    assert main(["train", "cnn-digits", "--name", "full", "--wandb", "disabled"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["test/acc"] >= 0.97, figures
    assert figures["epochs"] == 40
