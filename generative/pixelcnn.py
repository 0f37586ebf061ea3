"""PixelCNN: van den Oord, Kalchbrenner and Kavukcuoglu, "Pixel Recurrent Neural Networks" (ICML 2016), and
the gated form of van den Oord et al., "Conditional Image Generation with PixelCNN Decoders" (NeurIPS 2016);
the notes, chapter 13.3: an explicit density p(x) = prod_i p(x_i | x_1 .. x_{i-1}) over the pixels in raster
order, each factor a softmax over the ``max_value + 1`` pixel levels, trained by maximum likelihood.

Masked convolutions keep the order. A kernel only covers the rows above its output pixel and the pixels to
its left; at the output pixel itself a type-A mask (the first layer) hides the pixel's own value and a
type-B mask (later layers) lets a feature see features of the same pixel. With C > 1 channels (RGB) the
features are split into C groups, group g belonging to channel g: at the centre pixel group g sees input
groups < g (type A) or <= g (type B), so R is predicted from the pixels before, G also from R, B from R
and G.

The plain PixelCNN (a type-A convolution, then residual blocks of type-B convolutions) has a blind spot:
the pixels to the upper right, beyond its triangular cone. The gated PixelCNN splits each layer into a
vertical stack (every pixel of the rows above, no blind spot) and a horizontal stack (the current row up
to the pixel), joined by a 1x1 convolution from vertical to horizontal, with tanh * sigmoid gates.

Sampling runs the network once per pixel (and channel). The fast sampler gives the same samples for the
same seed: it runs the network only on the window of the image the next pixel can see (its receptive
field: ``reach`` rows up and columns to each side), so the computation at that pixel is the same and
the uniforms come from the same generator in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fovea.config import param, register_recipe
from fovea.errors import ConfigError
from generative.base import LN2, GenConfig, GenerativeModel, categorical, register_model
from vision.data import ImageData

Reach = tuple[int, int, int]  # (up, left, right): how far a layer's output pixel sees into its input


def channel_groups(n: int, colors: int) -> torch.Tensor:
    """The colour channel each of ``n`` features belongs to: contiguous blocks, (n,) in 0..colors-1."""
    return torch.arange(n) * colors // n


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move a map one row down, a zero row on top: row y then holds what row y - 1 held."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) for the two halves of the channels (B, 2h, H, W) -> (B, h, H, W)."""
    a, b = x.chunk(2, 1)
    return torch.tanh(a) * torch.sigmoid(b)


class MaskedConv2d(nn.Conv2d):
    """A convolution whose output pixel sees ``up`` rows above it, and in its own row ``left`` pixels to its
    left, itself (through the channel mask) and ``right`` pixels to its right. The kernel holds only those
    rows, (up + 1, left + 1 + right), with zero padding above and at the sides: no weight looks down.

    Args:
        in_channels, out_channels: feature counts.
        up, left, right: the reach of the kernel.
        mask: ``"A"`` (the first layer: group g sees input groups < g at its own pixel), ``"B"`` (groups <= g)
            or ``None``: the whole own row within the kernel is visible (the vertical stack, whose features
            at row y hold only rows above y); with a mask, the pixels right of the output pixel are hidden.
        colors: image channels C; features are split into C groups in order (see ``channel_groups``).
        in_groups, out_groups: the group of each input / output feature when not the contiguous blocks.
    """

    def __init__(self, in_channels: int, out_channels: int, *, up: int = 0, left: int = 0, right: int = 0,
                 mask: Literal["A", "B"] | None = "B", colors: int = 1, in_groups: torch.Tensor | None = None,
                 out_groups: torch.Tensor | None = None):  # fmt: skip
        super().__init__(in_channels, out_channels, (up + 1, left + 1 + right))
        self.reach: Reach = (up, left, right)
        self.padding_lrtb = (left, right, up, 0)
        m = torch.ones(out_channels, in_channels, up + 1, left + 1 + right)
        if mask is not None:
            gi = channel_groups(in_channels, colors) if in_groups is None else in_groups
            go = channel_groups(out_channels, colors) if out_groups is None else out_groups
            seen = go[:, None] > gi[None, :] if mask == "A" else go[:, None] >= gi[None, :]  # (out, in)
            m[:, :, up, left] = seen.float()
            m[:, :, up, left + 1 :] = 0
        self.register_buffer("mask", m, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.padding_lrtb), self.weight * self.mask, self.bias)


def add_reach(a: Reach, b: Reach) -> Reach:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


class ResidualBlock(nn.Module):
    """Plain PixelCNN block: x + 1x1(relu(dropout(kxk_B(relu(x))) + label bias)), type-B masks throughout."""

    def __init__(self, hidden: int, kernel_size: int, colors: int, dropout: float, num_classes: int):
        super().__init__()
        r = kernel_size // 2
        self.conv = MaskedConv2d(hidden, hidden, up=r, left=r, right=r, mask="B", colors=colors)
        self.out = MaskedConv2d(hidden, hidden, mask="B", colors=colors)
        self.drop = nn.Dropout(dropout)
        self.label = nn.Embedding(num_classes, hidden) if num_classes else None
        self.reach = self.conv.reach

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        y = self.conv(F.relu(x))  # (B, h, H, W)
        if self.label is not None:
            y = y + self.label(labels)[:, :, None, None]
        return x + self.out(F.relu(self.drop(y)))


class PlainBody(nn.Module):
    """PixelCNN (van den Oord et al. 2016a): a type-A k1 x k1 convolution, then residual type-B blocks."""

    def __init__(self, colors: int, hidden: int, layers: int, kernel_size: int, first_kernel: int, dropout: float,
                 num_classes: int):  # fmt: skip
        super().__init__()
        r = first_kernel // 2
        self.first = MaskedConv2d(colors, hidden, up=r, left=r, right=r, mask="A", colors=colors)
        self.blocks = nn.ModuleList(
            ResidualBlock(hidden, kernel_size, colors, dropout, num_classes) for _ in range(layers)
        )
        self.reach: Reach = self.first.reach
        for b in self.blocks:
            self.reach = add_reach(self.reach, b.reach)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = self.first(x)  # (B, hidden, H, W)
        for block in self.blocks:
            h = block(h, labels)
        return h


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN (van den Oord et al. 2016b, figure 2).

    The vertical stack ``v`` at row y holds only rows above y: the first layer shifts its input one row down,
    later layers see up to their own row of ``v``. The horizontal stack ``h`` sees its row up to the pixel
    (type A in the first layer, B after) plus ``v`` at the same pixel through a 1x1 convolution.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int, colors: int, first: bool, dropout: float,
                 num_classes: int):  # fmt: skip
        super().__init__()
        r, self.first = kernel_size // 2, first
        gated = channel_groups(hidden, colors).repeat(2)  # the tanh half and the sigmoid half share groups
        in_groups = channel_groups(in_channels, colors)
        self.v = MaskedConv2d(in_channels, 2 * hidden, up=r, left=r, right=r, mask=None)
        self.h = MaskedConv2d(in_channels, 2 * hidden, left=r, mask="A" if first else "B", in_groups=in_groups,
                              out_groups=gated)  # fmt: skip
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)  # v holds rows above only: no mask needed
        self.h_out = MaskedConv2d(hidden, hidden, mask="B", colors=colors)
        self.drop = nn.Dropout(dropout)
        self.label = nn.Embedding(num_classes, 4 * hidden) if num_classes else None
        self.reach: Reach = (r + int(first), r, r)

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        v_pre = self.v(down_shift(v) if self.first else v)  # (B, 2h, H, W)
        h_pre = self.h(h) + self.v_to_h(v_pre)  # (B, 2h, H, W)
        if self.label is not None:
            bv, bh = self.label(labels)[:, :, None, None].chunk(2, 1)
            v_pre, h_pre = v_pre + bv, h_pre + bh
        h_new = self.h_out(self.drop(gate(h_pre)))  # (B, h, H, W)
        return gate(v_pre), h_new if self.first else h + h_new


class GatedBody(nn.Module):
    """Gated PixelCNN: ``layers`` gated layers, the first with a ``first_kernel`` reach, no blind spot."""

    def __init__(self, colors: int, hidden: int, layers: int, kernel_size: int, first_kernel: int, dropout: float,
                 num_classes: int):  # fmt: skip
        super().__init__()
        self.layers = nn.ModuleList([
            GatedLayer(colors if i == 0 else hidden, hidden, first_kernel if i == 0 else kernel_size, colors, i == 0,
                       dropout, num_classes) for i in range(layers)
        ])  # fmt: skip
        self.reach: Reach = (0, 0, 0)
        for layer in self.layers:
            self.reach = add_reach(self.reach, layer.reach)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return h  # (B, hidden, H, W)


class PixelCNN(GenerativeModel):
    """An autoregressive image model: a masked ``body`` and a 1x1 head to a softmax per pixel and channel.

    Args:
        shape: (C, H, W) of the images.
        max_value: the largest pixel value; each pixel and channel gets a softmax over max_value + 1 levels.
        body: ``PlainBody`` or ``GatedBody``: float images (B, C, H, W) in [-1, 1] and labels -> features
            (B, hidden, H, W); declares ``reach`` (up, left, right), its receptive field.
        hidden: the body's output features.
        num_classes: > 0 when the body takes class labels.
    """

    likelihood = "exact"

    def __init__(self, shape: tuple[int, int, int], max_value: int, body: nn.Module, hidden: int,
                 num_classes: int = 0):  # fmt: skip
        super().__init__(shape, max_value, num_classes)
        colors = self.shape[0]
        self.levels = self.max_value + 1
        self.body = body
        self.head = nn.Sequential(
            nn.ReLU(), MaskedConv2d(hidden, hidden, colors=colors),
            nn.ReLU(), MaskedConv2d(hidden, colors * self.levels, colors=colors),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C, levels, H, W) from float images ``x`` (B, C, H', W') in [0, 1] (any H', W': a window)."""
        b, c, h, w = x.shape
        logits = self.head(self.body(x * 2 - 1, self._labels(labels, b)))  # (B, C * levels, H, W)
        return logits.view(b, c, self.levels, h, w)

    def nll(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood in nats of uint8 ``images`` (B, C, H, W): (B,)."""
        if tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"PixelCNN takes images of shape (B, {', '.join(map(str, self.shape))}); "
                             f"got {tuple(images.shape)}")  # fmt: skip
        logits = self(self.to_unit(images), labels).transpose(1, 2)  # (B, levels, C, H, W)
        return F.cross_entropy(logits, images.long(), reduction="none").sum((1, 2, 3))

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        images, labels = batch
        nats = self.nll(images, labels).mean()
        dims = images[0].numel()
        return {"loss": nats, "bits_per_dim": nats.detach() / (dims * LN2)}

    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if labels is None or labels.shape != (n,):
            raise ValueError(f"this PixelCNN is class-conditional: give labels (n,) = ({n},), "
                             f"in 0..{self.num_classes - 1}")  # fmt: skip
        return labels

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0,
               labels: torch.Tensor | None = None, fast: bool = True) -> torch.Tensor:  # fmt: skip
        """``n`` images (n, C, H, W) uint8, pixel by pixel in raster order (channel by channel within a pixel),
        in eval mode. ``fast`` runs the network on the window each pixel sees rather than the whole image: the
        same logits, so the same samples for the same ``generator``; ``fast=False`` is the plain loop."""
        self._labels(labels, n)
        was_training = self.training
        self.eval()
        try:
            return self._sample(n, generator, temperature, labels, window=fast)
        finally:
            self.train(was_training)

    def _sample(self, n: int, generator: torch.Generator | None, temperature: float, labels: torch.Tensor | None,
                window: bool) -> torch.Tensor:  # fmt: skip
        colors, height, width = self.shape
        images = torch.zeros(n, colors, height, width, dtype=torch.uint8, device=self.device)
        up, left, right = self.body.reach
        side = max(left, right)  # a window edge's zero padding reaches `side` columns in, but not to the pixel
        for r in range(height):
            r0, r1 = (max(0, r - up), r + 1) if window else (0, height)
            for c in range(width):
                c0, c1 = (max(0, c - side), min(width, c + side + 1)) if window else (0, width)
                for ch in range(colors):
                    x = self.to_unit(images[:, :, r0:r1, c0:c1])  # (n, C, h, w)
                    logits = self(x, labels)[:, ch, :, r - r0, c - c0]  # (n, levels)
                    images[:, ch, r, c] = categorical(logits, generator, temperature).to(torch.uint8)
        return images


# ----------------------------------------------------------------------------- config and recipes


@dataclass(kw_only=True)
class PixelCNNConfig(GenConfig):
    """PixelCNN: a softmax over the max_value + 1 levels of every pixel and channel (17 for digits, 256 for
    8-bit images), given the pixels before it in raster order."""

    gated: bool = True
    """Gated PixelCNN (vertical + horizontal stacks, no blind spot); false: the plain PixelCNN with residual
    blocks of masked convolutions."""
    hidden: int = param(64, ge=1)
    """Features per layer; split into C groups for C-channel images, so at least C."""
    layers: int = param(5, ge=1)
    """Masked layers: gated, the gated layers; plain, the type-A convolution and layers - 1 residual blocks."""
    kernel_size: int = param(3, ge=3)
    """Odd kernel size of the layers after the first."""
    first_kernel: int = param(7, ge=3)
    """Odd kernel size of the first (type-A) layer."""
    dropout: float = param(0.0, ge=0, lt=1)
    """Dropout on the hidden features of every layer (few training images: the main defence against
    overfitting, with weight_decay and keeping the best validation epoch)."""
    conditional: bool = False
    """Condition on the class label: a learned bias per class in every layer; samples then take labels."""

    def validate(self) -> None:
        super().validate()
        for name in ("kernel_size", "first_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ConfigError(f"PixelCNNConfig.{name} = {getattr(self, name)} is not allowed: it must be odd")


def build(cfg: PixelCNNConfig, data: ImageData) -> PixelCNN:
    """A PixelCNN for ``data``'s image shape and pixel levels."""
    colors = data.shape[0]
    if cfg.hidden < colors:
        raise ConfigError(f"PixelCNNConfig.hidden = {cfg.hidden} is too small for {colors}-channel images: "
                          f"each channel needs its own features; use --hidden {colors} or more")  # fmt: skip
    num_classes = len(data.classes) if cfg.conditional else 0
    body_cls = GatedBody if cfg.gated else PlainBody
    layers = cfg.layers if cfg.gated else cfg.layers - 1
    body = body_cls(colors, cfg.hidden, layers, cfg.kernel_size, cfg.first_kernel, cfg.dropout, num_classes)
    return PixelCNN(data.shape, data.max_value, body, cfg.hidden, num_classes)


register_model(PixelCNNConfig, build)
register_recipe(
    "pixelcnn-digits",
    PixelCNNConfig(),
    "Gated PixelCNN on the 8x8 digits (17 levels): test NLL <= 85 nats/image",
)
