"""Denoising diffusion: DDPM (Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020) with
epsilon prediction, the linear and cosine schedules (Nichol & Dhariwal, "Improved DDPM", ICML 2021), DDIM sampling
with any number of steps and any eta (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021), a moving
average of the weights, and classifier-free guidance for a class-conditional model (Ho & Salimans 2022).

Training. Pixels go to ``x_0 = 2 v / max_value - 1`` in [-1, 1]; a timestep t ~ U{0..T-1} and noise eps ~ N(0, I)
make ``x_t = sqrt(alphas_bar[t]) x_0 + sqrt(1 - alphas_bar[t]) eps``, and the denoiser (a ``denoiser`` backbone,
the ``unet``) is trained to predict eps: ``loss = mean (eps - eps_theta(x_t, t))^2`` (Ho's L_simple). A conditional
model sees no label (the null label) with probability ``p_uncond``, so the one network also learns p(x).

Sampling. DDIM's update from timestep t to the next one s of the chosen subsequence,
``x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z``,
``sigma = eta sqrt((1 - ab_s) / (1 - ab_t) (1 - ab_t / ab_s))``: eta = 0 is deterministic (the same x_T, the same
image: a latent space to interpolate in), eta = 1 with every step is DDPM's ancestral sampler, which ``ddpm_sample``
also implements from the posterior q(x_{t-1} | x_t, x0_hat). x0_hat is clipped to [-1, 1] (as Ho et al. do) and
eps_hat recomputed from it. With guidance w: ``eps_hat = eps_u + w (eps_c - eps_u)`` (w = 1: the conditional model,
w = 0: the unconditional one, w > 1: guided).

Likelihood. ``nll`` is the variational bound (Ho et al. eq. 5) in nats per image for the discrete pixels:
KL(q(x_T | x_0) || N(0, I)) + sum over t of KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) - log p(x_0 | x_1), the
last a Gaussian's mass over the pixel's bin; every term is computed (or, with ``bound_terms``, an unbiased sample of
them), each at one draw of x_t: an upper bound on -log p(x), so ``nll_kind = "bound"``.

Moving average. ``sample``, ``nll``, ``decode`` and the loss in eval mode (validation) use the average of the
weights, ``ema <- ema + (1 - d)(theta - ema)``, ``d = min(ema, (1 + n) / (10 + n))`` at update n, taken at each
training step from the weights the previous step left (the GAN's convention: the loop gives models no hook after
the optimizer step, so the final step's weights are not averaged in).

Noise. Training draws t, eps and the label dropout from torch's global RNG (seeded by the run, restored at resume);
validation from a fixed seed, so its loss compares epochs; sampling from the generator it is given.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fovea.config import BackboneSpec, param, register_recipe
from fovea.errors import ConfigError
from fovea.generative.base import GenConfig, GenerativeModel, ema_step, noise, register_model
from fovea.generative.diffusion_schedule import Schedule, ScheduleKind, ddim_timesteps, log_mass_gaussian_bins
from fovea.vision.data import ImageData

VALIDATION_SEED = 1234


class Diffusion(GenerativeModel):
    """A denoising diffusion model around a denoiser network ``net(x, t, labels) -> eps``.

    Args:
        net: a ``denoiser`` backbone (for a conditional model, built with ``num_classes``).
        shape: (C, H, W) of the images; ``max_value``: the largest pixel value; ``num_classes``: > 0 if conditional.
        timesteps: T; ``schedule``: ``linear`` or ``cosine``.
        ema: decay of the moving average of the weights used to sample and score (0: the trained weights).
        p_uncond: probability of training a conditional model's example without its label.
        guidance: classifier-free guidance scale w of ``sample`` (1: plain conditional).
        sample_steps: timesteps ``sample`` takes (DDIM); ``eta``: its noise (0: deterministic, 1: DDPM-like).
        bound_terms: timesteps of the bound's sum each ``nll`` evaluates per image (0: all T - 1).
    """

    nll_kind = "bound"  # an upper bound on -log p(x), not an estimate of it

    def __init__(self, net: nn.Module, *, shape: tuple[int, int, int], max_value: int, num_classes: int = 0,
                 timesteps: int = 1000, schedule: ScheduleKind = "linear", ema: float = 0.999, p_uncond: float = 0.1,
                 guidance: float = 1.0, sample_steps: int = 50, eta: float = 0.0, bound_terms: int = 0):  # fmt: skip
        super().__init__(shape, max_value, num_classes)
        self.net, self.ema, self.p_uncond, self.guidance = net, ema, p_uncond, guidance
        self.ema_net = copy.deepcopy(net).requires_grad_(False) if ema else None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.schedule = Schedule(schedule, timesteps)
        self.timesteps, self.sample_steps, self.eta, self.bound_terms = timesteps, sample_steps, eta, bound_terms
        self.latent_dim = math.prod(shape)  # x_T: decode runs DDIM (eta = 0) from it

    def player_parameters(self, player: str) -> Iterator[nn.Parameter]:
        return self.net.parameters()

    @property
    def sampler_net(self) -> nn.Module:
        """The weights that sample and score: the moving average when kept."""
        return self.ema_net if self.ema_net is not None else self.net

    @torch.no_grad()
    @torch.compiler.disable
    def update_ema(self) -> None:
        """One step of the moving average of the weights (buffers are copied); the decay warms up as
        ``min(ema, (1 + n) / (10 + n))`` so the average forgets the random start."""
        if self.ema_net is not None:
            ema_step(self.ema_net, self.net, self.ema_updates, self.ema)

    # --- pixels
    def to_signed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> x_0 in [-1, 1]."""
        return 2 * self.to_unit(images) - 1

    # --- training
    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        """L_simple: the mean squared error of the predicted noise, at one random timestep per image. In eval mode
        (validation) the averaged weights are scored at timesteps and noise from a fixed seed."""
        images, labels = batch
        x0 = self.to_signed(images)
        b = len(x0)
        if self.training:
            if torch.is_grad_enabled():
                self.update_ema()  # the weights the previous optimizer step left join the average
            net = self.net
            t = torch.randint(self.timesteps, (b,), device=x0.device)
            eps = torch.randn_like(x0)
            drop = torch.rand(b, device=x0.device) < self.p_uncond
        else:
            net, gen = self.sampler_net, torch.Generator().manual_seed(VALIDATION_SEED)
            t = torch.randint(self.timesteps, (b,), generator=gen).to(x0.device)
            eps = torch.randn(x0.shape, generator=gen).to(x0.device)
            drop = (torch.rand(b, generator=gen) < self.p_uncond).to(x0.device)
        cond = None
        if self.num_classes:  # the null label num_classes stands for "no label"
            cond = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        pred = net(self.schedule.q_sample(x0, t, eps), t, cond)
        mse = (pred.float() - eps).square().mean()
        return {"loss": mse, "mse": mse.detach()}

    # --- the reverse process
    def predict_eps(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance: float,
                    net: nn.Module | None = None) -> torch.Tensor:  # fmt: skip
        """eps_hat at x_t: the net's, or with classifier-free guidance ``eps_u + w (eps_c - eps_u)`` for a
        conditional model given labels (w = 1: the conditional prediction alone, one forward pass)."""
        net = net or self.sampler_net
        if labels is None or not self.num_classes:
            return net(x, t, None).float()
        if guidance == 1:
            return net(x, t, labels).float()
        null = torch.full_like(labels, self.num_classes)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).float()
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    def x0_and_eps(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                   guidance: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The clipped x0_hat and the eps_hat consistent with it, at x_t."""
        eps = self.predict_eps(x, t, labels, guidance)
        x0 = self.schedule.x0_from_eps(x, t, eps).clamp(-1, 1)
        ab = self.schedule.at("alphas_bar", t)
        return x0, (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    @torch.no_grad()
    def ddim_sample(self, x: torch.Tensor, *, steps: int, eta: float, labels: torch.Tensor | None = None,
                    guidance: float = 1.0, generator: torch.Generator | None = None,
                    temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
        """x_0 (B, C, H, W) in [-1, 1] from x_T = ``x`` by DDIM over ``steps`` timesteps with noise ``eta``
        (``temperature`` scales the noise added on the way)."""
        if not 1 <= steps <= self.timesteps:
            raise ConfigError(f"sampling steps {steps} must be between 1 and the model's {self.timesteps} timesteps")
        ts = ddim_timesteps(self.timesteps, steps)
        ab_all = self.schedule.alphas_bar
        for i, t_now in enumerate(ts):
            t = torch.full((len(x),), t_now, device=x.device, dtype=torch.long)
            x0, eps = self.x0_and_eps(x, t, labels, guidance)
            ab, ab_next = ab_all[t_now], ab_all[ts[i + 1]] if i + 1 < len(ts) else ab_all.new_ones(())
            sigma = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).clamp(min=0).sqrt()
            x = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and i + 1 < len(ts):
                x = x + sigma * temperature * noise(x.shape, generator, x.device)
        return x

    @torch.no_grad()
    def ddpm_sample(self, x: torch.Tensor, *, labels: torch.Tensor | None = None, guidance: float = 1.0,
                    generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
        """x_0 from x_T = ``x`` by DDPM's ancestral sampler: T steps, each a draw from the posterior
        q(x_{t-1} | x_t, x0_hat) (variance beta_tilde, Ho et al.'s sigma_t^2 = beta_tilde_t)."""
        for t_now in reversed(range(self.timesteps)):
            t = torch.full((len(x),), t_now, device=x.device, dtype=torch.long)
            x0, _ = self.x0_and_eps(x, t, labels, guidance)
            x = self.schedule.posterior_mean(x0, x, t)
            if t_now > 0:
                x = x + self.schedule.beta_tilde[t_now].sqrt() * temperature * noise(x.shape, generator, x.device)
        return x

    def generate(self, n: int, *, steps: int | None = None, eta: float | None = None, guidance: float | None = None,
                 sampler: Literal["ddim", "ddpm"] = "ddim", generator: torch.Generator | None = None,
                 labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
        """``n`` uint8 images by ``sampler`` (DDIM with ``steps`` and ``eta``, or DDPM with all T steps); unset
        arguments take the model's settings. A conditional model draws classes uniformly unless ``labels``
        (n,) are given."""
        labels = self.labels_for(labels, n, generator)
        x = noise((n, *self.shape), generator, self.device) * temperature
        guidance = self.guidance if guidance is None else guidance
        if sampler == "ddpm":
            x = self.ddpm_sample(x, labels=labels, guidance=guidance, generator=generator, temperature=temperature)
        else:
            eta = self.eta if eta is None else eta
            x = self.ddim_sample(x, steps=steps or self.sample_steps, eta=eta, labels=labels, guidance=guidance,
                                 generator=generator, temperature=temperature)  # fmt: skip
        return self.from_unit((x + 1) / 2)

    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0,
               labels: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """``n`` uint8 images by the model's sampler settings (DDIM, ``sample_steps``, ``eta``, ``guidance``);
        ``temperature`` scales x_T and the noise added on the way (0 with eta = 0: the image of x_T = 0)."""
        return self.generate(n, generator=generator, labels=labels, temperature=temperature)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images from x_T = z (B, C*H*W) by deterministic DDIM (eta = 0). Each z is first put on the sphere of
        radius sqrt(C*H*W), where Gaussian x_T concentrate: a straight line between two codes (``fovea sample
        --interpolate``) then follows the sphere's great circle between them, as ``slerp`` does."""
        x = z.view(len(z), *self.shape).to(self.device)
        x = x * (math.sqrt(self.latent_dim) / x.flatten(1).norm(dim=1).clamp(min=1e-8)).view(-1, 1, 1, 1)
        labels = self.labels_for(labels, len(z)) if labels is not None else None
        x = self.ddim_sample(x, steps=self.sample_steps, eta=0.0, labels=labels, guidance=self.guidance)
        return self.from_unit((x + 1) / 2)

    # --- likelihood
    @torch.no_grad()
    def nll(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The variational bound on -log p(images) (B,) in nats (a conditional model: on -log p(images | labels),
        unguided); x_t drawn from torch's global RNG."""
        x0 = self.to_signed(images.to(self.device))
        labels = self.labels_for(labels, len(x0)) if labels is not None else None
        sched, b, dims = self.schedule, len(x0), (1, 2, 3)
        ab_last = sched.alphas_bar[-1]  # L_T: KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1)), per pixel
        prior = 0.5 * (ab_last * x0.square() + (1 - ab_last) - 1 - torch.log(1 - ab_last)).sum(dims).double()
        # L_{t-1} for t = 1..T-1: both Gaussians have variance beta_tilde, so the KL is c0^2 |x0 - x0_hat|^2 / 2bt.
        # With bound_terms k, every s-th timestep from a random offset per image, weighted s (systematic sampling:
        # each term is in with probability 1 / s, an unbiased estimate); k = 0: s = 1, every term.
        stride = math.ceil((self.timesteps - 1) / self.bound_terms) if self.bound_terms else 1
        offset = torch.randint(stride, (b,), device=x0.device)
        total = torch.zeros(b, dtype=torch.float64, device=x0.device)
        for r in range(math.ceil((self.timesteps - 1) / stride)):
            t = 1 + offset + r * stride
            inside = (t < self.timesteps).double()
            t = t.clamp(max=self.timesteps - 1)
            x0_hat, _ = self.x0_and_eps(sched.q_sample(x0, t, torch.randn_like(x0)), t, labels, 1.0)
            kl = sched.at("c0", t).square() * (x0 - x0_hat).square() / (2 * sched.at("beta_tilde", t))
            total += kl.sum(dims).double() * inside * stride
        # L_0: -log of the mass of x_0's bin under N(x0_hat(x_1), beta_0) (x0_hat is the posterior mean at t = 0)
        t0 = torch.zeros(b, device=x0.device, dtype=torch.long)
        x0_hat, _ = self.x0_and_eps(sched.q_sample(x0, t0, torch.randn_like(x0)), t0, labels, 1.0)
        decoder = -log_mass_gaussian_bins(x0, x0_hat, sched.betas[0].sqrt().expand_as(x0), 1.0 / self.max_value)
        return (prior + total + decoder.sum(dims)).float()


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between codes a and b (B, D) at fractions t (S,): (B, S, D), for DDIM latents."""
    cos = (a * b).sum(1, keepdim=True) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True))
    omega = cos.clamp(-1, 1).acos()[:, None]  # (B, 1, 1)
    t = t[None, :, None]
    return (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / torch.sin(omega)


# ----------------------------------------------------------------------------- config


def _unet(**options) -> BackboneSpec:
    return BackboneSpec(name="unet", options=options)


@dataclass(kw_only=True)
class DiffusionConfig(GenConfig):
    """A denoising diffusion model: a U-Net trained to predict the noise, sampled by DDIM or DDPM."""

    unet: BackboneSpec = field(default_factory=lambda: _unet(widths=(32, 64), blocks=2, attention_at=16))
    """The denoiser backbone (num_classes is set by the model)."""
    timesteps: int = param(1000, ge=2)
    """T, the number of noising steps (1,000 in Ho et al.)."""
    schedule: ScheduleKind = "linear"
    """Noise schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal; better for small images)."""
    ema: float = param(0.9999, ge=0, lt=1)
    """Decay of the moving average of the weights that samples and scores (0: off; 0.9999 in Ho et al.)."""
    conditional: bool = False
    """Class-conditional, with classifier-free guidance: the label's embedding joins the timestep's."""
    p_uncond: float = param(0.1, ge=0, lt=1)
    """Probability that a conditional model trains an example without its label (0.1-0.2 in Ho & Salimans)."""
    guidance: float = param(1.0, ge=0)
    """Guidance scale w of a conditional model's samples: eps_u + w (eps_c - eps_u) (1: no guidance)."""
    sample_steps: int = param(50, ge=1)
    """DDIM steps of `fovea sample` and `fovea eval` (at most timesteps; timesteps with eta 1: DDPM)."""
    eta: float = param(0.0, ge=0)
    """DDIM's noise: 0 deterministic, 1 the DDPM posterior's variance."""
    bound_terms: int = param(0, ge=0)
    """Timesteps of the variational bound's sum evaluated per image (0: all, exact in t; k: an unbiased estimate)."""

    def validate(self) -> None:
        super().validate()
        from fovea import backbones

        if backbones.entry(self.unet.name).kind != "denoiser":
            denoisers = [n for n in backbones.names() if backbones.entry(n).kind == "denoiser"]
            raise ConfigError(f"DiffusionConfig.unet = {self.unet.name!r} is not a denoiser backbone; "
                              f"use one of {', '.join(denoisers)}")  # fmt: skip
        if self.sample_steps > self.timesteps:
            raise ConfigError(f"--sample-steps {self.sample_steps} exceeds --timesteps {self.timesteps}; "
                              f"DDIM takes a subsequence of the timesteps")  # fmt: skip
        if self.conditional and self.guidance != 1 and self.p_uncond == 0:
            raise ConfigError(f"--guidance {self.guidance} needs the unconditional model, which --p-uncond 0 never "
                              "trains; set --p-uncond 0.1 (or --guidance 1)")  # fmt: skip


def build(cfg: DiffusionConfig, data: ImageData) -> Diffusion:
    """The diffusion model for ``data``'s image shape, pixel range and classes."""
    k = len(data.classes) if cfg.conditional else 0
    net = cfg.unet.build(data.shape, num_classes=k)
    return Diffusion(net, shape=data.shape, max_value=data.max_value, num_classes=k, timesteps=cfg.timesteps,
                     schedule=cfg.schedule, ema=cfg.ema, p_uncond=cfg.p_uncond, guidance=cfg.guidance,
                     sample_steps=cfg.sample_steps, eta=cfg.eta, bound_terms=cfg.bound_terms)  # fmt: skip


register_model(DiffusionConfig, build)
DIGITS = dict(unet=_unet(widths=(16, 32), blocks=1, attention_at=0), schedule="cosine", epochs=200, lr=2e-3,
              ema=0.995, eval_every=10, bound_terms=100)  # fmt: skip
register_recipe("ddpm-digits", DiffusionConfig(**DIGITS),
                "DDPM (cosine schedule, small U-Net) on the 8x8 digits, sampled by 50-step DDIM")  # fmt: skip
register_recipe("cddpm-digits", DiffusionConfig(**DIGITS, conditional=True, guidance=2.0),
                "class-conditional DDPM, guidance w = 2, on 8x8 digits: fovea sample --label 3")  # fmt: skip
register_recipe(
    "ddpm-atari",
    DiffusionConfig(dataset="atari:pong", unet=_unet(widths=(32, 64, 128), blocks=1, attention_at=21), epochs=50,
                    lr=2e-4, ema=0.999, bound_terms=50),
    "DDPM on 84x84 Pong frames from a random policy (collected and cached in the run folder); for a GPU",
)  # fmt: skip
register_recipe(
    "ddpm-cifar10",
    DiffusionConfig(dataset="cifar10", unet=_unet(widths=(128, 256, 256, 256), blocks=2, attention_at=16,
                                                  dropout=0.1), epochs=300, batch_size=128, lr=2e-4, grad_clip=1.0,
                    bound_terms=50),
    "DDPM after Ho et al.'s CIFAR-10 model (widths 128-256, attention at 16x16 and below: 38.4M parameters to their "
    "35.7M; linear schedule, dropout 0.1), for a GPU",
)  # fmt: skip
