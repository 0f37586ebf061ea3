"""Autoencoder and variational autoencoder (notes, sections 13.4 and 13.5).

Both are ``encoder -> z -> decoder`` built from registered backbones: an image backbone (``convnet``,
``nature-cnn``, ...) then a linear layer to the code, and a ``conv-decoder`` back to the image. The
encoder is saved as ``model.encoder`` in the checkpoint, so a classifier or an agent can start from
it with ``--backbone-from runs/NAME``.

- The autoencoder learns by the L2 reconstruction loss ``||x - x_hat||^2``. It has no prior, so to
  sample it fits a Gaussian to the codes of the training images once training ends and decodes
  draws from that.
- The VAE maximises the ELBO, ``E_q[log p(x|z)] - KL(q(z|x) || N(0, I))``; reconstruction and KL are
  logged apart. ``p(x|z)`` fits the data: a categorical over the pixel levels (17 for the digits),
  a discretised logistic for 8-bit images, or a Bernoulli on binarised pixels. Its negative
  log-likelihood is estimated by importance weighting (IWAE, Burda et al. 2016) with ``k`` samples:
  ``log p(x) ~ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k``, a bound that
  tightens as ``k`` grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fovea.backbones.transfer import start_from
from fovea.config import BackboneSpec, param, register_recipe
from fovea.errors import ConfigError
from fovea.generative.base import GenConfig, GenerativeModel, categorical, noise, register_model
from fovea.vision.data import ImageData

LOG_2PI = math.log(2 * math.pi)


def _encoder_spec() -> BackboneSpec:
    return BackboneSpec(name="convnet", options={"widths": (32, 64), "norm": "none", "activation": "elu"})


def _decoder_spec() -> BackboneSpec:
    return BackboneSpec(name="conv-decoder", options={"widths": (64, 32), "norm": "none", "activation": "elu"})


@dataclass(kw_only=True)
class AEConfig(GenConfig):
    """An autoencoder: image backbone -> code -> conv decoder, trained by L2 reconstruction."""

    encoder: BackboneSpec = field(default_factory=_encoder_spec)
    """Image backbone of the encoder (its weights are model.encoder in the checkpoint)."""
    decoder: BackboneSpec = field(default_factory=_decoder_spec)
    """Decoder backbone (out_shape is set from the data)."""
    latent_dim: int = param(16, ge=1)
    """Size of the code z."""
    backbone_from: str = ""
    """Start the encoder from another run's weights: runs/NAME or runs/NAME:PREFIX."""
    freeze_backbone: bool = False
    """With --backbone-from: keep the encoder fixed."""

    def validate(self) -> None:
        super().validate()
        if self.freeze_backbone and not self.backbone_from:
            raise ConfigError("freeze_backbone = true needs --backbone-from runs/NAME (weights to freeze)")


@dataclass(kw_only=True)
class VAEConfig(AEConfig):
    """A VAE: Gaussian encoder q(z|x), decoder likelihood p(x|z) matched to the data, trained on the ELBO."""

    likelihood: Literal["auto", "categorical", "logistic", "bernoulli"] = "auto"
    """p(x|z): categorical over the pixel levels, discretised logistic, Bernoulli on binarised pixels;
    auto: categorical up to 32 levels (digits), logistic above."""
    beta: float = param(1.0, ge=0)
    """Weight of the KL term (beta-VAE; 1 is the ELBO)."""
    iwae_samples: int = param(200, ge=1)
    """k of the importance-weighted NLL estimate (fovea eval and the final validation)."""
    sample_pixels: bool = False
    """Samples draw every pixel from p(x|z); default: the decoder's mean image (sharper to look at)."""


class Autoencoder(GenerativeModel):
    """``encoder`` (image backbone + linear) -> z -> ``decoder`` (vector -> image)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, code_width: int,
                 shape: tuple[int, int, int], max_value: int):  # fmt: skip
        super().__init__(shape, max_value)
        self.encoder, self.decoder = encoder, decoder
        self.to_code = nn.Linear(encoder.out_features, code_width)
        self.latent_dim = latent_dim
        self.register_buffer("code_mean", torch.zeros(latent_dim))
        self.register_buffer("code_chol", torch.eye(latent_dim))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.encoder(self.to_unit(images) - 0.5))  # (B, code_width)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images)[:, : self.latent_dim])

    def loss(self, batch, player: str = "model") -> dict[str, torch.Tensor]:
        images, _ = batch
        x = self.to_unit(images)
        x_hat = torch.sigmoid(self.decoder(self.encode(images)))
        sq = (x_hat - x).square().flatten(1).sum(1)  # ||x - x_hat||^2 per image, pixels in [0, 1]
        return {"loss": sq.mean(), "mse": sq.mean() / x[0].numel()}

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_unit(torch.sigmoid(self.decoder(z)))

    @torch.no_grad()
    def after_training(self, train: ImageData) -> None:
        """Fit N(mean, cov) to the codes of the training images: the distribution ``sample`` draws from."""
        was = self.training
        self.eval()
        codes = torch.cat([self.encode(x) for x in train.images.split(500)]).double()
        cov = torch.cov(codes.T).reshape(self.latent_dim, self.latent_dim)
        cov += 1e-6 * torch.eye(self.latent_dim, dtype=cov.dtype, device=cov.device)
        self.code_mean.copy_(codes.mean(0))
        self.code_chol.copy_(torch.linalg.cholesky(cov))
        self.train(was)

    def sample(self, n: int, *, generator=None, temperature: float = 1.0, labels=None) -> torch.Tensor:
        """``n`` decoded codes drawn from the Gaussian fitted by ``after_training`` (its spread scaled by
        ``temperature``): uint8 images (n, C, H, W)."""
        eps = noise((n, self.latent_dim), generator, self.device) * temperature
        return self.decode(self.code_mean + eps @ self.code_chol.T)


class VAE(Autoencoder):
    """Gaussian q(z|x) = N(mu, diag(sigma^2)), prior N(0, I), decoder likelihood ``likelihood``."""

    likelihood: str  # the decoder's pixel distribution p(x|z): "categorical", "logistic" or "bernoulli"
    nll_kind = "estimate"  # nll() is the IWAE bound

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, shape: tuple[int, int, int],
                 max_value: int, likelihood: str, beta: float = 1.0, iwae_samples: int = 200,
                 sample_pixels: bool = False):  # fmt: skip
        super().__init__(encoder, decoder, latent_dim, 2 * latent_dim, shape, max_value)
        self.likelihood, self.beta, self.iwae_samples = likelihood, beta, iwae_samples
        self.sample_pixels = sample_pixels

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.encode(images).chunk(2, dim=1)
        return mu, log_var.clamp(-12, 8)  # (B, D) each

    def _params(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output reshaped: categorical (B, C, K, H, W) logits; logistic (B, C, 2, H, W); Bernoulli
        (B, C, 1, H, W)."""
        c, h, w = self.shape
        return self.decoder(z).view(z.shape[0], c, -1, h, w)

    def log_px(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per image (B,), in nats."""
        if self.likelihood == "categorical":
            logp = -F.cross_entropy(params.transpose(1, 2), images.long(), reduction="none")  # (B, C, H, W)
        elif self.likelihood == "bernoulli":
            target = (images.float() > self.max_value / 2).float()
            logp = -F.binary_cross_entropy_with_logits(params[:, :, 0], target, reduction="none")
        else:
            logp = discretized_logistic_logp(images, params[:, :, 0], params[:, :, 1], self.max_value)
        return logp.flatten(1).sum(1)

    def loss(self, batch, player: str = "model") -> dict[str, torch.Tensor]:
        images, _ = batch
        mu, log_var = self.posterior(images)
        z = mu + (0.5 * log_var).exp() * torch.randn_like(mu)
        recon = -self.log_px(images, self._params(z))  # (B,)
        kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).sum(1)  # KL(q || N(0, I)), closed form
        return {"loss": (recon + self.beta * kl).mean(), "recon": recon.mean(), "kl": kl.mean(),
                "elbo": -(recon + kl).mean()}  # fmt: skip

    @torch.no_grad()
    def nll(self, images: torch.Tensor, labels=None, k: int | None = None, chunk: int = 50) -> torch.Tensor:
        """IWAE estimate of -log p(x) per image (B,), nats, with ``k`` importance samples."""
        k = k or self.iwae_samples
        mu, log_var = self.posterior(images)
        std = (0.5 * log_var).exp()
        terms = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn((m, *mu.shape), device=mu.device)  # (m, B, D)
            z = mu + std * eps
            log_q = (-0.5 * (eps.square() + LOG_2PI) - 0.5 * log_var).sum(-1)  # (m, B)
            log_prior = (-0.5 * (z.square() + LOG_2PI)).sum(-1)
            flat = z.reshape(m * len(images), -1)
            log_px = self.log_px(images.repeat(m, 1, 1, 1), self._params(flat)).view(m, len(images))
            terms.append(log_px + log_prior - log_q)
        return -(torch.logsumexp(torch.cat(terms), 0) - math.log(k))

    def decode(self, z: torch.Tensor, labels=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The decoder's mean image (or, with ``sample_pixels``, a draw from p(x|z))."""
        params = self._params(z)
        if self.likelihood == "categorical":
            if self.sample_pixels:
                return categorical(params.transpose(2, -1), generator).transpose(2, -1).squeeze(2).to(torch.uint8)
            levels = torch.arange(params.shape[2], device=z.device, dtype=torch.float32).view(1, 1, -1, 1, 1)
            mean = (params.softmax(2) * levels).sum(2) / self.max_value
        elif self.likelihood == "bernoulli":
            p = torch.sigmoid(params[:, :, 0])
            if self.sample_pixels:
                p = (torch.rand(p.shape, generator=generator).to(z.device) < p).float()
            mean = p
        else:
            mean = params[:, :, 0] + 0.5  # the logistic's location, on the [0, 1] pixel scale
        return self.from_unit(mean)

    def sample(self, n: int, *, generator=None, temperature: float = 1.0, labels=None) -> torch.Tensor:
        """``n`` draws z ~ N(0, temperature^2 I) decoded (see ``decode``): uint8 images (n, C, H, W)."""
        z = noise((n, self.latent_dim), generator, self.device) * temperature
        return self.decode(z, generator=generator)

    def after_training(self, train: ImageData) -> None:
        """The prior is fixed: nothing to fit."""


def discretized_logistic_logp(images: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor,
                              max_value: int) -> torch.Tensor:  # fmt: skip
    """log P(pixel) under a logistic binned at the ``max_value + 1`` levels (PixelCNN++'s likelihood, one
    component); ``loc`` on the [-0.5, 0.5] scale of centred pixels. Per pixel, same shape as ``images``.

    A middle bin's mass is ``sigmoid(a) - sigmoid(b)`` with ``a, b`` its edges in scales from ``loc``. Taken
    as written, in float32 both sigmoids round to the same value some 12-16 scales from the mean: the mass
    becomes 0, its log a floor, its gradient 0. It is computed instead from the exact identity
    ``sigmoid(a) - sigmoid(b) = sinh((a - b) / 2) / (2 cosh(a / 2) cosh(b / 2))``, whose logarithm
    ``(a - b) / 2 + log(1 - exp(-(a - b))) - (|a| + |b|) / 2 - softplus(-|a|) - softplus(-|b|)`` has no
    difference of nearly equal numbers at any distance. The edge bins take the tails:
    ``log sigmoid(a)`` for level 0, ``log(1 - sigmoid(b)) = -softplus(b)`` for ``max_value``.
    """
    x = images.float() / max_value - 0.5
    loc, log_scale = loc.float(), log_scale.float()
    inv = torch.exp(-log_scale.clamp(min=-7))
    half = 0.5 / max_value
    a = inv * (x - loc + half)  # upper edge of the pixel's bin, in scales from the mean
    b = inv * (x - loc - half)  # lower edge
    width = inv * (2 * half)  # a - b, > 0
    lowest = F.logsigmoid(a)  # level 0: everything below its upper edge
    highest = -F.softplus(b)  # level max_value: everything above its lower edge
    mid = (0.5 * width + torch.log(-torch.expm1(-width)) - 0.5 * (a.abs() + b.abs())
           - F.softplus(-a.abs()) - F.softplus(-b.abs()))  # fmt: skip
    return torch.where(images == 0, lowest, torch.where(images == max_value, highest, mid))


def _build_parts(cfg: AEConfig, data: ImageData, out_channels: int) -> tuple[nn.Module, nn.Module]:
    encoder = cfg.encoder.build(data.shape)
    if cfg.backbone_from:
        start_from(encoder, cfg.backbone_from, cfg.freeze_backbone)
    c, h, w = data.shape
    decoder = cfg.decoder.build((cfg.latent_dim,), out_shape=(c * out_channels, h, w))
    return encoder, decoder


def build_ae(cfg: AEConfig, data: ImageData) -> Autoencoder:
    encoder, decoder = _build_parts(cfg, data, 1)
    return Autoencoder(encoder, decoder, cfg.latent_dim, cfg.latent_dim, data.shape, data.max_value)


def build_vae(cfg: VAEConfig, data: ImageData) -> VAE:
    kind = cfg.likelihood
    if kind == "auto":
        kind = "categorical" if data.max_value < 32 else "logistic"
    per_pixel = {"categorical": data.max_value + 1, "logistic": 2, "bernoulli": 1}[kind]
    encoder, decoder = _build_parts(cfg, data, per_pixel)
    last = decoder.up[-1] if hasattr(decoder, "up") else None
    if kind == "logistic" and isinstance(last, nn.Conv2d):  # start at the data's mean grey, 1/50 of the range wide
        with torch.no_grad():
            last.bias.view(-1, 2)[:, 0] = data.images.float().mean().item() / data.max_value - 0.5
            last.bias.view(-1, 2)[:, 1] = math.log(0.02)
    return VAE(encoder, decoder, cfg.latent_dim, data.shape, data.max_value, kind, cfg.beta, cfg.iwae_samples,
               cfg.sample_pixels)  # fmt: skip


register_model(AEConfig, build_ae)
register_model(VAEConfig, build_vae)
register_recipe("ae-digits", AEConfig(epochs=100, lr=2e-3),
                "Convolutional autoencoder on the 8x8 digits (L2 loss, 16-d code); samples from a Gaussian fit "
                "to the codes")  # fmt: skip
register_recipe("vae-digits", VAEConfig(epochs=100, lr=1e-3),
                "Convolutional VAE on the 8x8 digits, 17-way categorical pixels: IWAE test NLL under 95 nats")
register_recipe(
    "vae-atari",
    VAEConfig(dataset="atari:pong", encoder=BackboneSpec(name="nature-cnn", options={"features": 256}),
              decoder=BackboneSpec(name="conv-decoder", options={"widths": (64, 32, 16), "norm": "none",
                                                                  "activation": "elu"}),
              latent_dim=32, epochs=50, batch_size=64, lr=1e-3, eval_every=5, iwae_samples=8),
    "VAE on 84x84 Pong frames from a random policy (collected and cached in the run folder), discretised logistic",
)  # fmt: skip
