"""Image augmentation of observations for data-efficient RL, on the device, one random draw per observation.

``random_shift`` is DrQ's (Kostrikov, Yarats and Fergus, "Image Augmentation Is All You Need", ICLR 2021, section
3.1): pad each side by ``pad`` pixels repeating the border (PyTorch's ReplicationPad2d there, 'edge' padding in
Dopamine's Atari 100k agent) and crop back to the original size at a random offset, i.e. shift the image by up to
``pad`` pixels in each direction. Here it is done by indexing with clamped coordinates, which is the same image
without building the padded one, works for any dtype (uint8 frames stay uint8) and moves every observation of a
batch by its own offset (the frames of one stack together).

``intensity`` is the intensity augmentation that Dopamine's DrQ and DrQ(epsilon) apply after the shift
(Schwarzer et al., "Data-Efficient Reinforcement Learning with Self-Predictive Representations", ICLR 2021):
x * (1 + 0.05 * clip(N(0, 1), -2, 2)), one factor per observation.
"""

from __future__ import annotations

import torch


def random_shift(obs: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """``obs`` (B, ..., H, W) with each observation shifted by its own (dy, dx) in [-pad, pad]^2, the border
    repeated where the image moved in; same shape, dtype and device. ``generator`` must live on ``obs``'s device."""
    if pad <= 0:
        return obs
    b, (h, w), dev = obs.shape[0], obs.shape[-2:], obs.device
    shift = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev) - pad  # (dy, dx) per image
    rows = (torch.arange(h, device=dev)[None, :] + shift[0][:, None]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=dev)[None, :] + shift[1][:, None]).clamp_(0, w - 1)  # (B, W)
    # one gather over the flattened image (source pixel = row * W + col), the same for every frame of a stack,
    # rather than one along H and another along W: half the memory traffic
    source = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w)  # (B, 1, H*W)
    flat = obs.reshape(b, -1, h * w)  # (B, C, H*W): a stack moves as one image
    return flat.gather(2, source.expand(b, flat.shape[1], h * w)).reshape(obs.shape)


def intensity(obs: torch.Tensor, scale: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """``obs`` as float32 times one factor 1 + ``scale`` * clip(N(0, 1), -2, 2) per observation."""
    noise = torch.randn(obs.shape[0], generator=generator, device=obs.device).clamp_(-2.0, 2.0)
    return obs.float() * (1.0 + scale * noise).view(-1, *([1] * (obs.dim() - 1)))
