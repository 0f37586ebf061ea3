"""Sample quality in the digits classifier's features: the Frechet distance against scipy, KID against torchmetrics,
the protocol (N images a side, repeated draws) tested on real digits, and the checks on the scoring classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

from fovea.cli import main
from fovea.config import get_recipe
from fovea.errors import ConfigError
from fovea.generative import metrics
from fovea.vision import classify
from fovea.vision import data as vdata


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """FID's formula as pytorch-fid writes it (scipy's sqrtm of the covariance product)."""
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(root))


@pytest.mark.parametrize("n, m, f", [(40, 30, 64), (300, 200, 16)])  # fewer images than features, and more
def test_frechet_distance_matches_scipy(n, m, f):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, f, generator=gen, dtype=torch.float64) @ torch.randn(f, f, generator=gen, dtype=torch.float64)
    b = torch.randn(m, f, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    assert metrics.frechet_distance(a, b) == pytest.approx(_scipy_frechet(a.numpy(), b.numpy()), rel=1e-6)


def test_kernel_distance_is_torchmetrics_unbiased_cubic_mmd():
    gen = torch.Generator().manual_seed(1)
    a, b = (
        torch.randn(50, 32, generator=gen, dtype=torch.float64),
        torch.randn(50, 32, generator=gen, dtype=torch.float64),
    )
    assert metrics.kernel_distance(a, b + 0.5) == pytest.approx(poly_mmd(a, b + 0.5).item(), rel=1e-9)
    # unbiased: two sets of one distribution average about 0 (a biased V-statistic stays above 0)
    pairs = [torch.randn(2, 20, 8, generator=gen, dtype=torch.float64) for _ in range(200)]
    assert abs(np.mean([metrics.kernel_distance(x, y) for x, y in pairs])) < 0.01


class _Features(torch.nn.Module):
    """A FeatureSpace as torchmetrics' custom feature extractor (uint8 images in, float64 features out)."""

    def __init__(self, space: metrics.FeatureSpace):
        super().__init__()
        self.space = space

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.space.features(images).double()


def _random_space(seed: int = 0) -> metrics.FeatureSpace:
    """An untrained cnn-digits network's 512-d features: any fixed feature map serves the protocol's tests."""
    torch.manual_seed(seed)
    model = classify.build(get_recipe("cnn-digits").config, (1, 8, 8), 10, 16, pretrained=False)
    return metrics.FeatureSpace(model, "untrained")


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_over_draws_equals_torchmetrics_kid_with_our_feature_extractor():
    """``compare`` takes its draws in torchmetrics' order (a permutation of the real features, then of the fake
    ones), so with torchmetrics' RNG seeded alike its KID mean and std over subsets of N are ours exactly."""
    space = _random_space()
    fake, real = vdata.load("digits", "train").images[:300], vdata.load("digits", "test").images
    ours = metrics.compare(space.features(fake), space.features(real), draws=5, seed=3)
    n = ours["samples/per_draw"]
    assert n == len(real) // 2 == 223
    kid = KernelInceptionDistance(feature=_Features(space), subsets=5, subset_size=n).set_dtype(torch.float64)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    torch.manual_seed(3)
    mean, std = kid.compute()
    assert ours["kid/test"] == pytest.approx(mean.item(), rel=1e-9)
    assert ours["kid/test_std"] == pytest.approx(std.item(), rel=1e-9)


def test_every_draw_compares_n_images_with_n(monkeypatch):
    """Like with like: the score and the reference each compare N images with N (N = min(samples, pool // 2))."""
    sizes = []
    monkeypatch.setattr(metrics, "frechet_distance", lambda a, b: sizes.append((len(a), len(b))) or 0.0)
    out = metrics.compare(torch.randn(1000, 4), torch.randn(797, 4), draws=3)
    assert sizes == [(398, 398)] * 6 and out["samples/per_draw"] == 398 and out["samples/real_pool"] == 797
    sizes.clear()
    assert metrics.compare(torch.randn(100, 4), torch.randn(797, 4), draws=2)["samples/per_draw"] == 100
    assert sizes == [(100, 100)] * 4
    with pytest.raises(ConfigError, match="at least 2"):
        metrics.compare(torch.randn(1, 4), torch.randn(797, 4))


@pytest.fixture(scope="module", params=["untrained", pytest.param("trained", marks=pytest.mark.slow)])
def digit_features(request, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Features of the digits' train, val and test splits: an untrained network's (fast), or those of the
    classifier ``fovea eval`` uses, the cnn-digits recipe trained now and passing the 97% check (slow)."""
    if request.param == "untrained":
        space = _random_space()
    else:
        runs = tmp_path_factory.mktemp("fid") / "runs"
        assert main(["train", "cnn-digits", "--name", "cls", "--runs-dir", str(runs), "--wandb", "disabled"]) == 0
        space = metrics.FeatureSpace.load(runs / "cls", torch.device("cpu"), (1, 8, 8), 16)
    return {s: space.features(vdata.load("digits", s).images) for s in ("train", "val", "test")}


def _within_spread(out: dict, name: str) -> bool:
    return abs(out[f"{name}/test"] - out[f"{name}/real_vs_real"]) <= 2 * out[f"{name}/real_vs_real_std"]


def test_held_out_digits_given_as_samples_score_like_real_vs_real(digit_features):
    """Real digits that the reference never draws from, scored as samples, land within two standard deviations
    of real-vs-real, for the Frechet distance and for KID. The held-out images (val and test) are shuffled
    together and a third set aside as the "samples", so they and the reference pool are alike by construction
    (val and test alone differ: they come from different writers)."""
    held = torch.cat([digit_features["val"], digit_features["test"]])
    perm = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))
    samples, pool = held[perm[: len(held) // 3]], held[perm[len(held) // 3 :]]
    out = metrics.compare(samples, pool)
    assert out["samples/per_draw"] == len(samples) == 265
    assert _within_spread(out, "fid") and _within_spread(out, "kid"), out


def test_training_digits_no_longer_beat_the_real_vs_real_reference(digit_features):
    """The old protocol (1,000 training digits vs the 447 test images, reference 350 val vs the same 447) put
    real training digits below its own reference, as if they were better than real data; with N a side they
    score no better than real-vs-real (minus two standard deviations), by either distance."""
    f = digit_features
    old_score, old_reference = (
        metrics.frechet_distance(f["train"], f["test"]),
        metrics.frechet_distance(f["val"], f["test"]),
    )
    assert old_score < old_reference  # the failure, still there in the old protocol's figures
    out = metrics.compare(f["train"], torch.cat([f["val"], f["test"]]))
    for name in ("fid", "kid"):
        assert out[f"{name}/test"] >= out[f"{name}/real_vs_real"] - 2 * out[f"{name}/real_vs_real_std"], out


def _classifier_run(tmp_path, summary: dict | None, name: str = "cls"):
    """A classifier run folder holding only ``summary`` (none when None)."""
    run = tmp_path / name
    run.mkdir()
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.mark.parametrize("summary, words", [
    ({"test/acc": 0.93, "epochs": 3}, "test accuracy 93.0%, below the 97%"),
    (None, "no test accuracy"),
    ({"epochs": 3}, "no test accuracy"),
    ({"test/acc": 0.99, "epochs": 2}, "summary.json is of epoch 2 but its checkpoint of epoch 3"),
])  # fmt: skip
def test_a_weak_or_unfinished_classifier_is_refused(tmp_path, summary, words):
    run = _classifier_run(tmp_path, summary)
    with pytest.raises(ConfigError, match="fovea train cnn-digits") as e:
        metrics.classifier_accuracy(run, 3, "--classifier runs/cls")
    assert words in str(e.value)
    good = _classifier_run(tmp_path, {"test/acc": 0.99, "epochs": 3}, "good")
    assert metrics.classifier_accuracy(good, 3, "--classifier runs/good") == 0.99
