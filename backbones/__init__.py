"""Shared feature extractors. They know nothing of tasks; every task model is a backbone plus a head.

>>> import backbones
>>> net = backbones.build("resnet", (3, 32, 32), depth=20)
>>> net.out_features
64
"""

from fovea.backbones import cnn, mlp, rnn, unet  # noqa: F401  (registers the backbones)
from fovea.backbones.registry import BackboneError, build, entry, names, register

__all__ = ["BackboneError", "build", "entry", "names", "register"]
