"""Diffusion: the forward process, the loss and the samplers against their definitions, guidance, the moving
average, the bound's decoder term, the command line, and a learning check on the digits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from scipy.stats import chi2_contingency
from torch import nn

from fovea import backbones
from fovea.cli import main
from fovea.generative.diffusion import Diffusion, slerp
from fovea.generative.diffusion_schedule import Schedule, betas_for, ddim_timesteps, log_mass_gaussian_bins

FAST = ["--timesteps", "20", "--sample-steps", "4", "--bound-terms", "4", "--unet.widths", "8,16"]


class RandomDenoiser(nn.Module):
    """A fixed random function of (x, t): a denoiser to compare samplers with, whatever it learned."""

    def __init__(self, dims: int, timesteps: int):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Linear(dims, dims)
        self.time = nn.Embedding(timesteps, dims)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.w(x.flatten(1)) + self.time(t)).view_as(x)


def tiny_model(timesteps: int = 10, shape=(1, 1, 2), max_value: int = 3, **kw) -> Diffusion:
    net = RandomDenoiser(math.prod(shape), timesteps)
    return Diffusion(net, shape=shape, max_value=max_value, timesteps=timesteps, schedule="cosine", ema=0.0, **kw)


def joint_counts(images: torch.Tensor, max_value: int) -> torch.Tensor:
    """Counts of each joint value of a two-pixel image."""
    codes = images.flatten(1).long() @ torch.tensor([max_value + 1, 1])
    return torch.bincount(codes, minlength=(max_value + 1) ** 2)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_closed_form_forward_process_matches_noising_step_by_step(kind):
    torch.manual_seed(0)
    timesteps, n = 100, 20000
    sched, betas = Schedule(kind, timesteps), betas_for(kind, timesteps)
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64)
    x = x0.expand(n, 4).clone()
    for t in range(timesteps):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn_like(x)  # q(x_t | x_{t-1})
        if t in (0, 9, 49, 99):
            ab = sched.alphas_bar[t].double()
            mean, var = ab.sqrt() * x0, 1 - ab
            assert torch.allclose(x.mean(0), mean, atol=5 * math.sqrt(var / n)), (t, x.mean(0), mean)
            assert torch.allclose(x.var(0), var.expand(4), rtol=5 * math.sqrt(2 / n)), (t, x.var(0), var)
            tt = torch.full((n,), t)
            eps = torch.randn(n, 4, dtype=torch.float64)
            closed = sched.q_sample(x0.expand(n, 4).float().view(n, 4, 1, 1), tt, eps.float().view(n, 4, 1, 1))
            assert torch.allclose(closed.view(n, 4).double(), mean + var.sqrt() * eps, atol=1e-5)


def test_epsilon_loss_matches_a_hand_computation():
    model = tiny_model(timesteps=7, shape=(1, 2, 2), max_value=4)
    images = torch.tensor([[[[0, 1], [2, 4]]], [[[4, 4], [3, 0]]], [[[1, 2], [3, 4]]]], dtype=torch.uint8)
    torch.manual_seed(5)
    out = model.loss((images, torch.zeros(3, dtype=torch.long)))
    torch.manual_seed(5)  # the draws, in the loss's order: t, eps (the label dropout draw is unused here)
    t, eps = torch.randint(7, (3,)), torch.randn(3, 1, 2, 2)
    s = 0.008  # Nichol & Dhariwal's cosine: alphas_bar(t) = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) pi / 2)
    f = [math.cos((k / 7 + s) / (1 + s) * math.pi / 2) ** 2 for k in range(8)]
    total = 0.0
    for i in range(3):
        ab = math.prod(1 - min(1 - f[k + 1] / f[k], 0.999) for k in range(int(t[i]) + 1))
        x0 = images[i].double() / 4 * 2 - 1
        xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps[i].double()
        pred = model.net(xt.float()[None], t[i : i + 1])[0].double()
        total += (pred - eps[i].double()).square().sum().item()
    assert out["loss"].item() == pytest.approx(total / 12, rel=1e-5)


def test_ddim_with_eta_one_and_every_step_is_ddpm_in_distribution_and_eta_zero_is_deterministic():
    model = tiny_model().eval()
    n = 4000
    ddpm = model.generate(n, sampler="ddpm", generator=torch.Generator().manual_seed(1))
    ddim = model.generate(n, steps=10, eta=1.0, generator=torch.Generator().manual_seed(2))
    table = torch.stack([joint_counts(ddpm, 3), joint_counts(ddim, 3)])
    table = table[:, table.sum(0) > 0]
    assert table.shape[1] >= 4  # a spread of outcomes, not one
    assert chi2_contingency(table.numpy()).pvalue > 1e-3, table
    # the test has power: the deterministic sampler is a different distribution
    det = model.generate(n, steps=10, eta=0.0, generator=torch.Generator().manual_seed(3))
    table = torch.stack([joint_counts(ddpm, 3), joint_counts(det, 3)])
    assert chi2_contingency(table[:, table.sum(0) > 0].numpy()).pvalue < 1e-6
    again = model.generate(n, steps=10, eta=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(det, again)
    assert not torch.equal(det, model.generate(n, steps=10, eta=0.0, generator=torch.Generator().manual_seed(4)))


def test_ddim_timesteps_run_from_the_last_to_the_first():
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    ts = ddim_timesteps(1000, 50)
    assert ts[0] == 999 and ts[-1] == 0 and len(set(ts)) == 50 and ts == sorted(ts, reverse=True)
    assert ddim_timesteps(1000, 1) == [999]


def conditional_unet() -> nn.Module:
    torch.manual_seed(0)
    return backbones.build("unet", (1, 8, 8), widths=(8, 16), blocks=1, attention_at=4, num_classes=3)


def test_guidance_zero_is_the_unconditional_prediction_and_one_the_conditional():
    net = conditional_unet()
    model = Diffusion(net, shape=(1, 8, 8), max_value=16, num_classes=3, timesteps=10, ema=0.0).eval()
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, 9]), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        uncond, cond = net(x, t, None), net(x, t, labels)
        assert not torch.allclose(uncond, cond, atol=1e-3)  # the label matters
        torch.testing.assert_close(model.predict_eps(x, t, labels, 0.0), uncond, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.predict_eps(x, t, labels, 1.0), cond, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.predict_eps(x, t, labels, 3.0), uncond + 3 * (cond - uncond), rtol=0,
                                   atol=1e-4)  # fmt: skip


def test_unet_depends_on_the_timestep_and_pads_odd_sizes():
    torch.manual_seed(0)
    net = backbones.build("unet", (2, 7, 9), widths=(8, 16, 16), blocks=1, attention_at=4).eval()
    x = torch.randn(2, 2, 7, 9)
    with torch.no_grad():
        y = net(x, torch.tensor([0, 0]))
        assert y.shape == x.shape and net.out_shape == (2, 7, 9)
        assert not torch.allclose(y, net(x, torch.tensor([500, 500])), atol=1e-4)
    with pytest.raises(backbones.BackboneError, match="blocks"):
        backbones.build("unet", (1, 8, 8), blocks=0)


def test_ema_update_follows_the_formula_and_is_what_samples():
    torch.manual_seed(0)
    model = Diffusion(RandomDenoiser(2, 10), shape=(1, 1, 2), max_value=3, timesteps=10, ema=0.5)
    start = {k: v.clone() for k, v in model.ema_net.state_dict().items()}
    for n in range(1, 13):  # the warm-up (1 + n) / (10 + n) is below the cap 0.5 up to n = 8
        with torch.no_grad():
            for p in model.net.parameters():
                p.add_(1.0)
        before = {k: v.clone() for k, v in model.ema_net.state_dict().items()}
        model.update_ema()
        decay = min(0.5, (1 + n) / (10 + n))
        live = model.net.state_dict()
        for k, v in model.ema_net.state_dict().items():
            torch.testing.assert_close(v, decay * before[k] + (1 - decay) * live[k], rtol=0, atol=1e-6)
    assert model.ema_updates.item() == 12 and not torch.equal(start["w.weight"], model.ema_net.w.weight)
    x, t = torch.randn(5, 1, 1, 2), torch.arange(5)
    torch.testing.assert_close(model.predict_eps(x, t, None, 1.0), model.ema_net(x, t))
    model.train()
    model.loss((torch.zeros(4, 1, 1, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)))
    assert model.ema_updates.item() == 13  # a training step averages in the weights its predecessor left


def test_decoder_term_is_a_distribution_over_the_levels_and_stable_in_the_tails():
    levels = torch.arange(17, dtype=torch.float64) * 2 / 16 - 1
    for mean, std in [(0.0, 0.5), (0.93, 0.01), (-1.4, 0.2), (0.3, 1e-3)]:
        logp = log_mass_gaussian_bins(levels, torch.full_like(levels, mean), torch.full_like(levels, std), 1 / 16)
        assert torch.isfinite(logp).all() and logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # 40 standard deviations out, the mass is the tail's, not a clamp: log P ~ -x^2 / 2
    far = log_mass_gaussian_bins(torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([0.01]), 1 / 16)
    z = 0.4375 / 0.01  # the bin's near edge, in standard deviations: P ~ phi(z) / z
    assert far.item() == pytest.approx(-0.5 * z**2 - math.log(z) - 0.5 * math.log(2 * math.pi), rel=1e-3)


def test_slerp_stays_on_the_sphere_between_its_ends():
    a, b = torch.randn(3, 64), torch.randn(3, 64)
    b = b * a.norm(dim=1, keepdim=True) / b.norm(dim=1, keepdim=True)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[:, 0], a, rtol=0, atol=1e-5)
    torch.testing.assert_close(path[:, -1], b, rtol=0, atol=1e-5)
    torch.testing.assert_close(path.norm(dim=2), a.norm(dim=1, keepdim=True).expand(3, 5), rtol=1e-5, atol=0)


@pytest.mark.slow
def test_train_sample_and_interpolate_from_the_command_line(in_tmp, capsys):
    assert main(["train", "cddpm-digits", "--name", "c", "--epochs", "1", "--eval-every", "1", *FAST,
                 "--wandb", "disabled"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["val/nll_kind"] == "bound" and out["val/nll_nats"] > 0 and out["val/mse"] > 0
    assert main(["sample", "runs/c", "-n", "8", "--label", "3", "-o", "g.png", "--wandb", "disabled"]) == 0
    assert main(["sample", "runs/c", "--interpolate", "-n", "16", "-o", "i.png", "--wandb", "disabled"]) == 0
    assert Image.open("i.png").size == (8 * 33 + 1, 2 * 33 + 1)
    capsys.readouterr()
    for argv, words in [(["train", "ddpm-digits", "--sample-steps", "2000"], "exceeds --timesteps"),
                        (["train", "cddpm-digits", "--guidance", "3", "--p-uncond", "0"], "--p-uncond"),
                        (["train", "ddpm-digits", "--unet", "resnet"], "not a denoiser")]:  # fmt: skip
        assert main(argv) == 2, argv
        assert words in capsys.readouterr().err.replace("\n", " "), argv


@pytest.mark.slow
def test_ddpm_digits_learns_within_its_band(in_tmp, capsys):
    """Twenty epochs of ddpm-digits (320 steps, 26 s of CPU time): the validation noise error falls from about 1 (an
    untrained net; 0.36 after two epochs) to under 0.21 (0.198 measured) and the variational bound from 276 nats per
    image after two epochs to under 200 (180.7 measured)."""
    assert main(["train", "ddpm-digits", "--name", "d", "--epochs", "20", "--bound-terms", "20",
                 "--wandb", "disabled"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["val/mse"] < 0.21 and out["val/nll_kind"] == "bound", out
    assert 0 < out["val/nll_nats"] < 200, out
