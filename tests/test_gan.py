"""GANs: the three losses, the gradient penalty, R1 and the mode-seeking term by hand, which player each step
moves, the critic's schedule, the moving average of G, conditioning, the pixel mapping, CLI runs and resume,
and the sample-quality band on digits."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fovea import generative  # noqa: F401  (registers the recipes)
from fovea.cli import main
from fovea.config import apply_overrides, recipes
from fovea.generative.base import build_model, make_optimizers, train_epoch
from fovea.generative.gan import GAN, GANConfig, d_losses, g_loss, gradient_penalty, r1_penalty
from fovea.vision.data import ImageData

GAN_RECIPES = sorted(n for n, r in recipes().items() if isinstance(r.config, GANConfig))
# a small, fast variant of any GAN recipe for runtime tests
TINY = ["--generator.widths", "8,4", "--discriminator.widths", "4,8", "--latent-dim", "4", "--label-dim", "2"]


def _tiny_data(n: int = 16) -> ImageData:
    images = torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    return ImageData(images, torch.arange(n) % 10, 16, tuple(str(i) for i in range(10)))


def _tiny(recipe: str = "gan-digits", *more: str) -> tuple[GANConfig, GAN, ImageData]:
    torch.manual_seed(0)
    cfg = apply_overrides(recipes()[recipe].config, [*TINY, *more])
    data = _tiny_data()
    return cfg, build_model(cfg, data), data


def _scramble(model: GAN) -> GAN:
    """Weights far from DCGAN's N(0, 0.02) start, under which an untrained G maps every z to about grey."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_gan_recipes_exist():
    assert {"gan-digits", "gan-digits-hinge", "gan-digits-wgan-gp", "cgan-digits"} <= set(GAN_RECIPES)
    assert recipes()["gan-digits"].config.loss == "ns" and recipes()["cgan-digits"].config.conditional
    wgan = recipes()["gan-digits-wgan-gp"].config
    assert wgan.loss == "wgan-gp" and wgan.n_critic == 5 and wgan.gp_weight == 10


def test_non_saturating_losses_by_hand():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])  # D's logits
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    bce = F.binary_cross_entropy(d_real, torch.ones(2)) + F.binary_cross_entropy(d_fake, torch.zeros(2))
    assert d_losses("ns", real, fake).item() == pytest.approx(bce.item(), rel=1e-6)
    by_hand = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    assert d_losses("ns", real, fake).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # G: -log D(G(z)) = BCE(D(G(z)), 1), not the saturating log(1 - D(G(z)))
    assert g_loss("ns", fake).item() == pytest.approx(-torch.log(d_fake).mean().item(), rel=1e-6)
    assert g_loss("ns", fake).item() == pytest.approx(F.binary_cross_entropy(d_fake, torch.ones(2)).item(), rel=1e-6)
    # where D rejects a fake (logit -8) the non-saturating gradient is still about -1 per sample, the
    # saturating one about -sigmoid(-8) = -3e-4: the reason for the swap (notes, 13.6)
    s = torch.tensor([-8.0], requires_grad=True)
    (ns,) = torch.autograd.grad(g_loss("ns", s), s)
    (sat,) = torch.autograd.grad(torch.log(1 - torch.sigmoid(s)).mean(), s)
    assert ns.item() == pytest.approx(-1.0, abs=1e-3) and abs(sat.item()) < 1e-3


def test_hinge_and_wasserstein_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.3])
    # D: mean(relu(1 - [2, 0.5])) + mean(relu(1 + [-2, 0.3])) = (0 + 0.5) / 2 + (0 + 1.3) / 2 = 0.9
    assert d_losses("hinge", real, fake).item() == pytest.approx(0.9)
    assert g_loss("hinge", fake).item() == pytest.approx(0.85)  # -mean(fake)
    assert d_losses("wgan-gp", real, fake).item() == pytest.approx(-0.85 - 1.25)  # mean(fake) - mean(real)
    assert g_loss("wgan-gp", fake).item() == pytest.approx(0.85)


def test_gradient_penalty_on_critics_whose_gradient_is_known():
    """A linear critic <w, x> has gradient w everywhere: penalty (||w|| - 1)^2, and its gradient with respect
    to w is 2 (||w|| - 1) w / ||w||. A quadratic critic ||x||^2 / 2 has gradient x at the mixed point."""
    w = torch.zeros(1, 1, 2, 2)
    w.view(-1)[:2] = torch.tensor([3.0, 4.0])  # ||w|| = 5
    w.requires_grad_(True)

    def linear(x, labels):
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    mix = torch.rand(3, 1, 1, 1)
    gp = gradient_penalty(linear, real, fake, None, mix)
    assert gp.item() == pytest.approx(16.0, rel=1e-6)
    gp.backward()  # the penalty trains the critic: double backprop
    assert torch.allclose(w.grad, 2 * 4 * w.detach() / 5)

    def quadratic(x, labels):
        return 0.5 * x.flatten(1).square().sum(1)

    point = mix * real + (1 - mix) * fake
    expected = ((point.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert gradient_penalty(quadratic, real, fake, None, mix).item() == pytest.approx(expected.item(), rel=1e-5)

    # R1: the squared gradient norm at real images, from the scores D gave them (grad of ||x||^2 / 2 is x)
    x = real.clone().requires_grad_(True)
    assert r1_penalty(quadratic(x, None), x).item() == pytest.approx(real.flatten(1).square().sum(1).mean().item())


def test_loss_dicts_and_what_each_player_logs():
    _, model, data = _tiny("gan-digits-wgan-gp")
    batch = (data.images[:8], data.labels[:8])
    d = model.loss(batch, "d")
    assert set(d) == {"loss", "d_loss", "g_loss", "d_real", "d_fake", "gp"}
    assert d["d_loss"].item() == pytest.approx(d["d_fake"].item() - d["d_real"].item(), rel=1e-4, abs=1e-6)
    assert d["loss"].item() == pytest.approx(d["d_loss"].item() + 10 * d["gp"].item(), rel=1e-4)
    with torch.no_grad():  # validation: the losses alone, no penalty
        assert set(model.loss(batch, "d")) == {"loss", "d_loss", "g_loss", "d_real", "d_fake"}
    _, r1, _ = _tiny("gan-digits", "--r1", "4")
    d = r1.loss(batch, "d")
    assert set(d) == {"loss", "d_loss", "g_loss", "d_real", "d_fake", "r1"} and d["r1"].item() > 0
    assert d["loss"].item() == pytest.approx(d["d_loss"].item() + 2 * d["r1"].item(), rel=1e-5)
    assert set(model.loss(batch, "g")) == {"loss"}
    _, ns, _ = _tiny("gan-digits")
    out = ns.loss(batch, "d")
    assert 0 < out["d_real"].item() < 1 and 0 < out["d_fake"].item() < 1  # probabilities for the ns loss
    with pytest.raises(ValueError, match="players"):
        ns.loss(batch, "model")


@pytest.mark.parametrize("player", ["d", "g"])
def test_each_step_moves_only_its_own_player(player):
    cfg, model, data = _tiny()
    optimizers = make_optimizers(cfg, model)
    other = {"d": "g", "g": "d"}[player]
    before = {p: [t.detach().clone() for t in model.player_parameters(p)] for p in model.players}
    out = model.loss((data.images[:8], data.labels[:8]), player)
    optimizers[player].zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizers[player].step()
    after = {p: list(model.player_parameters(p)) for p in model.players}
    assert all(torch.equal(a, b) for a, b in zip(before[other], after[other], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(before[player], after[player], strict=True))
    assert {id(p) for p in model.player_parameters("d")}.isdisjoint(id(p) for p in model.player_parameters("g"))


def test_the_critic_steps_n_critic_times_per_generator_step():
    cfg, model, data = _tiny("gan-digits", "--n-critic", "3", "--batch-size", "2")  # 16 images: 8 iterations
    assert [model.players_at(i) for i in range(1, 7)] == [("d",), ("d",), ("d", "g"), ("d",), ("d",), ("d", "g")]
    optimizers = make_optimizers(cfg, model)
    _, iteration, _ = train_epoch(cfg, model, optimizers, data, torch.Generator().manual_seed(0), 0)
    steps = {p: int(next(iter(o.state.values()))["step"]) for p, o in optimizers.items()}
    assert iteration == 8 and steps == {"d": 8, "g": 2}
    assert cfg.lr_d == optimizers["d"].param_groups[0]["lr"] and optimizers["g"].param_groups[0]["betas"][0] == 0.5


def test_samples_are_uint8_in_range_and_temperature_zero_is_one_image():
    _, model, _ = _tiny()
    _scramble(model)
    x = model.sample(10, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.uint8 and x.shape == (10, 1, 8, 8) and int(x.max()) <= 16
    assert torch.equal(x, model.sample(10, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(x, model.sample(10, generator=torch.Generator().manual_seed(1)))
    mode = model.sample(4, generator=torch.Generator().manual_seed(0), temperature=0)
    assert (mode == mode[:1]).all()  # z = 0 for every sample
    z = torch.randn(5, model.latent_dim)
    assert torch.equal(model.decode(z), model.decode(z)) and model.decode(z).dtype == torch.uint8
    # an unconditional model ignores labels
    labels = torch.full((10,), 3)
    assert torch.equal(x, model.sample(10, generator=torch.Generator().manual_seed(0), labels=labels))


@pytest.mark.parametrize("condition", ["channels", "projection"])
def test_the_conditional_model_s_samples_depend_on_the_label(condition):
    _, model, _ = _tiny("cgan-digits", "--d-condition", condition)
    _scramble(model)
    assert model.num_classes == 10
    z = torch.randn(6, model.latent_dim)
    zeros, ones = model.decode(z, torch.zeros(6, dtype=torch.long)), model.decode(z, torch.ones(6, dtype=torch.long))
    assert not torch.equal(zeros, ones)
    # the discriminator scores the same image differently under different labels
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    assert not torch.allclose(model.discriminator(x, torch.zeros(6, dtype=torch.long)),
                              model.discriminator(x, torch.full((6,), 7)))  # fmt: skip
    # no labels: classes drawn from the generator given, so a seed fixes them
    a = model.sample(8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, model.sample(8, generator=torch.Generator().manual_seed(2)))


def test_the_mode_seeking_term_by_hand():
    """MSGAN: G's loss gains weight / (mean |G(z1) - G(z2)| / mean |z1 - z2|), both codes with the same labels."""
    _, model, data = _tiny("cgan-digits", "--mode-seeking", "0.5")
    batch = (data.images[:6], data.labels[:6])
    torch.manual_seed(3)
    got = model.loss(batch, "g")["loss"]
    torch.manual_seed(3)
    z1 = torch.randn(6, model.latent_dim)
    z2 = torch.randn(6, model.latent_dim)
    f1, f2 = (2 * model.fake_unit(z, batch[1]) - 1 for z in (z1, z2))
    ratio = (f1 - f2).abs().mean((1, 2, 3)) / (z1 - z2).abs().mean(1)
    expected = g_loss("ns", model.discriminator(f1, batch[1])) + 0.5 / (ratio.mean() + 1e-5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_samples_come_from_a_moving_average_of_the_generator():
    _, model, data = _tiny()
    live, avg = list(model.generator.parameters()), list(model.generator_ema.parameters())
    assert all(torch.equal(a, b) for a, b in zip(live, avg, strict=True)) and not any(a.requires_grad for a in avg)
    old = [a.clone() for a in avg]
    with torch.no_grad():
        for p in live:
            p.add_(1.0)
    batch = (data.images[:4], data.labels[:4])
    model.eval()
    with torch.no_grad():
        model.loss(batch, "g")  # validation does not move the average
    assert all(torch.equal(a, b) for a, b in zip(avg, old, strict=True))
    model.train()
    model.loss(batch, "g")  # the 1st update: decay min(0.999, 2 / 11), so 9/11 of the way to the live weights
    assert all(torch.allclose(a, o + 9 / 11) for a, o in zip(avg, old, strict=True))
    model.loss(batch, "g")  # the 2nd: decay 3 / 12
    assert all(torch.allclose(a, o + 9 / 11 + 0.75 * 2 / 11) for a, o in zip(avg, old, strict=True))
    _scramble(model)  # random weights everywhere, so a sample shows which weights made it
    z = torch.randn(4, model.latent_dim)
    before = model.decode(z)
    with torch.no_grad():
        for p in live:
            p.normal_()
    assert torch.equal(model.decode(z), before)  # new live weights: the same samples
    _, plain, _ = _tiny("gan-digits", "--ema", "0")
    assert plain.generator_ema is None


def test_reals_and_fakes_share_one_pixel_range_and_rounding_recovers_the_levels():
    _, model, data = _tiny()
    torch.manual_seed(0)
    x = data.images
    real = model.real_input(x)  # dequantised: level v lands in [v - 0.5, v + 0.5] / 16, then 2x - 1
    assert real.min() >= -1 - 1 / 16 and real.max() <= 1 + 1 / 16
    assert torch.equal(model.from_unit((real + 1) / 2), x)  # rounding undoes the dequantisation
    assert len(real.unique()) > 17  # continuous, not 17 levels
    big = model.fake_unit(torch.randn(64, model.latent_dim) * 100)
    assert big.min() >= -0.5 / 16 and big.max() <= 1 + 0.5 / 16
    _, plain, _ = _tiny("gan-digits", "--dequantize", "false")
    assert torch.equal(plain.real_input(x), 2 * x.float() / 16 - 1)


def test_gan_configs_refuse_bad_values_clearly(in_tmp, capsys):
    cases = [
        (["--lr", "0.01"], "--lr-d and --lr-g"),
        (["--loss", "wgan"], "wgan-gp"),
        (["--generator", "convnet"], "not a decoder backbone"),
        (["--discriminator", "conv-decoder"], "not an image backbone"),
        (["--n-critic", "0"], "n_critic"),
    ]
    for args, words in cases:
        assert main(["train", "gan-digits", "--wandb", "disabled", *args]) == 2, args
        assert words in capsys.readouterr().err.replace("\n", ""), args


@pytest.mark.parametrize("recipe", ["gan-digits", "gan-digits-hinge", "gan-digits-wgan-gp", "cgan-digits"])
def test_gan_recipes_train_from_the_command_line(recipe, in_tmp, capsys):
    assert main(["train", recipe, "--name", "g", "--epochs", "1", "--batch-size", "250", *TINY]) == 0
    out = _last_json(capsys)
    assert {"val/d_loss", "val/g_loss", "val/d_real", "val/d_fake"} <= set(out)
    row = json.loads((in_tmp / "runs/g/metrics.jsonl").read_text().splitlines()[-1])
    logged = {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "val/d_real", "val/d_fake"}
    assert logged <= set(row) and "train/loss" not in row
    assert ("train/gp" in row) == (recipe == "gan-digits-wgan-gp")
    assert list((in_tmp / "runs/g/samples").glob("samples_final_*.png"))


def test_resumed_gan_run_equals_one_straight_run(in_tmp, capsys):
    args = ["--batch-size", "250", "--eval-every", "1", "--wandb", "disabled", *TINY]
    assert main(["train", "gan-digits", "--name", "straight", "--epochs", "2", *args]) == 0
    assert main(["train", "gan-digits", "--name", "cut", "--epochs", "1", *args]) == 0
    assert main(["train", "--resume", "runs/cut", "--epochs", "2"]) == 0
    capsys.readouterr()
    rows = {n: [json.loads(line) for line in (in_tmp / f"runs/{n}/metrics.jsonl").read_text().splitlines()]
            for n in ("straight", "cut")}  # fmt: skip
    assert [r["step"] for r in rows["cut"]] == [1, 2]
    for a, b in zip(rows["straight"], rows["cut"], strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("perf/")} == \
            {k: v for k, v in b.items() if not k.startswith("perf/")}  # fmt: skip
    for n in ("straight", "cut"):
        assert main(["sample", f"runs/{n}", "-n", "16", "-o", f"{n}.png", "--wandb", "disabled"]) == 0
    assert (in_tmp / "straight.png").read_bytes() == (in_tmp / "cut.png").read_bytes()
