"""Moving a backbone's weights out of a run's checkpoint into another model."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CNN

import backbones
from backbones.transfer import freeze, load_weights, unfreeze
from fovea import checkpoint
from fovea.cli import main
from fovea.errors import CheckpointError


def test_backbone_weights_move_from_a_run(in_tmp):
    assert main(["train", "cnn-digits", "--name", "src", "--wandb", "disabled", "--epochs", "1", *TINY_CNN]) == 0
    net = backbones.build("convnet", (1, 8, 8), widths=(8, 16))
    assert load_weights(net, in_tmp / "runs/src") == "model.backbone"
    saved, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/src/checkpoints")[-1])
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved["objects"]["model"][f"backbone.{k}"])
    freeze(net)
    assert not any(p.requires_grad for p in net.parameters())
    unfreeze(net)
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(CheckpointError, match="no weights that fit this ConvNet"):
        load_weights(backbones.build("convnet", (1, 8, 8), widths=(4,)), in_tmp / "runs/src")
