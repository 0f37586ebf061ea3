"""Trained models, ready to use: what ``fovea.load(run_dir)`` returns, one class per family.

- ``Agent``: ``predict(obs, deterministic=True)`` (numpy in, actions out, as stable-baselines3's) and
  ``evaluate(episodes)`` (full games, seeded apart from training); ``make_env()`` and ``watch()`` to see it play.
- ``Generator``: ``sample(n, seed=)`` (uint8 images) and, for the models with a likelihood, ``nll(images)``.
- ``Classifier``: ``predict(images)`` (class indices) and ``predict_proba(images)``.
- ``Detector``: ``predict(images)``: per image a dict of ``boxes`` (m, 4) xyxy in pixels, ``labels`` and
  ``scores``, as torchvision's detection models return.

Images are uint8 (B, C, H, W), or one (C, H, W), in 0..``max_value`` as the run's data set holds them (16 for
the 8x8 digits, 255 for 8-bit images); numpy arrays or tensors. Each family's weights are restored with its own
task module's functions; ``network`` picks ``final`` (the last weights) or ``best`` (kept by validation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fovea.errors import UsageError
from fovea.run import Run

NETWORKS = ("final", "best")


class Trained:
    """What every loaded model has: ``module`` (the torch network, in eval mode), ``config``, ``recipe``,
    ``network`` (final or best), ``device`` and ``run_dir``."""

    def __init__(self, module: nn.Module, cfg, run: Run, network: str):
        self.module, self.config, self.recipe, self.network = module, cfg, run.recipe, network
        self.device, self.run_dir, self._run = run.device, run.dir, run

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.recipe}, {self.network} network of {self.run_dir}, on {self.device})"


class ImageModel(Trained):
    """A model of images of ``shape`` (C, H, W) with pixels in 0..``max_value``."""

    def __init__(self, module: nn.Module, cfg, run: Run, network: str, shape, max_value: int):
        super().__init__(module, cfg, run, network)
        self.shape, self.max_value = tuple(shape), int(max_value)

    def images(self, images: Any) -> torch.Tensor:
        """``images`` as a (B, C, H, W) tensor on the model's device, checked against the model's input."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        x = x[None] if x.ndim == len(self.shape) else x
        if tuple(x.shape[1:]) != self.shape or x.is_floating_point() or x.is_complex():
            raise UsageError(f"{self.recipe} takes integer images (B, {', '.join(map(str, self.shape))}) in "
                             f"0..{self.max_value}; got {x.dtype} {tuple(x.shape)}")  # fmt: skip
        if len(x) and (int(x.min()) < 0 or int(x.max()) > self.max_value):
            raise UsageError(f"{self.recipe} takes pixels in 0..{self.max_value}; these reach {int(x.max())} (8-bit "
                             f"images: scale them, x * {self.max_value} // 255)")  # fmt: skip
        return x.to(self.device, torch.uint8)


# ----------------------------------------------------------------------------- agents


class Agent(Trained):
    """A trained agent: acts on observations of its env (a CartPole state vector, 4 stacked 84x84 Atari frames)."""

    def __init__(self, module: nn.Module, cfg, run: Run, network: str, obs_shape: tuple[int, ...]):
        super().__init__(module, cfg, run, network)
        self.obs_shape = tuple(obs_shape)
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self._state = None  # a recurrent policy's state between calls

    @torch.inference_mode()
    def predict(self, obs: Any, deterministic: bool = True, episode_start: Any = None) -> int | np.ndarray:
        """The action for one observation (an int) or for a batch (B, *obs_shape) (an int64 array (B,)).

        ``deterministic``: the greedy action; otherwise DQN acts epsilon-greedily with its ``eval_epsilon`` and a
        policy samples its action. A recurrent policy carries its state between calls: ``episode_start`` (B,)
        marks the observations that begin an episode (``reset()`` forgets every state)."""
        from fovea.agents.policy import sample

        o = torch.as_tensor(np.asarray(obs), device=self.device)
        single = tuple(o.shape) == self.obs_shape
        o = o[None] if single else o
        if tuple(o.shape[1:]) != self.obs_shape:
            raise UsageError(f"{self.recipe} acts on observations {self.obs_shape} (or a batch (B, "
                             f"{', '.join(map(str, self.obs_shape))})); got {tuple(o.shape)}")  # fmt: skip
        if hasattr(self.module, "act"):  # a Q-network
            eps = 0.0 if deterministic else self.config.eval_epsilon
            actions = self.module.act(o, eps, self._gen)
        else:
            n = len(o)
            fresh = self._state is None or self._state[0].shape[1] != n
            if episode_start is not None:
                starts = torch.as_tensor(np.asarray(episode_start, bool)).reshape(n)
            else:
                starts = torch.full((n,), fresh)  # a new state begins an episode
            if fresh:
                self._state = self.module.initial_state(n, self.device)
            logits, _, self._state = self.module(o[:, None], self._state, starts.to(self.device).reshape(n, 1))
            actions = sample(logits[:, 0], deterministic, self._gen)
        actions = actions.cpu().numpy().astype(np.int64)
        return int(actions[0]) if single else actions

    def reset(self) -> None:
        """Forget a recurrent policy's state (a new episode starts on the next ``predict``)."""
        self._state = None

    def evaluate(self, episodes: int | None = None) -> dict:
        """Scores over ``episodes`` full games (default: the config's ``eval_episodes``) on fresh seeds, as
        ``fovea eval`` plays them: ``eval/mean_return``, ``eval/std_return``, min, max and ``eval/episodes``."""
        if episodes is not None and episodes < 1:
            raise UsageError(f"episodes = {episodes} must be at least 1")
        from fovea.agents import a2c, dqn

        family = dqn if hasattr(self.module, "act") else a2c
        return family.evaluate_policy(self.config, self.module, self.device, episodes)

    def make_env(self, seed: int = 0):
        """One gymnasium env of this agent's game, as it sees it (Atari: the full-game evaluation env, frames
        stacked), rendering RGB frames (``env.render()``)."""
        from fovea.agents import watch

        return watch.render_env(self.config, seed)[0]

    def watch(self, seed: int | None = None) -> Path:
        """Play one full game greedily and write it as MP4 to the run's videos/ folder; returns its path."""
        from fovea.agents import watch

        self.reset()
        figures = watch.record(self.config, self._run, lambda obs, starts: np.atleast_1d(
            self.predict(obs, episode_start=starts)), step=self._run.step, seed=seed)  # fmt: skip
        return Path(figures["video"])


def _agent(recipe, cfg, run: Run, network: str | None) -> Agent:
    from fovea.agents import a2c, dqn
    from fovea.agents.base import make_env
    from fovea.agents.evaluation import load_network

    network = network or "final"  # what the run's eval/* figures score
    is_q = isinstance(cfg, dqn.DQNConfig)
    net = load_network(cfg, run, dqn.build if is_q else a2c.build, network, key="qnet" if is_q else "net")
    env = make_env(cfg, 1, cfg.seed)
    shape = env.single_observation_space.shape
    env.close()
    return Agent(net, cfg, run, network, shape)


# ----------------------------------------------------------------------------- generative models


class Generator(ImageModel):
    """A trained generative model: draws images, and scores them where it has a likelihood (``nll_kind``:
    ``exact`` for PixelCNN and PixelRNN, ``estimate`` for the VAE's IWAE bound, None for an autoencoder or GAN)."""

    @property
    def nll_kind(self) -> str | None:
        return self.module.nll_kind

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, *, temperature: float = 1.0, label: int | None = None) -> torch.Tensor:
        """``n`` uint8 images (n, C, H, W) on the CPU; the same ``seed`` gives the same images on any device.
        ``temperature`` below 1 draws closer to the mode; ``label`` picks the class of a class-conditional model
        (by default its classes take turns)."""
        from fovea.generative.evaluation import sample_many

        if n < 1:
            raise UsageError(f"n = {n} must be at least 1")
        if temperature < 0:
            raise UsageError(f"temperature = {temperature} must be >= 0 (1: the model's distribution, 0: the mode)")
        k = self.module.num_classes
        if label is not None and not 0 <= label < k:
            raise UsageError(f"label = {label}: {self.recipe} takes " + (f"labels 0..{k - 1}" if k else "none"))
        gen = torch.Generator().manual_seed(seed)
        if label is None and temperature == 1.0:
            return sample_many(self.module, n, gen).cpu()
        labels = torch.full((n,), label, device=self.device) if label is not None else None
        if labels is None and k:
            labels = (torch.arange(n) % k).to(self.device)
        return self.module.sample(n, generator=gen, temperature=temperature, labels=labels).cpu()

    @torch.no_grad()
    def nll(self, images: Any, labels: Any = None) -> torch.Tensor:
        """-log p(image) in nats per image (B,) on the CPU: exact or an upper bound, as ``nll_kind`` says."""
        if self.nll_kind is None:
            raise UsageError(f"{self.recipe} ({type(self.module).__name__}) has no likelihood; nll is for the VAE, "
                             f"PixelCNN and PixelRNN")  # fmt: skip
        x = self.images(images)
        y = torch.as_tensor(np.asarray(labels), device=self.device).reshape(len(x)) if labels is not None else None
        return self.module.nll(x, y).float().cpu()


def _generator(recipe, cfg, run: Run, network: str | None) -> Generator:
    from fovea.generative import base
    from fovea.vision.classify import restore_model

    train = base.load_split(cfg, "train", run)
    model = base.build_model(cfg, train).to(run.device)
    if len(model.players) > 1:  # a GAN: no validation loss to choose a best by
        network = _only_final(recipe, network, f"a {type(model).__name__} has no validation loss to choose by")
    network = network or "best"  # the lowest validation loss, what `fovea sample` draws from
    restore_model(run, model, "best" if network == "best" else "model")
    if network == "final":  # what training does to the kept model at its end (an autoencoder fits its codes)
        model.after_training(train.to(run.device))
    return Generator(model, cfg, run, network, train.shape, train.max_value)


# ----------------------------------------------------------------------------- classifiers


class Classifier(ImageModel):
    """A trained classifier (a network, a linear model or a kNN); ``classes`` names its outputs."""

    def __init__(self, module: nn.Module, cfg, run: Run, network: str, data):
        super().__init__(module, cfg, run, network, data.shape, data.max_value)
        self.classes = tuple(data.classes)

    @torch.inference_mode()
    def predict(self, images: Any) -> torch.Tensor:
        """Class indices (B,) on the CPU (``classes[i]`` names one)."""
        return self.module(self.images(images)).argmax(1).cpu()

    @torch.inference_mode()
    def predict_proba(self, images: Any) -> torch.Tensor:
        """Class probabilities (B, K) on the CPU: the softmax of the logits (a kNN: each class's share of the
        votes). An SVM's scores are margins, not probabilities, and are refused."""
        if getattr(self.config, "loss", None) == "svm":
            raise UsageError(f"{self.recipe} is an SVM: its scores are margins, not probabilities (use predict, or "
                             f"a softmax model such as softmax-digits)")  # fmt: skip
        return torch.softmax(self.module(self.images(images)).float(), 1).cpu()


def _classifier(recipe, cfg, run: Run, network: str | None) -> Classifier:
    from fovea.vision import classify, data, knn, linear

    test = data.load(cfg.dataset, "test", data_dir=getattr(cfg, "data_dir", "") or None)
    if isinstance(cfg, classify.ClassifierConfig):  # keeps the weights of the best validation accuracy
        network = network or "best"
        model = classify.build(cfg, test.shape, len(test.classes), test.max_value, pretrained=False).to(run.device)
        if network == "best":  # (a run from before best weights were kept: its last ones)
            classify.restore_model(run, model, "best", fallback={"best": "model"})
        else:
            classify.restore_model(run, model, "model")
    else:
        network = _only_final(recipe, network, "it keeps its last weights")
        model = (linear if isinstance(cfg, linear.LinearConfig) else knn).load_trained(cfg, run, test)
    return Classifier(model, cfg, run, network, test)


# ----------------------------------------------------------------------------- detectors


class Detector(ImageModel):
    """A trained detector; ``classes`` names its labels."""

    def __init__(self, module: nn.Module, cfg, run: Run, network: str, shape, max_value: int, classes):
        super().__init__(module, cfg, run, network, shape, max_value)
        self.classes = tuple(classes)

    def predict(self, images: Any, threshold: float = 0.5) -> list[dict[str, torch.Tensor]]:
        """Per image a dict of ``boxes`` (m, 4) as (x1, y1, x2, y2) pixels of the model's input, ``labels`` (m,)
        (``classes[i]`` names one) and ``scores`` (m,), on the CPU, the boxes scored below ``threshold`` left out
        (``fovea detect``'s default 0.5; mAP is measured from 0.05)."""
        from fovea.vision.detection_metrics import detect_all

        if not 0 <= threshold < 1:
            raise UsageError(f"threshold = {threshold} must be in [0, 1)")
        return detect_all(self.module, self.images(images), threshold)


def _detector(recipe, cfg, run: Run, network: str | None) -> Detector:
    from fovea.vision import classify, detect
    from fovea.vision import detection_data as ddata

    network = network or "best"  # keeps the weights of the best validation mAP
    io = detect.model_io(cfg, run)
    shape = (io.channels, cfg.size, cfg.size)
    like = ddata.DetectionData(torch.zeros(1, *shape, dtype=torch.uint8), [], [], io.max_value, io.classes)
    model = detect.build(cfg, like, pretrained=False).to(run.device)
    classify.restore_model(run, model, "best" if network == "best" else "model")
    return Detector(model, cfg, run, network, shape, io.max_value, io.classes)


# ----------------------------------------------------------------------------- by family

LOADERS = (("fovea.agents.base", "AgentConfig", _agent), ("fovea.generative.base", "GenConfig", _generator),
           ("fovea.vision.classify", "ClassifierConfig", _classifier), ("fovea.vision.linear", "LinearConfig",
           _classifier), ("fovea.vision.knn", "KNNConfig", _classifier),
           ("fovea.vision.detect", "DetectorConfig", _detector))  # fmt: skip


def load(recipe, cfg, run: Run, network: str | None = None) -> Trained:
    """The trained model of ``run`` (opened read-only), of the family of ``cfg``: the ``final`` or ``best``
    network, by default the one the run's figures describe."""
    import importlib

    if network is not None and network not in NETWORKS:
        raise UsageError(f"network = {network!r}: choose final (the last weights) or best (kept by validation)")
    for module, name, loader in LOADERS:
        if isinstance(cfg, getattr(importlib.import_module(module), name)):
            return loader(recipe, cfg, run, network)
    raise UsageError(f"{recipe.name}: fovea.load has no model for {type(cfg).__name__} runs")


def _only_final(recipe, network: str | None, why: str) -> str:
    if network == "best":
        raise UsageError(f"{recipe.name} keeps no best network ({why}); load network='final'")
    return "final"
