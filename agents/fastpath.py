"""The agents' fast path (hot loops on the device, no host syncs): bf16 autocast for the forward passes,
channels_last convolutions and the CUDA-only choices, an optional compiled forward, and ``EnvStepper``, which lets a
learner run while ale-py's C++ envs step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fovea.agents.base import AgentConfig
from fovea.envs.atari import AtariVector
from fovea.precision import amp_dtype, autocast, channels_last

# CUDA graphs ("reduce-overhead") are left out: a graph replays into static output buffers that its next replay
# overwrites, and here outputs outlive the call (the target net's Q-values next to the online net's in one update,
# a rollout's values kept until its update), and one forward serves alternating shapes (acting on num_envs, learning
# on a batch). Without them, max-autotune picks the fastest conv / matmul kernels for those few static shapes.
COMPILE_MODE = {"cuda": "max-autotune-no-cudagraphs"}  # other devices: torch.compile's default mode


@dataclass(frozen=True)
class FastPath:
    """How a run uses its device: ``autocast()`` around forward passes (bf16 or nothing),
    ``prepare(net)`` for channels_last convolutions on CUDA and a compiled forward, and ``sync_free``: on CUDA
    the update reads nothing back to the host (the replay samples on the device and masks what it cannot redraw).

    ``FastPath.of(cfg, device)`` resolves a config's ``amp`` and ``compile`` for ``device``.
    """

    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    compile: bool = False

    @classmethod
    def of(cls, cfg: AgentConfig, device: torch.device | str) -> FastPath:
        device = torch.device(device)
        dtype = amp_dtype(cfg.amp, device)
        # auto on a GPU without bf16 would mean fp16, which needs loss scaling: the agents keep fp32 there
        return cls(device, dtype if dtype == torch.bfloat16 else None, cfg.compile)

    @property
    def sync_free(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def prepare(self, net: nn.Module, *, dynamic: bool | None = False) -> nn.Module:
        """channels_last weights on CUDA and, with ``compile``, a compiled forward (``nn.Module.compile`` compiles
        in place, so ``state_dict`` keys keep no ``_orig_mod.`` prefix and checkpoints load either way).
        ``dynamic=False`` specialises on each input shape (acting and learning batches are fixed); None lets
        torch mark a changing batch size dynamic (REINFORCE's batches of whole episodes)."""
        channels_last(net, self.device)
        if self.compile:
            net.compile(mode=COMPILE_MODE.get(self.device.type), dynamic=dynamic)
        return net


def learning_layout(x: torch.Tensor) -> torch.Tensor:
    """A batch of images for a learning pass on the CPU in channels_last (NHWC) layout, anything else unchanged.

    oneDNN's convolution kernels run forward and backward faster in NHWC: on 2 cores the Nature CNN's update on 256
    frames took 0.71-0.77x the time (``python -m benchmarks.ppo_atari_throughput`` gives the whole loop). Only the
    input changes (a convolution follows its input's layout), so the weights, the optimizer state and checkpoints
    stay as they were; acting (no autograd, a few frames) stays NCHW, which is faster there. On CUDA ``prepare``
    already makes the weights channels_last."""
    if x.dim() == 4 and x.device.type == "cpu" and torch.is_grad_enabled():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off (fp32) for a network's heads: they are small, and their outputs feed argmax, TD targets and
    log-probabilities."""
    return torch.autocast(x.device.type, enabled=False)


class EnvStepper:
    """``env.step`` in two halves, so that a learner can work while the envs step: ``send(actions)`` starts a
    vector step and ``recv()`` returns what ``env.step(actions)`` would have.

    With ``overlap`` an ``AtariVector`` steps in ale-py's C++ threads between the two calls (its own ``send`` /
    ``recv``); any other env, or no ``overlap``, steps inside ``recv()``.
    """

    def __init__(self, env, overlap: bool):
        self.env, self.background = env, overlap and isinstance(env, AtariVector)
        self.actions: np.ndarray | None = None

    def send(self, actions: np.ndarray) -> None:
        self.actions = actions
        if self.background:
            self.env.send(actions)

    def recv(self):
        actions, self.actions = self.actions, None
        return self.env.recv() if self.background else self.env.step(actions)


def to_device(x, device: torch.device):
    """A tensor, or a tuple of them (a recurrent state), on ``device``; None stays None."""
    if x is None:
        return None
    return tuple(t.to(device) for t in x) if isinstance(x, tuple | list) else x.to(device)
