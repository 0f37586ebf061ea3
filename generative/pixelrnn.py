"""PixelRNN (notes, section 13.3): the pixels of an image in raster order through the shared
``RecurrentCore`` (an LSTM), each predicted from all the pixels before it.

``p(x) = prod_i p(x_i | x_1 .. x_{i-1})``: step ``i`` reads an embedding of pixel ``i - 1`` (a start
token at ``i = 0``) plus a learned embedding of position ``i``, and outputs a categorical over the
``max_value + 1`` levels of pixel ``i``. Colour images go pixel by pixel, the channels of a pixel in
turn (R, G, B). The likelihood is exact: the NLL is the summed cross-entropy. Sampling is one
recurrent step per pixel with the state carried along, so it costs one small step, not a full
network pass, per pixel (the row LSTM and diagonal BiLSTM of van den Oord et al. 2016 trade that
for parallel training; this is the plain, sequential form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fovea.config import BackboneSpec, param, register_recipe
from fovea.errors import ConfigError
from fovea.generative.base import GenConfig, GenerativeModel, categorical, register_model
from fovea.vision.data import ImageData


@dataclass(kw_only=True)
class PixelRNNConfig(GenConfig):
    """PixelRNN: raster-order pixels through a recurrent core, a categorical per pixel."""

    core: BackboneSpec = field(
        default_factory=lambda: BackboneSpec(name="recurrent", options={"hidden_size": 128, "cell": "lstm"})
    )
    """The recurrent core (LSTM or GRU, its size and layers)."""
    embed_dim: int = param(64, ge=1)
    """Size of the pixel-value and position embeddings."""
    dropout: float = param(0.2, ge=0, lt=1)
    """Dropout on the core's outputs."""

    def validate(self) -> None:
        super().validate()
        if self.core.name != "recurrent":
            raise ConfigError(f"PixelRNNConfig.core must be the 'recurrent' backbone; got {self.core.name!r}")


class PixelRNN(GenerativeModel):
    """Autoregressive model over the flattened pixels (raster order, channels interleaved).

    Args:
        core: a ``RecurrentCore`` taking ``embed_dim`` features.
        shape: (C, H, W).
        max_value: largest pixel value; ``max_value + 1`` levels per pixel.
        embed_dim: embedding size.
        dropout: dropout on the core's outputs.
    """

    nll_kind = "exact"

    def __init__(self, core: nn.Module, shape: tuple[int, int, int], max_value: int, embed_dim: int,
                 dropout: float = 0.0):  # fmt: skip
        super().__init__(shape, max_value)
        self.levels, self.length = max_value + 1, math.prod(shape)
        self.value = nn.Embedding(self.levels + 1, embed_dim)  # the last index is the start token
        self.position = nn.Parameter(torch.zeros(self.length, embed_dim))
        self.core = core
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(core.out_features, self.levels)

    def sequence(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L) pixel values in raster order, the channels of each pixel in turn."""
        return images.permute(0, 2, 3, 1).reshape(images.shape[0], -1).long()

    def logits(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) values -> (B, L, levels) logits, step ``i`` seeing values ``< i`` only."""
        start = torch.full((seq.shape[0], 1), self.levels, device=seq.device, dtype=torch.long)
        inputs = self.value(torch.cat([start, seq[:, :-1]], 1)) + self.position  # (B, L, E)
        out, _ = self.core(inputs)
        return self.head(self.drop(out))

    def nll(self, images: torch.Tensor, labels=None) -> torch.Tensor:
        seq = self.sequence(images)
        return F.cross_entropy(self.logits(seq).transpose(1, 2), seq, reduction="none").sum(1)  # (B,)

    def loss(self, batch, player: str = "model") -> dict[str, torch.Tensor]:
        nats = self.nll(batch[0]).mean()
        return {"loss": nats, "bits_per_dim": nats / (self.length * math.log(2))}

    @torch.no_grad()
    def sample(self, n: int, *, generator=None, temperature: float = 1.0, labels=None) -> torch.Tensor:
        """``n`` images drawn pixel by pixel, each level from the softmax at ``temperature`` (0: the most likely
        level): uint8 (n, C, H, W)."""
        state = self.core.initial_state(n, self.device)
        prev = torch.full((n,), self.levels, device=self.device, dtype=torch.long)
        out = torch.empty((n, self.length), dtype=torch.long, device=self.device)
        for i in range(self.length):
            h, state = self.core((self.value(prev) + self.position[i]).unsqueeze(1), state)  # one step: (n, 1, hidden)
            prev = categorical(self.head(h[:, 0]), generator, temperature)
            out[:, i] = prev
        c, hgt, w = self.shape
        return out.view(n, hgt, w, c).permute(0, 3, 1, 2).to(torch.uint8).contiguous()


def build(cfg: PixelRNNConfig, data: ImageData) -> PixelRNN:
    return PixelRNN(cfg.core.build((cfg.embed_dim,)), data.shape, data.max_value, cfg.embed_dim, cfg.dropout)


register_model(PixelRNNConfig, build)
register_recipe("pixelrnn-digits", PixelRNNConfig(epochs=50, lr=2e-3, eval_every=2),
                "PixelRNN (LSTM over raster-order pixels) on the 8x8 digits: exact NLL, 17 levels per pixel")
