"""Configs: validated on construction with messages naming the field; overrides; recipes; CLI errors."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fovea.cli import main
from fovea.config import BackboneSpec, apply_overrides, from_dict, get_recipe, recipes
from fovea.errors import ConfigError
from fovea.vision.classify import ClassifierConfig


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"lr": -0.1}, r"ClassifierConfig\.lr = -0\.1 is not allowed: it must be > 0"),
        ({"epochs": 0}, r"ClassifierConfig\.epochs = 0 .* >= 1"),
        ({"epochs": "ten"}, r"ClassifierConfig\.epochs = 'ten' is not allowed: expected an integer"),
        ({"optimizer": "adm"}, r"ClassifierConfig\.optimizer = 'adm' .* one of 'sgd', 'adam'.*did you mean adam"),
        ({"dropout": 1.5}, r"ClassifierConfig\.dropout = 1\.5 .* < 1"),
        ({"dataset": "digit"}, r"dataset = 'digit' .* did you mean digits"),
        ({"lr": float("nan")}, r"ClassifierConfig\.lr = nan .* expected a number"),
        ({"backbone": {"name": "resnt"}}, r"backbone = 'resnt' .* did you mean resnet"),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ClassifierConfig(**kwargs)


def test_backbone_options_are_checked_against_the_backbone():
    with pytest.raises(ConfigError, match="has no option 'depth'; it takes: widths"):
        BackboneSpec(name="convnet", options={"depth": 3})
    with pytest.raises(ConfigError, match=r"backbone\.depth = 'deep'"):
        BackboneSpec(name="resnet", options={"depth": "deep"})


def test_overrides():
    base = get_recipe("cnn-digits").config
    cfg = apply_overrides(base, ["--lr", "0.01", "--batch-size=32", "--backbone.widths", "16,32", "--optimizer", "sgd"])
    assert (cfg.lr, cfg.batch_size, cfg.backbone.options["widths"], cfg.optimizer) == (0.01, 32, (16, 32), "sgd")
    cfg = apply_overrides(base, ["--backbone.widths", "4", "8", "--epochs", "2"])  # tuples as several words
    assert cfg.backbone.options["widths"] == (4, 8) and cfg.epochs == 2
    # choosing another backbone starts from its defaults, then applies its own options
    cfg = apply_overrides(base, ["--backbone", "resnet", "--backbone.depth", "8"])
    assert cfg.backbone == BackboneSpec(name="resnet", options={"depth": 8})
    assert base.backbone.options["widths"] == (64, 128)  # the recipe itself is untouched


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--lrr", "0.1"], "unknown option --lrr; did you mean --lr"),
        (["--lr"], "--lr needs a value"),
        (["--lr", "fast"], r"--lr = 'fast' is not allowed: expected a number"),
        (["--lr", "-1"], "lr = -1.0 is not allowed: it must be > 0"),
        (["--backbone.depht", "3"], "has no option 'depht'"),
        (["positional"], "unexpected argument 'positional'"),
    ],
)
def test_bad_overrides(args, pattern):
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides(get_recipe("cnn-digits").config, args)


def test_config_json_round_trip():
    cfg = get_recipe("cnn-digits").config
    assert from_dict(ClassifierConfig, cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="no field 'lrate'; did you mean lr"):
        from_dict(ClassifierConfig, {**cfg.to_dict(), "lrate": 1})


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown recipe 'cnn-digit'; did you mean cnn-digits"):
        get_recipe("cnn-digit")


def test_every_recipe_has_a_description_and_a_valid_config():
    assert "cnn-digits" in recipes()
    for r in recipes().values():
        assert r.description and dataclasses.is_dataclass(r.config)
        assert type(r.config)(**{f.name: getattr(r.config, f.name) for f in dataclasses.fields(r.config)}) == r.config


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["train", "cnn-digit"], "did you mean cnn-digits"),
        (["train", "cnn-digits", "--lrr", "1"], "did you mean --lr"),
        (["train", "cnn-digits", "--epochs", "-3"], "epochs = -3"),
        (["train", "cnn-digits", "--backbone", "resnt"], "did you mean resnet"),
        (["train", "cnn-digits", "--device", "cuda:7"], "--device"),
        (["train", "cnn-digits", "--name", "../escape"], "not a valid run name"),
        (["train"], "name a recipe"),
        (["eval", "runs/missing"], "not a run folder"),
        (["train", "--resume", "runs/missing"], "not a run folder"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(argv, pattern, capsys, in_tmp):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert pattern in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.strip().startswith("error:")
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").iterdir())  # nothing half-created


def test_recipe_help_lists_fields_with_their_docs(capsys):
    assert main(["train", "cnn-digits", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--lr" in out and "Peak learning rate" in out and "--backbone" in out


words = st.sampled_from(
    [
        "--lr",
        "--epochs",
        "--batch-size",
        "--optimizer",
        "--backbone",
        "--backbone.widths",
        "--dropout",
        "--bogus",
        "--seed",
        "0",
        "-1",
        "1e-3",
        "adam",
        "resnet",
        "x",
        "3,4",
        "nan",
        "",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(words, max_size=6))
def test_random_overrides_give_a_config_or_a_clean_error(args):
    try:
        cfg = apply_overrides(get_recipe("cnn-digits").config, args)
    except ConfigError as e:
        assert str(e)
    else:
        assert isinstance(cfg, ClassifierConfig) and cfg.lr > 0 and cfg.epochs >= 1


def test_overrides_are_checked_together_whatever_their_order():
    from fovea.agents.ppo import PPOConfig

    lstm = ["--recurrent", "lstm", "--shared-backbone", "true"]
    for order in (["--num-envs", "2", "--num-minibatches", "2"], ["--num-minibatches", "2", "--num-envs", "2"]):
        cfg = apply_overrides(PPOConfig(), [*lstm, *order])
        assert (cfg.num_envs, cfg.num_minibatches) == (2, 2)
    with pytest.raises(ConfigError, match="num_minibatches = 3 is more than num_envs = 2"):
        apply_overrides(PPOConfig(), [*lstm, "--num-minibatches", "3", "--num-envs", "2"])
