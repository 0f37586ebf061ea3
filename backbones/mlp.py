"""MLP: fully connected layers over the flattened input (the two-layer net of the notes, chapter 4)."""

from __future__ import annotations

import math

import torch
from torch import nn

from fovea.backbones.layers import activation as make_activation
from fovea.backbones.registry import BackboneError, register


@register("mlp", kind="vector", tiny={"hidden": (8,)})
class MLP(nn.Module):
    """Fully connected layers with an activation (and optional dropout) over the flattened input.

    Args:
        in_shape: any shape; inputs (B, *in_shape) are flattened.
        hidden: width of each hidden layer; ``out_features == hidden[-1]``.
        activation: relu, leaky_relu, elu, gelu, tanh or silu.
        dropout: dropout probability after each activation.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        hidden: tuple[int, ...] = (256, 256),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if not hidden or min(hidden) < 1 or not 0.0 <= dropout < 1.0:
            raise BackboneError(
                f"mlp needs hidden widths >= 1 and 0 <= dropout < 1; got hidden={hidden}, dropout={dropout}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        n = math.prod(in_shape)
        for h in hidden:
            layers += [nn.Linear(n, h), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            n = h
        self.net = nn.Sequential(*layers)
        self.out_features = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, hidden[-1])
