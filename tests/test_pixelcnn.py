"""PixelCNN: the raster (and R, G, B) order checked by gradients, the gated model's missing blind spot, the
likelihood by hand and its normalisation, the fast sampler's samples equal to the plain loop's, the command
line, and the digits band (slow)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from fovea.cli import main
from fovea.errors import ConfigError
from fovea.generative.base import likelihood_figures
from fovea.generative.pixelcnn import PixelCNN, PixelCNNConfig, build
from fovea.vision.data import ImageData


def _data(shape=(1, 8, 8), max_value=16, n=8) -> ImageData:
    images = torch.randint(0, max_value + 1, (n, *shape), dtype=torch.uint8)
    return ImageData(images, torch.arange(n) % 10, max_value, tuple(str(i) for i in range(10)))


def _model(gated: bool, shape=(1, 8, 8), max_value=16, **options) -> PixelCNN:
    torch.manual_seed(0)
    options = {"hidden": 12, "layers": 3, "first_kernel": 3, **options}
    return build(PixelCNNConfig(gated=gated, **options), _data(shape, max_value)).eval()


def _dependence(model: PixelCNN, shape: tuple[int, int, int]) -> dict[tuple[int, int, int], torch.Tensor]:
    """For every output (channel, row, column): which inputs (C, H, W) its logits have a gradient from."""
    torch.manual_seed(1)
    x = torch.rand(1, *shape, requires_grad=True)
    logits = model(x)  # (1, C, levels, H, W)
    w = torch.randn(model.levels)
    out = {}
    for ch, r, c in itertools.product(*(range(s) for s in shape)):
        (grad,) = torch.autograd.grad((logits[0, ch, :, r, c] * w).sum(), x, retain_graph=True)
        out[ch, r, c] = grad[0] != 0
    return out


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 5, 9), (3, 4, 5)], ids=["8x8", "5x9", "rgb-4x5"])
def test_each_pixel_sees_only_the_pixels_before_it(gated, shape):
    """Raster order, the channels of a pixel in turn: the logits of (ch, r, c) have exactly zero gradient
    from that value and every later one, and a gradient from the channel before, the pixel to the left and
    the pixel above."""
    colors = shape[0]
    order = torch.arange(math.prod(shape)).view(shape[1], shape[2], colors).permute(2, 0, 1)  # (C, H, W)
    for (ch, r, c), seen in _dependence(_model(gated, shape), shape).items():
        where = f"logits of ({ch}, {r}, {c})"
        assert not seen[order >= order[ch, r, c]].any(), f"{where} see that value or a later one"
        assert seen[:ch, r, c].all(), f"{where} miss an earlier channel of the pixel"
        if c:
            assert seen[:, r, c - 1].all(), f"{where} miss the pixel to the left"
        if r:
            assert seen[:, r - 1, c].all(), f"{where} miss the pixel above"


def test_the_gated_model_has_no_blind_spot_and_the_plain_one_has():
    """Within its reach, the gated PixelCNN sees every earlier pixel; the plain one misses the upper right
    (van den Oord et al. 2016b, figure 1)."""
    shape = (1, 9, 9)
    r, c = 8, 4
    for gated in (True, False):
        model = _model(gated, shape)
        up, left, right = model.body.reach
        seen = _dependence(model, shape)[0, r, c][0]  # (H, W)
        window = torch.zeros(shape[1:], dtype=torch.bool)
        window[r - up : r, c - left : c + right + 1] = True
        window[r, c - left : c] = True
        assert not seen[~window].any(), "a logit sees beyond the model's declared reach"
        blind = window & ~seen
        assert blind.any() != gated, f"gated={gated}: blind spot {blind.nonzero().tolist()}"


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_nll_is_the_summed_cross_entropy_and_a_normalised_likelihood(gated):
    model = _model(gated, (3, 4, 5), max_value=6)
    images = _data((3, 4, 5), 6, 4).images
    with torch.no_grad():
        logp = torch.log_softmax(model(images.float() / 6), 2)  # (B, C, levels, H, W)
        by_hand = torch.zeros(4)
        for b, ch, r, c in itertools.product(range(4), range(3), range(4), range(5)):
            by_hand[b] -= logp[b, ch, int(images[b, ch, r, c]), r, c]
        nll = model.nll(images)
        out = model.loss((images, None))
    assert nll.shape == (4,) and torch.allclose(nll, by_hand, rtol=1e-5)
    assert torch.allclose(out["loss"], nll.mean())
    assert torch.allclose(out["bits_per_dim"], nll.mean() / (60 * math.log(2)))
    # every image of 2 pixels x 2 channels with 3 levels: 81 probabilities that sum to one
    tiny = _model(gated, (2, 1, 2), max_value=2, hidden=8)
    every = torch.tensor(list(itertools.product(range(3), repeat=4)), dtype=torch.uint8).view(81, 1, 2, 2)
    with torch.no_grad():
        total = (-tiny.nll(every.permute(0, 2, 1, 3))).exp().sum()  # (81, C=2, 1, 2)
    assert torch.allclose(total, torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
@pytest.mark.parametrize("shape", [(1, 12, 13), (3, 7, 9)], ids=["gray", "rgb"])
def test_the_fast_sampler_draws_the_same_samples_as_the_plain_loop(gated, shape):
    """Bit for bit, at temperature 1 and 0.7, for one image and a batch (PyTorch's default CPU convolution
    would change algorithm with the batch and the input size, and round differently)."""
    model = _model(gated, shape, max_value=255, hidden=16, layers=2)
    for n, temperature in ((1, 1.0), (5, 0.7)):
        fast = model.sample(n, generator=torch.Generator().manual_seed(3), temperature=temperature)
        naive = model.sample(n, generator=torch.Generator().manual_seed(3), temperature=temperature, fast=False)
        assert fast.dtype == torch.uint8 and fast.shape == (n, *shape)
        assert torch.equal(fast, naive), f"n={n}, temperature={temperature}"
        assert len(fast.unique()) > 20  # real draws over 256 levels, not a constant image


def test_a_class_conditional_pixelcnn_uses_its_labels():
    torch.manual_seed(0)
    model = build(PixelCNNConfig(hidden=8, layers=2, conditional=True), _data()).eval()
    assert model.num_classes == 10
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([0, 0])), model(x, torch.tensor([3, 3])))
    labels = torch.tensor([1, 7, 7])
    a = model.sample(3, generator=torch.Generator().manual_seed(0), labels=labels)
    assert torch.equal(a, model.sample(3, generator=torch.Generator().manual_seed(0), labels=labels, fast=False))
    with pytest.raises(ValueError, match="labels"):
        model.sample(3)


def test_bad_pixelcnn_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="kernel_size"):
        PixelCNNConfig(kernel_size=4)
    with pytest.raises(ConfigError, match="hidden"):
        build(PixelCNNConfig(hidden=2), _data((3, 4, 4), 255))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        _model(True).nll(torch.zeros(2, 1, 7, 8, dtype=torch.uint8))


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_pixelcnn_digits_trains_and_samples_from_the_command_line(in_tmp, capsys):
    tiny = ["--epochs", "2", "--eval-every", "1", "--hidden", "8", "--layers", "2", "--wandb", "disabled"]
    assert main(["train", "pixelcnn-digits", "--name", "p", *tiny]) == 0
    out = _last_json(capsys)
    assert out["val/nll_kind"] == "exact" and 0 < out["val/nll_nats"] < 64 * math.log(17) * 1.5
    rows = [json.loads(line) for line in (in_tmp / "runs/p/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"train/loss", "train/bits_per_dim", "val/bits_per_dim"} <= set(rows[-1])
    assert list((in_tmp / "runs/p/samples").glob("samples_grid_*.png"))
    assert main(["sample", "runs/p", "-n", "4", "-o", "grid.png", "--temperature", "0.5", "--wandb", "disabled"]) == 0
    assert _last_json(capsys)["images"] == 4 and (in_tmp / "grid.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_pixelcnn_digits_meets_its_likelihood_band(seed, in_tmp, capsys):
    """Its band: pixelcnn-digits as shipped reaches a test NLL of at most 85 nats per image (a 4-layer
    causal 1-D convolution over the raster order gets 85.8, independent pixels 106.5)."""
    from fovea.config import get_recipe
    from fovea.generative.evaluation import load_trained
    from fovea.run import Run

    assert main(["train", "pixelcnn-digits", "--name", "p", "--seed", str(seed), "--wandb", "disabled"]) == 0
    capsys.readouterr()
    cfg = get_recipe("pixelcnn-digits").config
    with Run.open("runs/p", "pixelcnn-digits", cfg) as run:
        model, test = load_trained(cfg, run)
        figures = likelihood_figures(model, test, "test")
    assert len(test) == 447 and figures["test/nll_nats"] <= 85.0, figures
