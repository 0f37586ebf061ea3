"""Convolutional backbones: NatureCNN, ConvNet, ResNet (CIFAR-style) and ConvDecoder.

Each takes float images (B, C, H, W) (scaling uint8 pixels is the owning model's job) and declares
its output size: ``out_features`` for encoders (plus ``out_channels`` and ``forward_features`` for
the spatial map, which detection heads use), ``out_shape`` for the decoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fovea.backbones.layers import activation as make_activation
from fovea.backbones.layers import image_shape, norm2d, probe
from fovea.backbones.registry import BackboneError, register


@register("nature-cnn", kind="image", tiny={"features": 16})
class NatureCNN(nn.Module):
    """The DQN trunk of Mnih et al. (2015): 3 convolutions (8x8/4, 4x4/2, 3x3/1) and a 512-unit layer.

    Args:
        in_shape: (C, H, W); H and W at least 36 (84x84 in the paper).
        features: width of the final fully connected layer.
    """

    def __init__(self, in_shape: tuple[int, ...], features: int = 512):
        super().__init__()
        c, _, _ = image_shape("nature-cnn", in_shape)
        self.convs = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        )  # fmt: skip
        self.out_channels = 64
        flat = math.prod(probe(self, self.convs, in_shape, "nature-cnn"))  # 3136 for 84x84
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, features), nn.ReLU())
        self.out_features = features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)  # (B, 64, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x))  # (B, features)


@register("convnet", kind="image", tiny={"widths": (4, 8)})
class ConvNet(nn.Module):
    """Conv-batchnorm-activation stacks, one stage per width, each stage halving the resolution.

    Args:
        in_shape: (C, H, W).
        widths: channels of each stage; the number of stages is ``len(widths)``.
        convs_per_stage: conv-norm-activation layers per stage.
        kernel_size: odd kernel size ("same" padding).
        activation: relu, leaky_relu, elu, gelu, tanh or silu.
        norm: ``batch`` (batch norm after every convolution) or ``none``.
        downsample: ``max`` (2x2 max pooling after each stage), ``stride`` (the stage's first
            convolution has stride 2) or ``none``.
        global_pool: average the final map over space (``out_features == widths[-1]``) instead of
            flattening it.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        widths: tuple[int, ...] = (32, 64),
        convs_per_stage: int = 1,
        kernel_size: int = 3,
        activation: str = "relu",
        norm: str = "batch",
        downsample: str = "max",
        global_pool: bool = False,
    ):
        super().__init__()
        c, _, _ = image_shape("convnet", in_shape)
        if not widths or min(widths) < 1 or convs_per_stage < 1 or kernel_size % 2 == 0:
            raise BackboneError(
                f"convnet needs widths >= 1, convs_per_stage >= 1 and an odd kernel_size; got widths={widths}, "
                f"convs_per_stage={convs_per_stage}, kernel_size={kernel_size}"
            )
        if downsample not in ("max", "stride", "none"):
            raise BackboneError(f"convnet downsample must be one of max, stride, none; got {downsample!r}")
        layers: list[nn.Module] = []
        for w in widths:
            for i in range(convs_per_stage):
                stride = 2 if downsample == "stride" and i == 0 else 1
                layers += [
                    nn.Conv2d(c, w, kernel_size, stride, kernel_size // 2, bias=norm == "none"),
                    norm2d(norm, w),
                    make_activation(activation),
                ]
                c = w
            if downsample == "max":
                layers.append(nn.MaxPool2d(2))
        self.stages = nn.Sequential(*layers)
        self.out_channels = c
        self.global_pool = global_pool
        spatial = probe(self, self.stages, in_shape, "convnet")
        self.out_features = c if global_pool else math.prod(spatial)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)  # (B, widths[-1], h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stages(x)
        return f.mean(dim=(2, 3)) if self.global_pool else f.flatten(1)


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity (or 1x1 projection) shortcut, He et al. (2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), make_activation(act),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@register("resnet", kind="image", tiny={"depth": 8, "widths": (4, 8, 16)})
class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem, stages of basic blocks, global pooling.

    Args:
        in_shape: (C, H, W).
        depth: 2 + 2 * blocks_per_stage * len(widths); with 3 stages: 8, 14, 20, 32, 44, 56, 110.
        widths: channels of each stage; every stage after the first halves the resolution.
        activation: relu, leaky_relu, elu, gelu, tanh or silu.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        depth: int = 20,
        widths: tuple[int, ...] = (16, 32, 64),
        activation: str = "relu",
    ):
        super().__init__()
        c, _, _ = image_shape("resnet", in_shape)
        per_stage, rest = divmod(depth - 2, 2 * len(widths)) if widths else (0, 1)
        if rest or per_stage < 1:
            valid = ", ".join(str(2 + 2 * n * max(len(widths), 1)) for n in range(1, 6))
            raise BackboneError(f"resnet depth={depth} does not fit {len(widths)} stages; use one of {valid}, ...")
        self.stem = nn.Sequential(
            nn.Conv2d(c, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), make_activation(activation)
        )
        blocks: list[nn.Module] = []
        c = widths[0]
        for s, w in enumerate(widths):
            for b in range(per_stage):
                blocks.append(BasicBlock(c, w, 2 if s > 0 and b == 0 else 1, activation))
                c = w
        self.blocks = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        probe(self, self.forward_features, in_shape, "resnet")
        self.out_channels = self.out_features = c

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))  # (B, widths[-1], H / 2^(stages-1), ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))  # (B, widths[-1])


@register("conv-decoder", kind="decoder", tiny={"out_shape": (1, 8, 8), "widths": (8, 4)})
class ConvDecoder(nn.Module):
    """A linear layer to a small map, then transpose convolutions doubling it up to ``out_shape``.

    The DCGAN generator and the autoencoder / VAE decoder. Outputs are unbounded (logits or means):
    the model that owns the decoder picks the likelihood or the squashing.

    Args:
        in_shape: (F,), the size of the input vector (a latent code).
        out_shape: (C, H, W) of the output; odd sizes are reached by a centre crop.
        widths: channels of each upsampling stage; the number of stages is ``len(widths)``.
        activation: relu, leaky_relu, elu, gelu, tanh or silu.
        norm: ``batch`` or ``none``.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...] = (1, 28, 28),
        widths: tuple[int, ...] = (64, 32),
        activation: str = "relu",
        norm: str = "batch",
    ):
        super().__init__()
        if len(in_shape) != 1:
            raise BackboneError(f"conv-decoder takes vectors, in_shape=(F,); got {tuple(in_shape)}")
        c_out, h, w = image_shape("conv-decoder", tuple(out_shape))
        if not widths or min(widths) < 1:
            raise BackboneError(f"conv-decoder needs at least one width >= 1; got widths={widths}")
        scale = 2 ** len(widths)
        self.base = (widths[0], math.ceil(h / scale), math.ceil(w / scale))
        self.fc = nn.Sequential(nn.Linear(in_shape[0], math.prod(self.base)), make_activation(activation))
        layers: list[nn.Module] = []
        for i, c in enumerate(widths):
            nxt = widths[i + 1] if i + 1 < len(widths) else c
            layers += [
                nn.ConvTranspose2d(c, nxt, 4, 2, 1, bias=norm == "none"),
                norm2d(norm, nxt),
                make_activation(activation),
            ]
        layers.append(nn.Conv2d(widths[-1], c_out, 3, 1, 1))
        self.up = nn.Sequential(*layers)
        self.out_shape = (c_out, h, w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.up(self.fc(z).view(-1, *self.base))  # (B, C, base_h * 2^n, base_w * 2^n)
        _, h, w = self.out_shape
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        return x[:, :, top : top + h, left : left + w]  # (B, C, H, W)
