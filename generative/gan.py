"""Generative adversarial networks: Goodfellow et al. (2014), with the DCGAN architecture of Radford et al.
(2016), the hinge loss (Lim & Ye 2017; Miyato et al. 2018), WGAN-GP (Gulrajani et al. 2017), the R1 penalty
(Mescheder et al. 2018), a moving average of G's weights for sampling (Yazici et al. 2019) and a
class-conditional variant (Mirza & Osindero 2014) with MSGAN's mode-seeking term (Mao et al. 2019).

Two players (chapter 13.6 of the notes). The discriminator D maximises
``E_x[log D(x)] + E_z[log(1 - D(G(z)))]``; the generator, rather than minimising ``log(1 - D(G(z)))``
(flat where D rejects the fakes, so a poor generator learns nothing), maximises ``log D(G(z))``: the
non-saturating loss, ``loss = "ns"``. ``hinge`` and ``wgan-gp`` swap the pair of losses.

Pixels. Real uint8 images are dequantised, ``(v + u - 0.5) / max_value`` with ``u ~ U(0, 1)``, so the
discriminator cannot tell reals by their 17 exact levels; the generator's output is squashed by a
sigmoid onto the same range, ``[-0.5, max_value + 0.5] / max_value``, and ``from_unit`` rounds a fake
back to the level whose bin it falls in. Both enter D as ``2x - 1``.

Conditioning. A conditional G gets a label embedding concatenated to z; a conditional D gets one one-hot
plane per class appended to the image (``d_condition = "channels"``) or a projection term (``"projection"``).

Noise. Training draws z, the dequantisation and the WGAN-GP mixing weights from torch's global RNG
(seeded by the run, restored at resume); ``sample`` and ``decode`` draw from the generator they are given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fovea.config import BackboneSpec, param, register_recipe
from fovea.errors import ConfigError
from fovea.generative.base import GenConfig, GenerativeModel, ema_step, noise, register_model
from fovea.vision import data as vdata

Loss = Literal["ns", "hinge", "wgan-gp"]


class Generator(nn.Module):
    """z (and a label embedding, for a conditional model) -> a decoder backbone -> unbounded pixel logits.

    Args:
        decoder: a decoder backbone taking vectors of ``latent_dim + label_dim`` (``out_shape`` = the images').
        num_classes: > 0 for a class-conditional generator.
        label_dim: size of the label embedding concatenated to z.
    """

    def __init__(self, decoder: nn.Module, num_classes: int = 0, label_dim: int = 0):
        super().__init__()
        self.decoder = decoder
        self.embed = nn.Embedding(num_classes, label_dim) if num_classes else None

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], 1)  # (B, latent_dim + label_dim)
        return self.decoder(z)  # (B, C, H, W) logits


class Discriminator(nn.Module):
    """An image backbone and a linear score. Conditional, by ``condition``: ``channels`` appends one one-hot
    plane per class to the image (Mirza & Osindero 2014; the backbone then takes C + num_classes channels),
    ``projection`` adds ``<embed(y), features>`` to the score (Miyato & Koyama 2018).

    Args:
        backbone: an image backbone exposing ``out_features``.
        num_classes: > 0 for a class-conditional discriminator.
        condition: ``channels`` or ``projection``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 0, condition: str = "channels"):
        super().__init__()
        self.backbone, self.num_classes, self.condition = backbone, num_classes, condition
        # no bias: a Wasserstein critic is blind to it (and the backbone's biases give the other losses an offset)
        self.head = nn.Linear(backbone.out_features, 1, bias=False)
        self.embed = None
        if num_classes and condition == "projection":
            self.embed = nn.Embedding(num_classes, backbone.out_features)
            nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and self.condition == "channels":
            planes = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]  # (B, K, 1, 1)
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], 1)  # (B, C + K, H, W)
        h = self.backbone(x)  # (B, F)
        score = self.head(h).squeeze(1)  # (B,) a logit for "ns", a raw score otherwise
        if self.embed is not None:
            score = score + (self.embed(labels) * h).sum(1)
        return score


def d_losses(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss (before a gradient penalty) from its scores on real and fake images (B,)."""
    if kind == "ns":  # BCE(D(x), 1) + BCE(D(G(z)), 0), with D = sigmoid(score)
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()  # wgan-gp: the critic's estimate of -W(p_data, p_g)


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss from D's scores on its images: non-saturating ``-log D(G(z))`` for ``ns``."""
    if kind == "ns":  # BCE(D(G(z)), 1) = -log sigmoid(score)
        return F.softplus(-fake).mean()
    return -fake.mean()  # hinge and wgan-gp


def gradient_penalty(critic: Callable[..., torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     labels: torch.Tensor | None, mix: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """WGAN-GP's ``E[(||grad_x D(x)||_2 - 1)^2]`` at ``x = mix * real + (1 - mix) * fake``; the graph is kept,
    so the penalty trains the critic (double backprop).

    Args:
        critic: ``critic(x, labels) -> (B,)`` scores.
        mix: (B, 1, 1, 1) weights in [0, 1].
    """
    x = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x, labels).sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ``E[||grad_x D(x)||^2]`` on real images ``real`` (which must require grad)
    from D's ``scores`` of them; it damps the players' oscillation around the equilibrium."""
    (grad,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    return grad.flatten(1).square().sum(1).mean()


class GAN(GenerativeModel):
    """A generator and a discriminator, two players of the shared training loop.

    Args:
        generator: maps (z, labels) to unbounded pixel logits (B, C, H, W).
        discriminator: maps (images in [-1, 1], labels) to scores (B,).
        shape: (C, H, W) of the images.
        max_value: the largest pixel value.
        latent_dim: size of z.
        num_classes: > 0 for a class-conditional model.
        loss: ``ns`` (non-saturating), ``hinge`` or ``wgan-gp``.
        gp_weight: weight of WGAN-GP's gradient penalty.
        n_critic: discriminator steps per generator step.
        dequantize: add uniform noise within each pixel level to the real images D sees.
        ema: decay of an exponential moving average of G's weights that ``sample`` and ``decode`` use
            (0: the trained G itself).
        mode_seeking: weight of MSGAN's term (Mao et al. 2019) that keeps G from ignoring z.
        r1: weight gamma of the R1 penalty ``gamma / 2 E||grad D(x)||^2`` on real images (0: none).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, *, shape: tuple[int, int, int], max_value: int,
                 latent_dim: int, num_classes: int = 0, loss: str = "ns", gp_weight: float = 10.0, n_critic: int = 1,
                 dequantize: bool = True, ema: float = 0.0, mode_seeking: float = 0.0, r1: float = 0.0):  # fmt: skip
        super().__init__(shape, max_value, num_classes)
        self.generator, self.discriminator = generator, discriminator
        self.ema, self.mode_seeking, self.r1 = ema, mode_seeking, r1
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if ema else None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.latent_dim, self.kind, self.gp_weight, self.n_critic = latent_dim, loss, gp_weight, n_critic
        self.dequantize = dequantize
        self.pad = 0.5 / max_value if dequantize else 0.0  # half a level either side of [0, 1]

    # --- the players
    @property
    def players(self) -> tuple[str, ...]:
        return ("d", "g")

    def players_at(self, iteration: int) -> tuple[str, ...]:
        """D at every iteration (1-based), then G at every ``n_critic``-th."""
        return ("d", "g") if iteration % self.n_critic == 0 else ("d",)

    def player_parameters(self, player: str) -> Iterator[nn.Parameter]:
        return {"d": self.discriminator, "g": self.generator}[player].parameters()

    # --- pixels
    def real_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> D's input in about [-1, 1], dequantised when ``dequantize``."""
        x = images.float()
        if self.dequantize:
            x = x + torch.rand_like(x) - 0.5
        return 2 * x / self.max_value - 1

    def fake_unit(self, z: torch.Tensor, labels: torch.Tensor | None = None, *, average: bool = False) -> torch.Tensor:
        """G(z) squashed onto ``[-pad, 1 + pad]`` (the range of dequantised reals / max_value); ``average``:
        the moving average of G (when kept)."""
        gen = self.generator_ema if average and self.generator_ema is not None else self.generator
        return torch.sigmoid(gen(z, labels)) * (1 + 2 * self.pad) - self.pad

    @torch.no_grad()
    def update_ema(self) -> None:
        """One step of the moving average of G's weights (batch-norm statistics are copied). The decay warms
        up as ``min(ema, (1 + t) / (10 + t))`` so the average does not hold on to the random start."""
        if self.generator_ema is not None:
            ema_step(self.generator_ema, self.generator, self.ema_updates, self.ema)

    # --- training
    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], player: str = "d") -> dict[str, torch.Tensor]:
        """One player's loss on a batch of real images (a conditional G is given the batch's labels).

        The D step returns every figure logged: ``d_loss`` (without penalties), ``g_loss`` (the generator's
        loss on the same fakes, before D's update), ``d_real`` and ``d_fake`` (mean D(x) and D(G(z)):
        probabilities for ``ns``, raw scores otherwise) and, in training, the penalties ``gp`` (WGAN-GP) and
        ``r1``; the G step returns only the ``loss`` it backpropagates. So each figure is averaged once per
        iteration, whatever ``n_critic`` is.
        """
        if player not in self.players:
            raise ValueError(f"GAN players are 'd' and 'g'; got {player!r}")
        images, labels = batch
        labels = labels if self.num_classes else None
        z = torch.randn(len(images), self.latent_dim, device=images.device)
        if player == "g":
            if self.training and torch.is_grad_enabled():  # G's weights after its previous step join the average
                self.update_ema()
            fake = 2 * self.fake_unit(z, labels) - 1  # (B, C, H, W) in about [-1, 1]
            loss = g_loss(self.kind, self.discriminator(fake, labels))
            if self.mode_seeking:  # MSGAN: two codes, the same labels; penalise images that differ less than z
                z2 = torch.randn_like(z)
                fake2 = 2 * self.fake_unit(z2, labels) - 1
                ratio = (fake - fake2).abs().flatten(1).mean(1) / (z - z2).abs().mean(1)
                loss = loss + self.mode_seeking / (ratio.mean() + 1e-5)
            return {"loss": loss}
        with torch.no_grad():  # the D step does not backpropagate into G
            fake = 2 * self.fake_unit(z, labels) - 1
        training = torch.is_grad_enabled()  # penalties are for training; validation logs the losses alone
        real = self.real_input(images).requires_grad_(training and self.r1 > 0)
        scores = self.discriminator(torch.cat([real, fake]), None if labels is None else labels.repeat(2))
        s_real, s_fake = scores[: len(images)], scores[len(images) :]
        d_loss = d_losses(self.kind, s_real, s_fake)
        loss, out = d_loss, {}
        if training and self.kind == "wgan-gp":
            mix = torch.rand(len(images), 1, 1, 1, device=images.device)
            out["gp"] = gradient_penalty(self.discriminator, real, fake, labels, mix)
            loss = loss + self.gp_weight * out["gp"]
        if training and self.r1:
            out["r1"] = r1_penalty(s_real, real)
            loss = loss + self.r1 / 2 * out["r1"]
        prob = torch.sigmoid if self.kind == "ns" else (lambda s: s)
        return {"loss": loss, "d_loss": d_loss.detach(), "g_loss": g_loss(self.kind, s_fake).detach(),
                "d_real": prob(s_real.detach()).mean(), "d_fake": prob(s_fake.detach()).mean(),
                **{k: v.detach() for k, v in out.items()}}  # fmt: skip

    # --- generation
    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (B, C, H, W) in 0..max_value from latent codes z (B, latent_dim), by the averaged G."""
        return self.from_unit(self.fake_unit(z, self.labels_for(labels, len(z)), average=True))

    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0,
               labels: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """``n`` uint8 images; ``temperature`` scales z (below 1: the truncation trick, 0: G(0) only).
        A conditional model draws classes uniformly unless ``labels`` (n,) are given; an unconditional
        one ignores them."""
        z = noise((n, self.latent_dim), generator, self.device) * temperature
        return self.decode(z, self.labels_for(labels, n, generator))


# ----------------------------------------------------------------------------- config


@dataclass(kw_only=True)
class GANConfig(GenConfig):
    """A GAN: a generator and a discriminator backbone, trained against each other with Adam."""

    generator: BackboneSpec = field(default_factory=lambda: BackboneSpec(
        name="conv-decoder", options={"widths": (128, 64), "activation": "relu", "norm": "batch"}))  # fmt: skip
    """Decoder backbone of G (DCGAN: transpose convolutions with batch norm and ReLU)."""
    discriminator: BackboneSpec = field(default_factory=lambda: BackboneSpec(
        name="convnet", options={"widths": (64, 128), "activation": "leaky_relu", "norm": "none",
                                 "downsample": "stride"}))  # fmt: skip
    """Image backbone of D (DCGAN: strided convolutions, leaky ReLU; no batch norm, which WGAN-GP forbids)."""
    latent_dim: int = param(32, ge=1)
    """Size of z ~ N(0, I)."""
    loss: Loss = "ns"
    """ns: BCE for D, the non-saturating -log D(G(z)) for G; hinge; wgan-gp: Wasserstein with a gradient penalty."""
    gp_weight: float = param(10.0, ge=0)
    """Weight of WGAN-GP's gradient penalty (lambda = 10 in the paper)."""
    r1: float = param(0.0, ge=0)
    """Weight gamma of the R1 penalty gamma / 2 * E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018; 0: off)."""
    n_critic: int = param(1, ge=1)
    """Discriminator steps per generator step (1 for ns / hinge, 5 for WGAN-GP)."""
    lr: float = param(1e-3, gt=0)
    """Not used by a GAN: its players have lr_d and lr_g (setting --lr is refused)."""
    lr_d: float = param(2e-4, gt=0)
    """Adam learning rate of the discriminator."""
    lr_g: float = param(2e-4, gt=0)
    """Adam learning rate of the generator."""
    beta1: float = param(0.5, ge=0, lt=1)
    """Adam beta1 of both players (0.5, after DCGAN; beta2 is 0.999)."""
    ema: float = param(0.999, ge=0, lt=1)
    """Samples come from a moving average of G's weights, decay min(ema, (1 + t) / (10 + t)) at G step t (0: off)."""
    conditional: bool = False
    """Class-conditional: a label embedding concatenated to z in G; D conditioned as d_condition says."""
    label_dim: int = param(16, ge=1)
    """Size of G's label embedding (conditional models)."""
    d_condition: Literal["channels", "projection"] = "channels"
    """How a conditional D sees the label: one-hot planes appended to the image, or a projection term."""
    mode_seeking: float = param(0.0, ge=0)
    """Weight of MSGAN's mode-seeking term in G's loss: 1 / (|G(z1) - G(z2)| / |z1 - z2|) (0: off)."""
    dequantize: bool = True
    """Add uniform noise within each pixel level to the real images D sees (fakes are continuous)."""

    def validate(self) -> None:
        super().validate()
        if self.lr != 1e-3:
            raise ConfigError(f"GANConfig.lr = {self.lr} is not used by a GAN; set --lr-d and --lr-g instead")
        if self.generator.name not in backbones_of("decoder"):
            raise ConfigError(f"GANConfig.generator = {self.generator.name!r} is not a decoder backbone; "
                              f"use one of {', '.join(backbones_of('decoder'))}")  # fmt: skip
        if self.discriminator.name not in backbones_of("image"):
            raise ConfigError(f"GANConfig.discriminator = {self.discriminator.name!r} is not an image backbone; "
                              f"use one of {', '.join(backbones_of('image'))}")  # fmt: skip


def backbones_of(kind: str) -> list[str]:
    """Registered backbone names of one kind (``image``, ``decoder``...)."""
    from fovea import backbones

    return [n for n in backbones.names() if backbones.entry(n).kind == kind]


def build(cfg: GANConfig, data: vdata.ImageData) -> GAN:
    """The GAN for ``data``'s image shape, pixel range and classes."""
    k = len(data.classes) if cfg.conditional else 0
    z_in = cfg.latent_dim + (cfg.label_dim if k else 0)
    gen = Generator(cfg.generator.build((z_in,), out_shape=data.shape), k, cfg.label_dim)
    c, h, w = data.shape
    d_in = (c + k, h, w) if k and cfg.d_condition == "channels" else data.shape
    disc = Discriminator(cfg.discriminator.build(d_in), k, cfg.d_condition)
    for m in [*gen.modules(), *disc.modules()]:  # DCGAN's initialisation: N(0, 0.02) weights
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return GAN(gen, disc, shape=data.shape, max_value=data.max_value, latent_dim=cfg.latent_dim, num_classes=k,
               loss=cfg.loss, gp_weight=cfg.gp_weight, n_critic=cfg.n_critic, dequantize=cfg.dequantize,
               ema=cfg.ema, mode_seeking=cfg.mode_seeking, r1=cfg.r1)  # fmt: skip


register_model(GANConfig, build)
# Digits: 100 epochs of 16 iterations at 10x DCGAN's learning rate (tiny images, few steps); samples from G's
# moving average. gan-digits adds R1, without which the rarest class drifts below 5% of the samples on some seeds;
# cgan-digits adds the mode-seeking term, without which G ignores z and draws one image per class.
DIGITS = {"epochs": 100, "lr_d": 2e-3, "lr_g": 2e-3}
register_recipe("gan-digits", GANConfig(**DIGITS, r1=1.0), "DCGAN (non-saturating loss, R1) on the embedded 8x8 digits")
register_recipe("gan-digits-hinge", GANConfig(**DIGITS, loss="hinge"), "DCGAN with the hinge loss on 8x8 digits")
register_recipe(
    "gan-digits-wgan-gp",
    GANConfig(**{**DIGITS, "lr_d": 1e-3, "lr_g": 1e-3}, loss="wgan-gp", n_critic=5, beta1=0.0),
    "WGAN-GP (5 critic steps per generator step) on 8x8 digits",
)
register_recipe(
    "cgan-digits",
    GANConfig(**DIGITS, conditional=True, mode_seeking=1.0),
    "class-conditional DCGAN (label planes into D, mode-seeking term) on 8x8 digits: fovea sample --label 3",
)
