"""The Python API end to end: fovea.train, fovea.load and each family's model, fovea.config, the listings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fovea
from fovea.vision import data

TINY_CNN = dict(backbone={"name": "convnet", "widths": (8, 16)}, dropout=0.0)


def test_train_gives_the_run_its_figures_and_a_classifier_that_scores_them(in_tmp):
    result = fovea.train("cnn-digits", name="c", wandb="disabled", epochs=2, **TINY_CNN)
    assert result.run_dir.resolve() == (in_tmp / "runs" / "c").resolve()
    assert json.loads((result.run_dir / "summary.json").read_text())["test/acc"] == result.figures["test/acc"]
    config = json.loads((result.run_dir / "config.json").read_text())["config"]
    assert config["backbone"]["options"]["widths"] == [8, 16]
    model = result.model  # the best weights: the ones the summary's test figures were measured on
    test = data.load("digits", "test")
    predicted = model.predict(test.images)
    assert predicted.shape == (len(test),) and predicted.dtype == torch.int64
    assert (predicted == test.labels).float().mean().item() == pytest.approx(result.figures["test/acc"], abs=1e-6)
    proba = model.predict_proba(test.images[:5].numpy())  # numpy in as well
    assert proba.shape == (5, 10) and torch.allclose(proba.sum(1), torch.ones(5))
    assert torch.equal(proba.argmax(1), predicted[:5])
    assert model.predict(test.images[0]).shape == (1,)  # one image (C, H, W)
    assert model.classes == test.classes and model.network == "best"


def test_images_of_another_scale_or_shape_are_refused_with_what_is_expected(in_tmp):
    model = fovea.train("cnn-digits", name="c", wandb="disabled", epochs=1, **TINY_CNN).model
    with pytest.raises(fovea.UsageError, match=r"0\.\.16.*reach 255"):
        model.predict(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8))
    with pytest.raises(fovea.UsageError, match=r"\(B, 1, 8, 8\).*\(2, 3, 8, 8\)"):
        model.predict(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(fovea.UsageError, match="integer images"):
        model.predict(torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize(("overrides", "named"), [({"lr": -1.0}, "lr"), ({"lrr": 1e-3}, "did you mean lr"),
                                                  ({"epochs": "many"}, "epochs"), ({"backbone": "resnett"}, "resnet"),
                                                  ({"backbone.widthz": (8,)}, "widthz")])  # fmt: skip
def test_a_bad_override_raises_config_error_naming_the_field_and_writes_nothing(in_tmp, overrides, named):
    with pytest.raises(fovea.ConfigError, match=named):
        fovea.train("cnn-digits", wandb="disabled", **overrides)
    assert not (in_tmp / "runs").exists()


def test_config_recipes_and_backbones_list_what_exists():
    cfg = fovea.config("cnn-digits", lr=3e-3, backbone="resnet", **{"backbone.depth": 8})
    assert cfg.lr == 3e-3 and cfg.backbone.name == "resnet" and cfg.backbone.options == {"depth": 8}
    assert fovea.config("ppo-cartpole", hidden_size=32).hidden_size == 32
    assert {"cnn-digits", "ppo-cartpole", "vae-digits", "detect-digits"} <= set(fovea.recipes())
    assert {"convnet", "resnet", "mlp"} <= set(fovea.backbones()) and all(fovea.backbones().values())
    from fovea.config import Config  # fovea.config is still the module, and so is fovea.backbones

    assert isinstance(cfg, Config) and fovea.config.Config is Config and callable(fovea.backbones.build)
    with pytest.raises(fovea.ConfigError, match="unknown recipe 'cnn-digitz'; did you mean cnn-digits"):
        fovea.config("cnn-digitz")


def test_an_agent_predicts_like_sb3_and_evaluates_on_the_games_its_figures_came_from(in_tmp):
    result = fovea.train("ppo-cartpole", name="p", wandb="disabled", total_steps=1024, eval_every=0, eval_episodes=3)
    agent = result.model
    env = agent.make_env()
    obs, _ = env.reset(seed=0)
    action = agent.predict(obs)
    assert isinstance(action, int) and env.action_space.contains(action)
    batch = agent.predict(np.stack([obs, obs, obs]))
    assert batch.shape == (3,) and batch.dtype == np.int64 and (batch == action).all()  # greedy: the same action
    env.close()
    scores = agent.evaluate()  # the config's eval_episodes on the fresh games the summary's eval/* figures played
    assert scores["eval/mean_return"] == result.figures["eval/mean_return"] and scores["eval/episodes"] == 3
    best = fovea.load(result.run_dir, network="best")
    assert best.evaluate()["eval/mean_return"] == result.figures["eval/best_mean_return"]
    with pytest.raises(fovea.UsageError, match=r"observations \(4,\)"):
        agent.predict(np.zeros(5, np.float32))
    with pytest.raises(fovea.UsageError, match="final .* or best"):
        fovea.load(result.run_dir, network="latest")


def test_a_generator_samples_seeded_uint8_images_and_scores_them(in_tmp):
    result = fovea.train("vae-digits", name="v", wandb="disabled", epochs=1, iwae_samples=2)
    gen = result.model
    images = gen.sample(6, seed=1)
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.uint8 and int(images.max()) <= gen.max_value == 16
    assert torch.equal(images, gen.sample(6, seed=1)) and not torch.equal(images, gen.sample(6, seed=2))
    nll = gen.nll(images)
    assert nll.shape == (6,) and torch.isfinite(nll).all() and gen.nll_kind == "estimate"
    assert fovea.load(result.run_dir, network="final").sample(2).shape == (2, 1, 8, 8)


def test_best_is_refused_where_a_run_keeps_only_its_last_weights(in_tmp):
    fovea.train("softmax-digits", name="s", wandb="disabled", epochs=1)
    with pytest.raises(fovea.UsageError, match="softmax-digits keeps no best network .*network='final'"):
        fovea.load("runs/s", network="best")
    model = fovea.load("runs/s")
    assert model.network == "final" and model.predict_proba(data.load("digits", "test").images[:3]).shape == (3, 10)
    with pytest.raises(fovea.RunError, match="not a run folder"):
        fovea.load("runs/nothing")


def test_load_takes_a_wandb_model_artifact_reference(in_tmp, monkeypatch):
    fovea.train("softmax-digits", name="s", wandb="disabled", epochs=1)
    fetched = []

    def fetch(ref):  # stands in for the download: the artifact laid out as a run folder
        fetched.append(ref)
        return in_tmp / "runs" / "s"

    monkeypatch.setattr("fovea.tracking.fetch_artifact", fetch)
    model = fovea.load("me/fovea/run-s-model:latest")
    assert fetched == ["me/fovea/run-s-model:latest"]
    assert model.predict(data.load("digits", "test").images[:2]).shape == (2,)


def test_train_resumes_a_run_with_new_overrides(in_tmp):
    fovea.train("cnn-digits", name="c", wandb="disabled", epochs=1, **TINY_CNN)
    result = fovea.train(resume="runs/c", wandb="disabled", epochs=2)
    assert result.figures["epochs"] == 2
    with pytest.raises(fovea.UsageError, match="either a recipe or --resume"):
        fovea.train("cnn-digits", resume="runs/c")


@pytest.mark.slow
def test_a_dqn_agent_and_a_detector_load_with_their_methods(in_tmp):
    result = fovea.train("dqn-cartpole", name="d", wandb="disabled", total_steps=400, learning_starts=100,
                         eval_every=0, eval_episodes=2)  # fmt: skip
    agent = result.model
    assert agent.evaluate()["eval/mean_return"] == result.figures["eval/mean_return"]
    obs = np.zeros(4, np.float32)
    assert agent.predict(obs) == agent.predict(obs) and agent.predict(np.stack([obs] * 5)).shape == (5,)
    assert agent.watch().suffix == ".mp4"
    detector = fovea.train("detect-digits", name="det", wandb="disabled", epochs=1, train_images=64, eval_images=16,
                           batch_size=16).model  # fmt: skip
    found = detector.predict(torch.zeros(2, 1, 64, 64, dtype=torch.uint8), threshold=0.0)
    assert len(found) == 2 and set(found[0]) == {"boxes", "labels", "scores"} and found[0]["boxes"].shape[1:] == (4,)
    assert detector.classes == tuple(str(d) for d in range(10))
