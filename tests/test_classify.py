"""The neural classifiers' training practice (notes ch. 6-7), hyperparameter search, and the bands of the
two-layer net, the CNN and the ResNet on the embedded digits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_CNN

from fovea.cli import main
from fovea.config import apply_overrides, get_recipe
from fovea.errors import ConfigError, UsageError
from fovea.search import Param
from fovea.vision import classify, practice


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- practice


@pytest.mark.parametrize("scheme,std", [("kaiming", lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
                                        ("xavier", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
                                        ("small", lambda fan_in, fan_out: 0.01)])  # fmt: skip
def test_initialisation_has_the_scale_the_notes_give(scheme, std):
    layer = torch.nn.Sequential(torch.nn.Linear(400, 300))
    torch.manual_seed(0)
    practice.initialise(layer, scheme)
    w = layer[0].weight
    assert w.std().item() == pytest.approx(std(400, 300), rel=0.03)
    assert torch.count_nonzero(layer[0].bias) == 0


def test_augmentations_keep_shape_dtype_and_do_what_they_say():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    flipped = practice.augmenter("flip")(images.repeat(32, 1, 1, 1), g)
    same = (flipped == images.repeat(32, 1, 1, 1)).flatten(1).all(1)
    mirrored = (flipped == images.flip(3).repeat(32, 1, 1, 1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()  # each image either kept or mirrored
    for spec in ("shift:1", "rotate:15", "affine:10", "erase:1", "shift:1,flip,rotate:10", ""):
        out = practice.augmenter(spec)(images, g)
        assert out.shape == images.shape and out.dtype == torch.uint8
    erased = practice.augmenter("erase:1")(torch.full((8, 1, 8, 8), 9, dtype=torch.uint8), g)
    assert (erased == 0).flatten(1).any(1).all()  # every image lost a rectangle


@pytest.mark.parametrize("spec", ["blur", "shift", "flip:2", "shift:x", "erase:2", "shift:-1"])
def test_a_bad_augmentation_is_named_with_the_list_of_good_ones(spec, in_tmp, capsys):
    assert main(["train", "cnn-digits", "--wandb", "disabled", "--augment", spec]) == 2
    err = capsys.readouterr().err
    assert "augment" in err and "shift:N" in err and "Traceback" not in err
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").iterdir())


def test_step_schedule_and_cosine():
    cfg = classify.ClassifierConfig(epochs=8, schedule="step")
    assert [classify.lr_factor(cfg, e) for e in (0, 3, 4, 5, 6, 8)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cfg = classify.ClassifierConfig(epochs=8, schedule="cosine")
    assert classify.lr_factor(cfg, 4) == pytest.approx(0.5) and classify.lr_factor(cfg, 8) == pytest.approx(0)


def test_update_ratios_are_logged_and_grow_with_the_learning_rate(in_tmp, capsys):
    ratios = {}
    for lr in ("1e-4", "1e-2"):
        name = f"lr{lr}"
        assert main(["train", "cnn-digits", "--name", name, "--wandb", "disabled", "--epochs", "1", "--lr", lr,
                     "--optimizer", "sgd", *TINY_CNN]) == 0  # fmt: skip
        row = metrics(in_tmp / "runs" / name)[0]
        ratios[lr] = {k: v for k, v in row.items() if k.startswith("update_ratio/")}
    assert set(ratios["1e-4"]) == {"update_ratio/backbone/stages/0/weight", "update_ratio/backbone/stages/4/weight",
                                   "update_ratio/head/1/weight"}  # fmt: skip
    for k, small in ratios["1e-4"].items():  # plain SGD: the update is lr * gradient, so 100x lr ~ 100x ratio
        assert small > 0 and ratios["1e-2"][k] / small == pytest.approx(100, rel=0.2)


def test_overfit_batch_drives_the_loss_to_zero(in_tmp, capsys):
    assert main(["train", "cnn-digits", "--name", "o", "--wandb", "disabled", "--overfit-batch", "16",
                 "--epochs", "60", "--backbone.widths", "8,16"]) == 0  # fmt: skip
    out = capsys.readouterr()
    figures = last_json(out.out)
    assert "Sanity check" in out.err
    assert figures["train/acc"] == 1.0 and figures["train/loss"] < 0.05, figures
    assert figures["val/acc"] < 0.9  # 16 images do not make a good classifier


def test_early_stopping_keeps_the_best_weights_and_resume_goes_on(in_tmp, capsys):
    args = ["--wandb", "disabled", "--epochs", "10", "--patience", "2", "--lr", "1e-9", *TINY_CNN]
    assert main(["train", "cnn-digits", "--name", "e", *args]) == 0
    out = capsys.readouterr()
    figures = last_json(out.out)
    assert "Early stop at epoch 3" in out.err
    assert figures["epochs"] == 3 and figures["best_epoch"] == 1  # lr 1e-9: nothing improves after epoch 1
    assert len(metrics(in_tmp / "runs/e")) == 3
    assert main(["eval", "runs/e", "--wandb", "disabled"]) == 0
    assert last_json(capsys.readouterr().out)["test/acc"] == pytest.approx(figures["test/acc"])
    assert main(["train", "--resume", "runs/e", "--patience", "0"]) == 0  # patience off: runs to the end
    assert last_json(capsys.readouterr().out)["epochs"] == 10


def test_train_limit_and_its_bounds(in_tmp, capsys):
    assert main(["train", "cnn-digits", "--name", "t", "--wandb", "disabled", "--epochs", "1", "--train-limit", "100",
                 *TINY_CNN]) == 0  # fmt: skip
    assert last_json(capsys.readouterr().out)["epochs"] == 1
    assert main(["train", "cnn-digits", "--name", "t2", "--wandb", "disabled", "--train-limit", "5000"]) == 2
    assert "train_limit = 5000 is more than the 1000 training images" in capsys.readouterr().err


# ----------------------------------------------------------------------------- search


def test_param_specs_sample_inside_their_range_and_narrow_around_the_best():
    import random

    p = Param.parse("lr=log:1e-4:1e-1")
    rng = random.Random(0)
    draws = [p.sample(rng) for _ in range(2000)]
    assert min(draws) >= 1e-4 and max(draws) <= 1e-1
    below = sum(d < 10**-2.5 for d in draws) / len(draws)  # log-uniform: half the draws below the log midpoint
    assert below == pytest.approx(0.5, abs=0.05)
    fine = p.narrowed(1e-3)
    assert fine.lo == pytest.approx(1e-3 / 10 ** (3 * 0.125)) and fine.hi == pytest.approx(1e-3 * 10 ** (3 * 0.125))
    edge = p.narrowed(1e-4)
    assert edge.lo == pytest.approx(1e-4) and edge.hi < 1e-3  # kept inside the coarse range
    assert {Param.parse("d=choice:a|b").sample(rng) for _ in range(50)} == {"a", "b"}
    assert all(isinstance(Param.parse("w=int:1:4").sample(rng), int) for _ in range(10))
    for bad in ("lr", "lr=log:0:1", "lr=log:1e-1:1e-4", "lr=gauss:1:2", "lr=log:a:b", "o=choice:x"):
        with pytest.raises(UsageError):
            Param.parse(bad)


def test_search_runs_coarse_then_fine_trials_and_reports_the_best(in_tmp, capsys):
    assert main(["search", "cnn-digits", "--param", "lr=log:1e-4:1e-1", "--param", "weight_decay=log:1e-6:1e-2",
                 "--trials", "2", "--rounds", "2", "--name", "s", "--wandb", "disabled", "--epochs", "1",
                 *TINY_CNN]) == 0  # fmt: skip
    out = capsys.readouterr()
    result = last_json(out.out)
    assert len(result["trials"]) == 4 and "Round 2 of 2 (fine)" in out.err
    accs = [t["val/acc"] for t in result["trials"]]
    assert result["best_metric"] == max(accs)
    rows = [json.loads(line) for line in (in_tmp / "runs/s/trials.jsonl").read_text().splitlines()]
    best_coarse = max(rows[:2], key=lambda r: r["metric"])["params"]["lr"]
    for r in rows[2:]:  # the fine round samples within a quarter of the coarse log-range around the best
        assert abs(math.log10(r["params"]["lr"] / best_coarse)) <= 3 * 0.125 + 1e-6
    assert (in_tmp / "runs/s/trial-03/config.json").is_file()  # every trial is a run


@pytest.mark.parametrize("args,message", [
    (["--param", "lr=log:1e-4:1e-1", "--rank-by", "val/nope"], "--rank-by 'val/nope' is not among the figures"),
    (["--param", "nope=log:1e-4:1e-1"], "unknown option --nope"),
    (["--param", "lr=log:1e-4"], "needs two numbers"),
    ([], "give at least one --param"),
    (["--param", "lr=log:1e-4:1e-1", "--trials", "0"], "--trials 0 must be at least 1"),
])  # fmt: skip
def test_search_mistakes_get_one_line(args, message, in_tmp, capsys):
    assert main(["search", "cnn-digits", "--wandb", "disabled", "--epochs", "1", "--trials", "1", "--rounds", "1",
                 *TINY_CNN, *args]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ----------------------------------------------------------------------------- recipes


def test_every_classifier_recipe_validates_and_builds():
    for name in ("cnn-digits", "twolayer-digits", "resnet-digits", "cnn-mnist", "twolayer-cifar10", "cnn-cifar10",
                 "resnet-cifar10"):  # fmt: skip
        cfg = get_recipe(name).config
        shape = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[cfg.dataset]
        model = classify.build(cfg, shape, 10, 255)
        assert model(torch.zeros(2, *shape, dtype=torch.uint8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="init"):
        apply_overrides(get_recipe("cnn-digits").config, ["--init", "he"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe,band", [("cnn-digits", 0.98), ("twolayer-digits", 0.92), ("resnet-digits", 0.97)])
def test_neural_classifier_bands(recipe, band, in_tmp, capsys):
    assert main(["train", recipe, "--name", "b", "--wandb", "disabled"]) == 0
    figures = last_json(capsys.readouterr().out)
    assert figures["test/acc"] >= band, figures


def test_an_early_stopped_run_stays_stopped_on_resume(in_tmp, capsys):
    args = ["--wandb", "disabled", "--epochs", "10", "--patience", "2", "--lr", "1e-9", *TINY_CNN]
    assert main(["train", "cnn-digits", "--name", "e", *args]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "runs/e"]) == 0  # the same patience: nothing more to train
    out = capsys.readouterr()
    assert "stopped early at epoch 3" in out.err and last_json(out.out)["epochs"] == 3
    assert len(metrics(in_tmp / "runs/e")) == 3


def test_a_run_from_before_best_weights_and_augment_still_evaluates_and_resumes(in_tmp, capsys):
    from fovea import checkpoint

    assert main(["train", "cnn-digits", "--name", "old", "--wandb", "disabled", "--epochs", "2", *TINY_CNN]) == 0
    run = in_tmp / "runs/old"
    doc = json.loads((run / "config.json").read_text())  # the config as it was written before
    del doc["config"]["augment"], doc["config"]["patience"], doc["config"]["train_limit"]
    doc["config"]["augment_shift"] = 1
    (run / "config.json").write_text(json.dumps(doc))
    (ckpt,) = checkpoint.list_checkpoints(run / "checkpoints")
    state, meta = checkpoint.load(ckpt)
    state["objects"]["model"] = state["objects"].pop("best")  # and its checkpoint held only `model`
    checkpoint.save(ckpt, state, meta)
    capsys.readouterr()
    assert main(["eval", "runs/old", "--wandb", "disabled"]) == 0
    assert 0 <= last_json(capsys.readouterr().out)["test/acc"] <= 1
    assert main(["train", "--resume", "runs/old", "--epochs", "3"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["augment"] == "shift:1"


def test_search_values_stay_inside_their_range_and_a_value_the_model_refuses_is_one_line(in_tmp, capsys):
    import random

    rng = random.Random(1)
    assert all(0.9 <= Param.parse("m=uniform:0.9:0.9999").sample(rng) <= 0.9999 for _ in range(500))
    assert main(["search", "resnet-digits", "--param", "backbone.depth=int:8:9", "--trials", "4", "--rounds", "1",
                 "--name", "s", "--wandb", "disabled", "--epochs", "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "depth=9 does not fit" in err and "Traceback" not in err
    assert not any(p.name.startswith("trial") and not (p / "summary.json").exists()
                   for p in (in_tmp / "runs/s").iterdir())  # fmt: skip
