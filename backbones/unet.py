"""A small time-conditioned U-Net, the denoiser of the diffusion models (Ho et al. 2020, appendix B; Ronneberger
et al. 2015): residual blocks that add an embedding of the timestep (and of a class label), skip connections from
each level of the way down to the same level of the way up, and self-attention at low resolutions.

It is a ``denoiser`` backbone: ``net(x, t, labels=None)`` maps images (B, C, H, W) and timesteps (B,) to an output of
the same shape (``out_shape``), e.g. the noise that was added to them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fovea.backbones.layers import activation as make_activation
from fovea.backbones.layers import image_shape
from fovea.backbones.registry import BackboneError, register


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of timesteps t (B,), as the Transformer's positions (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([args.cos(), args.sin()], 1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels where the width allows (Wu & He 2018)."""
    groups = max(g for g in range(1, 33) if channels % g == 0 and (channels // g >= 4 or g == 1))
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """norm-act-conv, plus a projection of the time embedding, norm-act-dropout-conv, plus the (projected) input."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, act: str, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(c_in), make_activation(act), nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.emb = nn.Sequential(make_activation(act), nn.Linear(emb_dim, c_out))
        self.out_layers = nn.Sequential(
            group_norm(c_out), make_activation(act), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, 1, 1)
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]  # (B, c_out, H, W)
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a map, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Level(nn.Module):
    """The residual blocks of one resolution (each followed by attention when ``attend``)."""

    def __init__(self, widths_in: list[int], c_out: int, emb_dim: int, act: str, dropout: float, attend: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, c_out, emb_dim, act, dropout) for c in widths_in)
        self.attn = nn.ModuleList(Attention(c_out) if attend else nn.Identity() for _ in widths_in)


@register("unet", kind="denoiser", tiny={"widths": (8, 16), "blocks": 1, "attention_at": 20})
class UNet(nn.Module):
    """A time-conditioned U-Net: residual blocks with a timestep embedding, skip connections, attention.

    Args:
        in_shape: (C, H, W) of the images; sizes that do not halve ``len(widths) - 1`` times are padded.
        widths: channels of each level; every level after the first halves the resolution.
        blocks: residual blocks per level on the way down (the way up has one more, as in Ho et al.).
        attention_at: self-attention after the blocks of every level whose maps are at most this many pixels on
            their longer side, and in the middle (0: none). 16 for 32x32 images, as in Ho et al.
        dropout: dropout inside the residual blocks (0.1 on CIFAR-10 in Ho et al.).
        num_classes: > 0 for a class-conditional net: ``labels`` in 0..num_classes - 1 add a learned embedding,
            and the label ``num_classes`` (or ``labels=None``) means "no label" (classifier-free guidance).
        activation: relu, leaky_relu, elu, gelu, tanh or silu.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        widths: tuple[int, ...] = (32, 64),
        blocks: int = 2,
        attention_at: int = 16,
        dropout: float = 0.0,
        num_classes: int = 0,
        activation: str = "silu",
    ):
        super().__init__()
        c, h, w = image_shape("unet", in_shape)
        if not widths or min(widths) < 1 or blocks < 1 or not 0 <= dropout < 1 or num_classes < 0:
            raise BackboneError(
                f"unet needs widths >= 1, blocks >= 1, 0 <= dropout < 1 and num_classes >= 0; got widths={widths}, "
                f"blocks={blocks}, dropout={dropout}, num_classes={num_classes}"
            )
        self.out_shape = (c, h, w)
        self.num_classes = num_classes
        self.multiple = 2 ** (len(widths) - 1)
        emb = self.emb_dim = 4 * widths[0]
        self.time = nn.Sequential(nn.Linear(widths[0], emb), make_activation(activation), nn.Linear(emb, emb))
        self.label = nn.Embedding(num_classes + 1, emb) if num_classes else None
        self.stem = nn.Conv2d(c, widths[0], 3, 1, 1)
        size = max(math.ceil(h / self.multiple), math.ceil(w / self.multiple)) * self.multiple  # the longer side
        down, skips, ch = [], [widths[0]], widths[0]  # skips: the channels of each map kept for the way up
        for i, wd in enumerate(widths):
            level = Level([ch] + [wd] * (blocks - 1), wd, emb, activation, dropout, size >> i <= attention_at)
            down.append(level)
            ch = wd
            skips += [wd] * blocks
            if i < len(widths) - 1:
                skips.append(wd)  # the downsampled map
        self.down = nn.ModuleList(down)
        self.downsample = nn.ModuleList(nn.Conv2d(wd, wd, 3, 2, 1) for wd in widths[:-1])
        self.mid = nn.ModuleList(ResBlock(ch, ch, emb, activation, dropout) for _ in range(2))
        self.mid_attn = Attention(ch) if attention_at > 0 else nn.Identity()
        up = []
        for i, wd in reversed(list(enumerate(widths))):
            ins = []
            for _ in range(blocks + 1):
                ins.append(ch + skips.pop())
                ch = wd
            up.append(Level(ins, wd, emb, activation, dropout, size >> i <= attention_at))
        self.up = nn.ModuleList(up)
        self.upsample = nn.ModuleList(nn.Conv2d(wd, wd, 3, 1, 1) for wd in reversed(widths[1:]))
        self.out = nn.Sequential(group_norm(ch), make_activation(activation), nn.Conv2d(ch, c, 3, 1, 1))

    def embed(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The conditioning vector (B, emb_dim): the timestep's embedding plus the label's (``None``: no label)."""
        e = self.time(timestep_embedding(t, self.time[0].in_features))
        if self.label is not None:
            if labels is None:
                labels = torch.full_like(t, self.num_classes, dtype=torch.long)
            e = e + self.label(labels.long())
        return e

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The output (B, C, H, W) for images x (B, C, H, W) at timesteps t (B,) (integers or floats)."""
        h0, w0 = x.shape[2:]
        pad_h, pad_w = -h0 % self.multiple, -w0 % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        e = self.embed(t.expand(len(x)) if t.dim() == 0 else t, labels)
        h = self.stem(x)
        kept = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = attn(block(h, e))
                kept.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                kept.append(h)
        h = self.mid[1](self.mid_attn(self.mid[0](h, e)), e)
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = attn(block(torch.cat([h, kept.pop()], 1), e))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)[:, :, :h0, :w0]
