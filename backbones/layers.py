"""Small building blocks shared by the backbones: activations, norms and the output-size probe."""

from __future__ import annotations

import torch
from torch import nn

from fovea.backbones.registry import BackboneError, closest

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}
NORMS = ("batch", "none")


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, leaky_relu, elu, gelu, tanh, silu)."""
    if name not in ACTIVATIONS:
        raise BackboneError(f"unknown activation {name!r}; did you mean {', '.join(closest(name, list(ACTIVATIONS)))}?")
    return ACTIVATIONS[name]()


def norm2d(name: str, channels: int) -> nn.Module:
    """BatchNorm2d or nothing."""
    if name not in NORMS:
        raise BackboneError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")
    return nn.BatchNorm2d(channels) if name == "batch" else nn.Identity()


def image_shape(name: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Check that ``in_shape`` is (C, H, W) with positive sizes."""
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise BackboneError(f"backbone {name!r} takes images of shape (C, H, W); got in_shape={tuple(in_shape)}")
    return in_shape  # type: ignore[return-value]


@torch.no_grad()
def probe(module: nn.Module, fn, in_shape: tuple[int, ...], name: str) -> torch.Size:
    """Output shape of ``fn`` on one dummy input: flatten sizes come from a forward pass, never typed in."""
    was_training = module.training
    module.eval()
    try:
        return fn(torch.zeros(1, *in_shape)).shape[1:]
    except RuntimeError as e:  # a kernel larger than the (shrunk) image
        raise BackboneError(f"backbone {name!r} cannot take inputs of shape {tuple(in_shape)}: {e}") from None
    finally:
        module.train(was_training)
