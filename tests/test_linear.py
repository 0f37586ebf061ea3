"""Linear classifiers (vision/linear.py) and image features (vision/features.py): the losses against naive
loops, a gradient check, the features against scikit-image, and the digits band against scikit-learn."""

from __future__ import annotations

import json
import math
import signal
import warnings

import numpy as np
import pytest
import torch
from test_datasets import SIZES, cifar_batches, write_cifar_pickles

from fovea import checkpoint
from fovea.cli import main
from fovea.config import apply_overrides, get_recipe
from fovea.errors import ConfigError
from fovea.run import Run
from fovea.vision import data as vdata
from fovea.vision import features as vfeat
from fovea.vision import linear


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    state, _ = checkpoint.load(checkpoint.list_checkpoints(run_dir / "checkpoints")[-1])
    return state["objects"]["model"]


def metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


# ----------------------------------------------------------------------------- losses


def scores_and_labels(seed: int = 0, b: int = 9, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g, dtype=torch.float64) * 2, torch.randint(0, k, (b,), generator=g)


def test_svm_loss_equals_the_naive_loop():
    scores, labels = scores_and_labels()
    total = 0.0
    for s, y in zip(scores.tolist(), labels.tolist(), strict=True):
        total += sum(max(0.0, s[j] - s[y] + 1) for j in range(len(s)) if j != y)
    assert linear.svm_loss(scores, labels).item() == pytest.approx(total / len(labels), rel=1e-12)
    # all scores equal: every wrong class costs the margin, 1
    assert linear.svm_loss(torch.zeros(4, 10), torch.arange(4)).item() == pytest.approx(9.0)


def test_softmax_loss_equals_the_naive_loop():
    scores, labels = scores_and_labels(1)
    total = 0.0
    for s, y in zip(scores.tolist(), labels.tolist(), strict=True):
        total += -math.log(math.exp(s[y]) / sum(math.exp(v) for v in s))
    assert linear.softmax_loss(scores, labels).item() == pytest.approx(total / len(labels), rel=1e-12)
    assert linear.softmax_loss(torch.zeros(3, 10), torch.arange(3)).item() == pytest.approx(math.log(10))
    big = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])  # no overflow
    assert linear.softmax_loss(big, torch.tensor([1, 1])).item() == pytest.approx(500.0)


@pytest.mark.parametrize("reg", ["l2", "l1"])
def test_loss_adds_lambda_times_the_regulariser_of_w_not_b(reg):
    model = linear.LinearClassifier("pixels", (1, 2, 3), 4, 16, loss="svm", reg=reg, reg_strength=0.3)
    with torch.no_grad():
        model.linear.weight.copy_(torch.arange(24.0).view(4, 6) - 10)
        model.linear.bias.fill_(100.0)
    w = model.linear.weight.detach().double()
    expected = (w**2).sum() if reg == "l2" else w.abs().sum()
    assert linear.penalty(model.linear.weight, reg).item() == pytest.approx(expected.item())
    images = torch.randint(0, 17, (5, 1, 2, 3), dtype=torch.uint8)
    out = model.loss((images, torch.tensor([0, 1, 2, 3, 0])))
    assert (out["loss"] - out["data_loss"]).item() == pytest.approx(0.3 * expected.item(), rel=1e-5)
    assert set(out) == {"loss", "data_loss", "acc"}


def test_svm_gradient_matches_the_hand_derived_and_the_numerical_gradient():
    """The notes' gradient check (3.5: analytic gradients are exact but error-prone; check them numerically)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w = (torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    lam = 0.1

    def objective(w: torch.Tensor) -> torch.Tensor:
        return linear.svm_loss(x @ w.T, y) + lam * linear.penalty(w, "l2")

    objective(w).backward()
    # CS231n's svm_loss_naive gradient: each positive margin adds x_i to the row of class j, takes it from y_i
    hand = torch.zeros(3, 4, dtype=torch.float64)
    scores = (x @ w.T).detach()
    for i in range(len(y)):
        for j in range(3):
            if j != y[i] and scores[i, j] - scores[i, y[i]] + 1 > 0:
                hand[j] += x[i]
                hand[y[i]] -= x[i]
    hand = hand / len(y) + 2 * lam * w.detach()
    numeric = torch.zeros_like(hand)
    h = 1e-6
    for idx in np.ndindex(*hand.shape):
        wp, wm = w.detach().clone(), w.detach().clone()
        wp[idx] += h
        wm[idx] -= h
        numeric[idx] = (objective(wp) - objective(wm)) / (2 * h)
    rel = ((hand - numeric).abs() / (hand.abs() + numeric.abs()).clamp(min=1e-8)).max().item()
    assert rel < 1e-6, rel
    assert torch.allclose(w.grad, hand, atol=1e-12)


# ----------------------------------------------------------------------------- features


def rgb_images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))


def test_feature_shapes_on_grey_and_colour_images():
    digits = vdata.load("digits", "val").images[:5]
    for spec, d in [("pixels", 64), ("hog", 324), ("color", 10), ("hog+color", 334), ("color+pixels", 74)]:
        f = vfeat.extract(spec, digits, 16)
        assert f.shape == (5, d) and f.dtype == torch.float32 and vfeat.dim(spec, (1, 8, 8)) == d
    f = vfeat.extract("pixels+hog+color", rgb_images(), 255)
    assert f.shape == (3, 3072 + 324 + 10)
    assert torch.equal(f[:, :3072], rgb_images().flatten(1).float() / 255)  # pixels scaled to 0..1, C-H-W order
    assert vfeat.standardised("pixels+hog", (1, 8, 8)).tolist() == [False] * 64 + [True] * 324


@pytest.mark.parametrize("shape, max_value", [((1, 8, 8), 16), ((3, 32, 32), 255)])
def test_hog_is_scikit_images_hog_of_the_grey_image(shape, max_value):
    from skimage.color import rgb2gray
    from skimage.feature import hog

    image = np.random.default_rng(1).integers(0, max_value + 1, shape).astype(np.uint8)
    floats = image / max_value
    grey = rgb2gray(floats.transpose(1, 2, 0)) if shape[0] == 3 else floats[0]
    expected = hog(grey, orientations=9, pixels_per_cell=(shape[1] // 4,) * 2, cells_per_block=(2, 2),
                   block_norm="L2-Hys")  # fmt: skip
    ours = vfeat.extract("hog", torch.from_numpy(image)[None], max_value)[0]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_colour_histogram_sums_to_one_and_bins_hue():
    assert torch.allclose(vfeat.extract("color", rgb_images(4), 255).sum(1), torch.ones(4))
    digits = vdata.load("digits", "val").images[:6]
    assert torch.allclose(vfeat.extract("color", digits, 16).sum(1), torch.ones(6))
    red, green, blue = (torch.zeros(1, 3, 4, 4, dtype=torch.uint8).index_fill_(1, torch.tensor([c]), 255)
                        for c in range(3))  # fmt: skip
    for image, hue_bin in ((red, 0), (green, 3), (blue, 6)):  # hue 0, 1/3, 2/3 of the circle; 10 bins
        assert vfeat.extract("color", image, 255)[0].argmax().item() == hue_bin
    grey = torch.tensor([[[[0, 8], [16, 16]]]], dtype=torch.uint8)  # intensity 0, 0.5, 1, 1
    assert vfeat.extract("color", grey, 16)[0].tolist() == [0.25, 0, 0, 0, 0, 0.25, 0, 0, 0, 0.5]


def test_unknown_features_are_refused_with_the_closest_names():
    with pytest.raises(ConfigError, match=r"unknown feature 'hgo' in 'hgo\+color'; did you mean hog\?"):
        vfeat.extract("hgo+color", rgb_images(), 255)
    with pytest.raises(ConfigError, match=r"LinearConfig.features = 'colour' is not allowed: .*did you mean color"):
        linear.LinearConfig(features="colour")
    with pytest.raises(ConfigError, match="names a feature twice"):
        vfeat.parse("hog+hog")
    with pytest.raises(ConfigError, match=r"LinearConfig.dataset = 'digit' is not allowed"):
        linear.LinearConfig(dataset="digit")
    with pytest.raises(ConfigError, match=r"--loss = 'hinge' is not allowed: expected one of 'svm', 'softmax'"):
        apply_overrides(linear.LinearConfig(), ["--loss", "hinge"])
    with pytest.raises(ConfigError, match=r"lr_decay = 1.5 is not allowed: it must be <= 1"):
        linear.LinearConfig(lr_decay=1.5)


# ----------------------------------------------------------------------------- the model


def test_filters_are_the_templates_and_gradients_reach_the_pixels():
    train = vdata.load("digits", "train")
    model = linear.fit(linear.LinearConfig(epochs=2), train)
    assert model.filters().shape == (10, 1, 8, 8)
    images = train.images[:4].float().requires_grad_()
    model(images).gather(1, train.labels[:4, None]).sum().backward()
    assert images.grad.shape == (4, 1, 8, 8) and images.grad.abs().sum() > 0
    # the templates are what the score is made of: scores = <template, pixels / max> + b - <template, mean>
    t = model.filters().flatten(1)  # (K, D)
    scores = model(train.images[:4]).detach()
    x = train.images[:4].flatten(1).float() / 16
    assert torch.allclose(scores, x @ t.T + model.linear.bias - model.mean @ t.T, atol=1e-4)
    hog = linear.fit(linear.LinearConfig(features="hog", epochs=1), train)
    assert hog.filters() is None and hog.features(train.images[:3]).shape == (3, 324)


def test_cached_features_give_the_same_loss_as_images():
    train = vdata.load("digits", "train")
    fitting = linear.start(linear.LinearConfig(features="hog+color+pixels", loss="svm", reg_strength=0.01), train)
    batch = (train.images[:50], train.labels[:50])
    a = fitting.model.loss(batch)
    b = fitting.model.loss((fitting.train_x[:50], train.labels[:50]))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert torch.allclose(fitting.train_x.mean(0), torch.zeros(398), atol=1e-4)  # all centred
    std = fitting.train_x[:, :334].std(0, unbiased=False)  # hog and color: also divided by their std
    assert (((std - 1).abs() < 1e-3) | (std < 1e-6)).all() and (std > 0.5).sum() > 100
    pixels = train.images.flatten(1).float() / 16  # pixels: only centred
    assert torch.allclose(fitting.train_x[:, 334:], pixels - pixels.mean(0), atol=1e-5)


def test_fit_equals_a_run_of_the_same_config(in_tmp):
    cfg = linear.LinearConfig(loss="svm", epochs=3, momentum=0.9, lr_decay=0.9, lr=0.5)
    splits = {s: vdata.load("digits", s) for s in vdata.SPLITS}
    seen = []
    fitted = linear.fit(cfg, splits["train"], splits["val"], log=lambda f, e: seen.append((e, f["val/acc"])))
    with Run.create("svm-digits", cfg, name="same", wandb="disabled", device="cpu") as run:
        figures = linear.train(cfg, run)
    weights = final_weights(in_tmp / "runs/same")
    assert all(torch.equal(v, weights[k]) for k, v in fitted.state_dict().items())
    assert [e for e, _ in seen] == [1, 2, 3] and seen[-1][1] == pytest.approx(figures["val/acc"])
    assert (fitted.predict(splits["test"].images) == splits["test"].labels).float().mean().item() == pytest.approx(
        figures["test/acc"]
    )


# ----------------------------------------------------------------------------- recipes


def sklearn_test_accuracy(kind: str) -> float:
    """scikit-learn's LinearSVC or LogisticRegression, default settings, on pixels / 16 of the same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    tr, te = vdata.load("digits", "train"), vdata.load("digits", "test")
    model = LinearSVC() if kind == "svm" else LogisticRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the default max_iter
        model.fit(tr.images.flatten(1).numpy() / 16, tr.labels.numpy())
    return model.score(te.images.flatten(1).numpy() / 16, te.labels.numpy())


@pytest.mark.slow  # about 2 s each on an idle 2-core machine, 10-15 s when it is loaded
@pytest.mark.parametrize("recipe, kind", [("svm-digits", "svm"), ("softmax-digits", "softmax")])
def test_digits_recipes_are_within_a_point_of_scikit_learn(in_tmp, capsys, recipe, kind):
    assert main(["train", recipe, "--name", "x", "--wandb", "disabled", "--device", "cpu"]) == 0
    trained = last_json(capsys.readouterr().out)
    peer = sklearn_test_accuracy(kind)
    assert trained["test/acc"] >= peer - 0.01, (trained, peer)
    assert trained["epochs"] == get_recipe(recipe).config.epochs
    assert main(["eval", "runs/x", "--wandb", "disabled", "--device", "cpu"]) == 0
    evaluated = last_json(capsys.readouterr().out)
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"])
    assert sum(map(sum, evaluated["confusion"])) == 447 and "test/acc_class_9" in evaluated


@pytest.mark.parametrize("recipe", ["softmax-cifar10", "svm-cifar10-features"])
def test_cifar10_recipes_train_on_a_small_cifar_folder(in_tmp, capsys, recipe):
    write_cifar_pickles(in_tmp / "cifar", cifar_batches(SIZES))
    argv = ["train", recipe, "--name", "c", "--wandb", "disabled", "--data-dir", str(in_tmp / "cifar"), "--epochs", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    trained = last_json(capsys.readouterr().out)
    assert trained["epochs"] == 2 and 0 <= trained["test/acc"] <= 1 and math.isfinite(trained["test/loss"])
    assert main(["eval", "runs/c", "--wandb", "disabled", "--device", "cpu"]) == 0
    assert last_json(capsys.readouterr().out)["test/acc"] == pytest.approx(trained["test/acc"])
    assert [r["step"] for r in metrics(in_tmp / "runs/c")] == [1, 2]


def test_a_stopped_and_resumed_run_ends_as_a_straight_one(in_tmp, capsys, monkeypatch):
    argv = ["--wandb", "disabled", "--device", "cpu", "--epochs", "6", "--checkpoint-every", "100"]
    assert main(["train", "svm-digits", "--name", "straight", *argv]) == 0
    straight = last_json(capsys.readouterr().out)

    log = Run.log

    def stop_after_epoch_3(self, values, step=None):  # SIGTERM arrives during epoch 3
        log(self, values, step)
        if self.name == "cut" and self.step == 3:
            self._on_signal(signal.SIGTERM, None)

    monkeypatch.setattr(Run, "log", stop_after_epoch_3)
    assert main(["train", "svm-digits", "--name", "cut", *argv]) == 128 + signal.SIGTERM
    (only,) = checkpoint.list_checkpoints(in_tmp / "runs/cut/checkpoints")
    assert checkpoint.step_of(only) == 3
    monkeypatch.setattr(Run, "log", log)
    assert main(["train", "--resume", "runs/cut"]) == 0
    resumed = last_json(capsys.readouterr().out)
    a, b = final_weights(in_tmp / "runs/cut"), final_weights(in_tmp / "runs/straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(in_tmp / "runs/cut") == metrics(in_tmp / "runs/straight")
    assert resumed["test/acc"] == straight["test/acc"] and resumed["epochs"] == 6
