"""Linear classifiers on pixels or image features: a multiclass SVM or softmax, trained by minibatch SGD.

Follows the notes (CS231n): 2.6 linear classification (scores f(x, W) = W x + b, each row of W a class
template), 3.2 the multiclass SVM (hinge) loss L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + 1), 3.3 the
regularised objective L = 1/N sum_i L_i + lambda R(W) with R the L2 or L1 norm of W, 3.4 the softmax
(cross-entropy) loss, 3.6 minibatch stochastic gradient descent, 3.7 image features (HOG, colour histogram:
vision/features.py), and 6.2 preprocessing: features are zero-centred and divided by their standard deviation
on the training set (CS231n's features notebook; raw pixels are only centred: the notes subtract the mean image),
with the bias b kept apart from W and not regularised.

Features are extracted once per split and kept in memory; an epoch only multiplies them by W.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fovea.config import Config, param, register_recipe, register_task
from fovea.errors import ConfigError
from fovea.run import Run
from fovea.vision import classify
from fovea.vision import data as vdata
from fovea.vision import features as vfeat
from fovea.vision.explain import explainer


def svm_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The multiclass SVM loss (notes 3.2): mean over the batch of sum_{j != y} max(0, s_j - s_y + margin)."""
    correct = scores.gather(1, labels[:, None])  # (B, 1) s_y
    margins = (scores - correct + margin).clamp(min=0).scatter(1, labels[:, None], 0.0)  # (B, K), 0 at j = y
    return margins.sum(1).mean()


def softmax_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The softmax loss (notes 3.4): mean over the batch of -log(e^{s_y} / sum_j e^{s_j})."""
    return (scores.logsumexp(1) - scores.gather(1, labels[:, None]).squeeze(1)).mean()


def penalty(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """R(W) of the notes (3.3): sum of W_ij^2 (``l2``) or of |W_ij| (``l1``)."""
    return weight.square().sum() if kind == "l2" else weight.abs().sum()


LOSSES = {"svm": svm_loss, "softmax": softmax_loss}


@dataclass(kw_only=True)
class LinearConfig(Config):
    """A linear classifier (scores = W x + b) on pixels or image features, trained by minibatch SGD."""

    dataset: str = "digits"
    """digits (embedded: scikit-learn's 8x8 handwritten digits), mnist, fashion-mnist, cifar10, folder:PATH..."""
    data_dir: str = ""
    """Where downloaded data sets live (default: $FOVEA_DATA, else ./data)."""
    features: str = "pixels"
    """What x is: pixels, hog, color, or several joined by + (hog+color); centred on the training set, hog and
    color also divided by their std."""
    loss: Literal["svm", "softmax"] = "softmax"
    """Data loss: the multiclass SVM (hinge) loss or the softmax (cross-entropy) loss."""
    reg: Literal["l2", "l1"] = "l2"
    """Regulariser R(W): sum of squares (l2) or of absolute values (l1) of W (the bias is not regularised)."""
    reg_strength: float = param(1e-3, ge=0)
    """lambda in L = mean data loss + lambda R(W)."""
    lr: float = param(0.5, gt=0)
    """SGD learning rate of the first epoch."""
    lr_decay: float = param(1.0, gt=0, le=1)
    """The learning rate is multiplied by this after every epoch (1: constant)."""
    momentum: float = param(0.0, ge=0, lt=1)
    """SGD momentum (0: the notes' plain minibatch SGD)."""
    batch_size: int = param(200, ge=1)
    """Minibatch size."""
    epochs: int = param(20, ge=1)
    """Passes over the training split."""
    train_limit: int = param(0, ge=0)
    """Train on the first this many training images only (0: all)."""
    seed: int = 0
    """Seeds the initial weights and the minibatch order."""
    checkpoint_every: int = param(5, ge=1)
    """Epochs between checkpoints (one is also written at the end and on Ctrl-C / SIGTERM)."""

    def validate(self) -> None:
        vdata.check_dataset_field(self)
        try:
            vfeat.parse(self.features)
        except ConfigError as e:
            raise ConfigError(f"LinearConfig.features = {self.features!r} is not allowed: {e}") from None


class LinearClassifier(nn.Module):
    """Scores W x + b of the standardised feature vector x of an image.

    Args:
        features: feature spec (``pixels``, ``hog+color``, ...; see vision/features.py).
        in_shape: the images' (C, H, W).
        num_classes: K, the number of classes.
        max_value: largest pixel value of the uint8 input (16 for digits, 255 for 8-bit images).
        loss: ``svm`` or ``softmax``.
        reg: ``l2`` or ``l1``; ``reg_strength`` is lambda.
        generator: draws the initial W ~ N(0, 0.001^2) (CS231n); b starts at 0.
    """

    def __init__(self, features: str, in_shape: tuple[int, int, int], num_classes: int, max_value: int,
                 loss: str = "softmax", reg: str = "l2", reg_strength: float = 0.0,
                 generator: torch.Generator | None = None):  # fmt: skip
        super().__init__()
        self.spec, self.in_shape, self.max_value = features, tuple(in_shape), float(max_value)
        self.loss_kind, self.reg, self.reg_strength = loss, reg, reg_strength
        d = vfeat.dim(features, self.in_shape)
        self.register_buffer("mean", torch.zeros(d))  # (D,) feature mean of the training set
        self.register_buffer("std", torch.ones(d))  # (D,) its std (1 for pixels, and where it is 0)
        self.register_buffer("scaled", vfeat.standardised(features, self.in_shape), persistent=False)  # (D,) bool
        self.linear = nn.Linear(d, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(num_classes, d, generator=generator) * 1e-3)  # W (K, D)
            self.linear.bias.zero_()  # b (K,)

    @torch.no_grad()
    def standardise_with(self, raw: torch.Tensor) -> torch.Tensor:
        """Take the mean and std from ``raw`` (N, D) training features; returns them standardised (in place)."""
        self.mean.copy_(raw.mean(0))
        std = raw.std(0, unbiased=False)
        self.std.copy_(torch.where(self.scaled & (std > 1e-6), std, torch.ones_like(std)))  # constant: stays 0
        return raw.sub_(self.mean).div_(self.std)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The standardised feature vectors (B, D) of images (B, C, H, W): uint8, or float in 0..max_value
        (with ``pixels`` features the gradients then flow back to the pixels, for saliency maps)."""
        return (vfeat.extract(self.spec, images, self.max_value) - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(images))  # (B, K) scores

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss`` = data loss + lambda R(W), ``data_loss`` and ``acc`` of a batch (x, labels), where x is
        images (B, C, H, W) or their standardised features (B, D) from ``features`` (cached in training)."""
        x, labels = batch
        scores = self.linear(x if x.ndim == 2 else self.features(x))  # (B, K)
        data_loss = LOSSES[self.loss_kind](scores, labels)
        loss = data_loss + self.reg_strength * penalty(self.linear.weight, self.reg)
        return {"loss": loss, "data_loss": data_loss, "acc": (scores.argmax(1) == labels).float().mean()}

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices (B,) for uint8 images (B, C, H, W), on the model's device."""
        return self(images.to(self.mean.device)).argmax(1)

    def filters(self) -> torch.Tensor | None:
        """With ``pixels`` features, the class templates (K, C, H, W) of notes 2.6: the rows of W, i.e. how much
        each pixel (in units of max_value) adds to the class score. Else None."""
        if self.spec != "pixels":
            return None
        return (self.linear.weight / self.std).detach().view(-1, *self.in_shape)  # std is 1 for pixels


def build(cfg: LinearConfig, shape: tuple[int, int, int], num_classes: int, max_value: int) -> LinearClassifier:
    generator = torch.Generator().manual_seed(cfg.seed)
    return LinearClassifier(cfg.features, shape, num_classes, max_value, cfg.loss, cfg.reg, cfg.reg_strength,
                            generator)  # fmt: skip


def load_split(cfg: LinearConfig, split: str) -> vdata.ImageData:
    """One split of the config's data set (on the CPU: HOG and colour features are computed there)."""
    return vdata.load(cfg.dataset, split, data_dir=cfg.data_dir or None)


@dataclass
class Fitting:
    """One training in progress: the model, its optimiser and schedule, the minibatch order's generator, and
    the standardised features of the train (and val) split, extracted once. ``fit`` and ``train`` both step it
    with ``epoch()``; ``train`` also hands the stateful parts to its Run for checkpoints and resume."""

    cfg: LinearConfig
    model: LinearClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator
    train_x: torch.Tensor  # (N, D) standardised features
    train_y: torch.Tensor  # (N,)
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    def epoch(self) -> dict[str, torch.Tensor | float]:
        """One pass of minibatch SGD over the training split, in a fresh random order; its figures."""
        start, n, bs = time.perf_counter(), len(self.train_y), self.cfg.batch_size
        order = torch.randperm(n, generator=self.shuffle).to(self.train_x.device)
        sums = torch.zeros(3, device=self.train_x.device)  # loss, data loss, correct (no sync per batch)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            out = self.model.loss((self.train_x[idx], self.train_y[idx]))
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            self.optimizer.step()
            sums += torch.stack([out["loss"].detach(), out["data_loss"].detach(), out["acc"].detach()]) * len(idx)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        figures = {"train/loss": sums[0] / n, "train/data_loss": sums[1] / n, "train/acc": sums[2] / n,
                   "train/lr": lr, "perf/samples_per_s": n / (time.perf_counter() - start)}  # fmt: skip
        if self.val_x is not None:
            figures["val/acc"] = self.val_acc()
        return figures

    @torch.inference_mode()
    def val_acc(self) -> torch.Tensor:
        return (self.model.linear(self.val_x).argmax(1) == self.val_y).float().mean()


def start(cfg: LinearConfig, train: vdata.ImageData, val: vdata.ImageData | None = None,
          device: str | torch.device = "cpu") -> Fitting:  # fmt: skip
    """A ``Fitting`` at epoch 0: features extracted, the model's standardisation set from the training split."""
    if cfg.train_limit:
        train = vdata.ImageData(train.images[: cfg.train_limit], train.labels[: cfg.train_limit], train.max_value,
                                train.classes)  # fmt: skip
    model = build(cfg, train.shape, len(train.classes), train.max_value)
    train_x = model.standardise_with(vfeat.extract(cfg.features, train.images.cpu(), train.max_value))
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    # Closed form, read from cfg at every step: a resumed run may change --lr-decay from there on.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cfg.lr_decay**e)
    fitting = Fitting(cfg, model, optimizer, scheduler, torch.Generator().manual_seed(cfg.seed),
                      train_x.to(device), train.labels.to(device))  # fmt: skip
    if val is not None:
        with torch.no_grad():
            fitting.val_x = model.features(val.images.to(device))
        fitting.val_y = val.labels.to(device)
    return fitting


def fit(cfg: LinearConfig, train: vdata.ImageData, val: vdata.ImageData | None = None,
        device: str | torch.device = "cpu", log: Callable[[dict, int], None] | None = None,
        ) -> LinearClassifier:  # fmt: skip
    """Train a linear classifier without a Run (no files, no checkpoints); ``log(figures, epoch)`` after each
    epoch when given. Returns the model in eval mode on ``device``."""
    fitting = start(cfg, train, val, device)
    for e in range(1, cfg.epochs + 1):
        figures = fitting.epoch()
        if log is not None:
            log({k: float(v) for k, v in figures.items()}, e)
    return fitting.model.eval()


def train(cfg: LinearConfig, run: Run) -> dict:
    """Train the linear classifier of ``cfg`` (SVM or softmax loss, on pixels or features) on the train split by
    minibatch SGD, validating every epoch; the last weights are kept.

    Returns the summary figures {test/acc, test/loss, val/acc, train_s (seconds of training), epochs}.
    """
    splits = {s: load_split(cfg, s) for s in vdata.SPLITS}
    started = time.perf_counter()
    fitting = start(cfg, splits["train"], splits["val"], run.device)
    # The standardisation is recomputed from the same data, so it equals the checkpoint's; restore the rest.
    run.track(model=fitting.model, optimizer=fitting.optimizer, scheduler=fitting.scheduler, shuffle=fitting.shuffle)
    run.restore()
    for _ in run.loop(cfg.epochs, unit="epoch", show="val/acc"):
        run.log(fitting.epoch())
    train_s = time.perf_counter() - started
    model = fitting.model.eval()
    test = classify.evaluate_split(model, splits["test"].to(run.device))
    return {"test/acc": test["acc"], "test/loss": test["loss"], "val/acc": fitting.val_acc().item(),
            "train_s": round(train_s, 2), "epochs": run.step}  # fmt: skip


def evaluate(cfg: LinearConfig, run: Run) -> dict:
    """``fovea eval`` for a linear classifier: the weights in ``run``'s latest checkpoint scored on the test split
    by ``classify.report``.

    Returns {test/acc, test/loss, test/acc_class_CLASS per class, confusion_png, confusion}.
    """
    test = load_split(cfg, "test").to(run.device)
    return classify.report(run, load_trained(cfg, run, test), test)


def load_trained(cfg: LinearConfig, run: Run, data: vdata.ImageData) -> LinearClassifier:
    """The classifier in ``run``'s latest checkpoint, in eval mode on ``run.device``; ``data`` gives its shape."""
    model = build(cfg, data.shape, len(data.classes), data.max_value).to(run.device)
    return classify.restore_model(run, model)


register_task(LinearConfig, train, evaluate, explain=explainer(load_trained))
# Digits: lr, reg_strength and epochs chosen on the val split (mean of seeds 0-2); figures measured on a CPU.
register_recipe(
    "svm-digits",
    LinearConfig(loss="svm", reg_strength=5e-3, lr=1.0, lr_decay=0.9, momentum=0.9, epochs=30),
    "linear SVM on the raw pixels of the 8x8 digits: ~90% test (scikit-learn's LinearSVC: 90.4%), seconds on a CPU",
)
register_recipe(
    "softmax-digits",
    LinearConfig(loss="softmax", reg_strength=3e-4, lr=3.0, lr_decay=0.95, momentum=0.9, epochs=60),
    "softmax classifier on the raw pixels of the 8x8 digits: ~91% test (LogisticRegression: 90.4%), seconds on a CPU",
)
# CIFAR-10: CS231n's softmax notebook settings (plain SGD, batch 200, lr 1e-7..5e-7 and reg 2.5e4 on 0..255
# pixels) carried over to pixels in 0..1 (lr x 255^2, reg / 255^2), with less regularisation and more steps.
register_recipe(
    "softmax-cifar10",
    LinearConfig(dataset="cifar10", loss="softmax", reg_strength=0.05, lr=0.03, lr_decay=0.95, epochs=10),
    "softmax classifier on CIFAR-10's raw pixels (CS231n's bar: above 36% test)",
)
register_recipe(
    "svm-cifar10-features",
    LinearConfig(
        dataset="cifar10", features="hog+color", loss="svm", reg_strength=1e-3, lr=0.01, lr_decay=0.9, momentum=0.9
    ),
    "linear SVM on HOG + hue histogram features of CIFAR-10 (CS231n's features notebook: about 44-48% test)",
)
