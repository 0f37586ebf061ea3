"""Mixed precision, channels_last and torch.compile for the supervised and generative training loops (the
notes, chapter 15: mixed precision).

``amp`` in a config picks the autocast dtype: ``auto`` is bf16 on CUDA (same exponent range as fp32, so no
loss scaling and no overflow: a GAN cannot produce infs from it) and fp32 elsewhere; ``bf16`` forces it
(the CPU supports bf16 autocast too, slowly); ``fp16`` is for GPUs without bf16 and brings a GradScaler,
whose state the checkpoint holds; ``off`` is fp32. Losses are computed in fp32 either way: autocast runs
softmax, log-softmax, cross-entropy and the norms in fp32.

    step = Precision(cfg.amp, run.device)
    with step.autocast():
        out = model.loss(batch)
    step.backward(out["loss"], optimizer, params, clip=cfg.grad_clip)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from fovea.errors import ConfigError

Amp = Literal["auto", "off", "bf16", "fp16"]


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``amp`` means on ``device`` (None: fp32)."""
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ConfigError(f"amp {amp!r} is not a precision; use auto, off, bf16 or fp16")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing for None (fp32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class Precision:
    """Autocast and (for fp16) gradient scaling on one device; ``scaler`` goes into ``run.track``."""

    def __init__(self, amp: str, device: torch.device):
        self.device = torch.device(device)
        self.dtype = amp_dtype(amp, self.device)
        fp16 = self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16) if fp16 else None

    def tracked(self, name: str = "scaler") -> dict:
        """``{name: the GradScaler}`` for ``run.track`` (its loss scale resumes with the run); empty without one."""
        return {name: self.scaler} if self.scaler is not None else {}

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter] = (),
                 clip: float = 0.0, skip: Callable[[], bool] | None = None) -> bool:  # fmt: skip
        """zero_grad, backward, optional gradient-norm clipping, step (scaled and unscaled around them for fp16;
        a step whose gradients overflowed is skipped by the scaler, as torch.amp intends). ``skip``, asked after
        the backward pass, can leave the step out (``Run.skip_step``: a NaN loss or gradient); returns whether the
        optimizer stepped (or, for fp16, was handed the step)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if skip is not None and skip():
                optimizer.zero_grad(set_to_none=True)
                return False
            if clip:
                nn.utils.clip_grad_norm_(list(params), clip)
            optimizer.step()
            return True
        self.scaler.scale(loss).backward()
        if clip:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(list(params), clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        return True


def channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    """NHWC weights for convolutions on CUDA (tensor cores read them without transposes); unchanged elsewhere."""
    convs = any(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in module.modules())
    if torch.device(device).type == "cuda" and convs:
        return module.to(memory_format=torch.channels_last)
    return module


def compiled(fn: Callable, enabled: bool) -> Callable:
    """``torch.compile(fn)`` when ``enabled`` (the tracked modules stay uncompiled, so checkpoints keep their
    keys); ``fn`` itself otherwise."""
    return torch.compile(fn) if enabled else fn
