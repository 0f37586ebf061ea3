"""Move a backbone's weights between runs: load them out of any run's checkpoint; freeze or unfreeze.

    enc = backbones.build("convnet", (1, 8, 8), widths=(64, 128))
    load_weights(enc, "runs/ae-digits")        # finds the sub-module whose weights fit `enc`
    freeze(enc)

The checkpoint is read through ``fovea.checkpoint.load_tensors`` (safetensors + JSON, never
unpickled), imported when called: this is the one place in ``backbones/`` that knows run folders exist.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

PREFERRED, LAGGING = "best", "target"  # the kept best copy of a run's network; an agent's lagged target copy


def load_weights(module: nn.Module, source: str | Path, prefix: str | None = None) -> str:
    """Load into ``module`` the weights found under ``prefix`` in ``source``; returns the prefix used.

    Without ``prefix`` the source is searched for the one sub-module whose parameter names and shapes
    fit ``module`` exactly (e.g. ``model.backbone`` of a classifier, ``model.encoder`` of an autoencoder).
    A checkpoint may hold copies of its network: ``best`` (the weights of the best validation or
    evaluation, which ``fovea eval`` reports) is preferred to the live network, and an agent's lagging
    ``target`` network is passed over.
    """
    from fovea.checkpoint import load_tensors
    from fovea.errors import CheckpointError

    source = Path(source)
    tensors = load_tensors(source)
    target = module.state_dict()
    if prefix is None:
        first = next(iter(target))
        prefixes = {k[: -len(first)].rstrip(".") for k in tensors if k == first or k.endswith("." + first)}
    else:
        prefixes = {prefix}

    def fits(p: str) -> bool:
        key = (lambda k: f"{p}.{k}") if p else (lambda k: k)
        return all(key(k) in tensors and tensors[key(k)].shape == v.shape for k, v in target.items())

    matches = sorted(p for p in prefixes if fits(p))
    for keep in (lambda p: p.split(".", 1)[0] == PREFERRED, lambda p: p.split(".", 1)[0] != LAGGING):
        chosen = [p for p in matches if keep(p)]
        if len(matches) > 1 and len(chosen) == 1:
            matches = chosen
    if not matches:
        tops = sorted({k.rsplit(".", 2)[0] for k in tensors})[:8]
        raise CheckpointError(f"{source} holds no weights that fit this {type(module).__name__} "
                              f"(same names and shapes); it holds e.g. {', '.join(tops)}")  # fmt: skip
    if len(matches) > 1:
        raise CheckpointError(f"{source} holds several fitting sub-modules ({', '.join(matches)}); name one as "
                              f"{source}:{matches[0]}")  # fmt: skip
    p = matches[0]
    module.load_state_dict({k: tensors[f"{p}.{k}" if p else k] for k in target})
    return p


def start_from(module: nn.Module, source: str, frozen: bool = False) -> nn.Module:
    """``--backbone-from``: load ``source`` (``runs/NAME`` or ``runs/NAME:PREFIX``) into ``module``, then
    freeze it when ``frozen``; returns ``module``."""
    path, _, prefix = source.partition(":")
    load_weights(module, path, prefix or None)
    return freeze(module) if frozen else module


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter (batch-norm statistics still update in train mode)."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        param.requires_grad_(True)
    return module
