"""One registry for every backbone: ``register`` (a decorator), ``build`` (a factory), ``names`` (a list).

Like timm's ``@register_model`` / ``create_model`` / ``list_models``: a name maps to a class, duplicate
names are refused, and an unknown name lists the valid ones, closest first.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Kind = Literal["image", "vector", "sequence", "decoder", "denoiser"]


class BackboneError(ValueError):
    """A backbone was asked for with a bad name, option or input shape."""


@dataclass(frozen=True)
class Entry:
    """What the registry knows about one backbone.

    Args:
        name: the registered name (``--backbone NAME``).
        cls: the ``nn.Module`` class, called as ``cls(in_shape, **options)``.
        kind: what its input is: ``image`` (B, C, H, W), ``vector`` (B, ...) flattened, ``sequence``
            (B, T, F) with a done mask, ``decoder`` (B, F) -> (B, *out_shape).
        tiny: options for a tiny variant, used by the registry contract test.
        summary: one line for listings (the first line of the class docstring).
    """

    name: str
    cls: type[nn.Module]
    kind: Kind
    tiny: dict = field(default_factory=dict)
    summary: str = ""


_REGISTRY: dict[str, Entry] = {}


def register(name: str, *, kind: Kind, tiny: dict | None = None) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a backbone under ``name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise BackboneError(f"backbone name {name!r} is already registered by {_REGISTRY[name].cls.__name__}")
        summary = (inspect.getdoc(cls) or "").split("\n")[0]
        _REGISTRY[name] = Entry(name, cls, kind, dict(tiny or {}), summary)
        return cls

    return deco


def names() -> list[str]:
    """Every registered backbone name, sorted."""
    return sorted(_REGISTRY)


def closest(name: str, choices: list[str], n: int = 3) -> list[str]:
    """The valid names closest to ``name`` (best first), or all of them when none is close."""
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.4) or sorted(choices)


def entry(name: str) -> Entry:
    """The registry entry for ``name``; an unknown name lists the closest valid ones."""
    if name not in _REGISTRY:
        raise BackboneError(
            f"unknown backbone {name!r}; did you mean {', '.join(closest(name, names()))}? "
            f"(all backbones: {', '.join(names())})"
        )
    return _REGISTRY[name]


def build(name: str, in_shape: tuple[int, ...] | int, **options) -> nn.Module:
    """Build the backbone ``name`` for inputs of shape ``in_shape`` (C, H, W), or a feature size.

    The module exposes ``out_features`` (decoders: ``out_shape``) so a head can be sized without
    running it. Options it does not take are refused with the list of those it does.
    """
    e = entry(name)
    params = inspect.signature(e.cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "in_shape")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise BackboneError(f"backbone {name!r} takes no option {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(int(s) for s in in_shape)
    return e.cls(shape, **options)
