"""Image classification: a registered backbone plus a linear head, trained with softmax cross-entropy.

Follows chapters 5-7 of the notes (CS231n): conv-batchnorm-ReLU stacks, zero-centred inputs, weight
decay, momentum / Adam, a learning-rate schedule and data augmentation. The ``cnn-digits`` recipe
reaches about 98% test accuracy on the embedded 8x8 digits in well under a minute on a CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fovea import distributed
from fovea.backbones.transfer import start_from
from fovea.config import BackboneSpec, Config, param, register_recipe, register_task
from fovea.errors import ConfigError
from fovea.fit import KeepBest, Update, fit, train_epoch
from fovea.precision import Amp, Precision, channels_last, compiled
from fovea.run import Run
from fovea.vision import data as vdata
from fovea.vision.explain import explainer
from fovea.vision.plots import confusion_png
from fovea.vision.practice import UpdateRatios, augmenter, initialise, parse_augment

M = TypeVar("M", bound=nn.Module)


class Classifier(nn.Module):
    """``backbone`` -> dropout -> linear head over ``num_classes``.

    Args:
        backbone: any image backbone exposing ``out_features``.
        num_classes: number of classes.
        max_value: largest pixel value of the uint8 input (16 for digits, 255 for 8-bit images).
        dropout: dropout before the head.
        in_shape: the input's (C, H, W), to show a fully connected first layer's weights as images.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, max_value: int, dropout: float = 0.0,
                 in_shape: tuple[int, ...] = ()):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.out_features, num_classes))
        self.max_value = float(max_value)
        self.in_shape = tuple(in_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, num_classes) logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features (B, out_features) of images (B, C, H, W) in pixel units (uint8, or float
        0..max_value: gradients then flow back to the pixels)."""
        return self.backbone(images.float() / self.max_value - 0.5)  # zero-centred floats

    def filters(self) -> torch.Tensor | None:
        """The first layer's weights as images: (K, C, kh, kw) for a convolution, (K, C, H, W) for a fully
        connected first layer (None when the first layer is neither)."""
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                return m.weight.detach()
            if isinstance(m, nn.Linear):
                return m.weight.detach().view(m.out_features, *self.in_shape) if self.in_shape else None
        return None

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return {"loss": loss, "acc": (logits.argmax(1) == labels).float().mean()}

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices (B,) for uint8 images (B, C, H, W)."""
        return self(images).argmax(1)


@dataclass(kw_only=True)
class ClassifierConfig(Config):
    """A classifier: a backbone (two-layer net, ConvNet, ResNet) plus a linear head, trained with softmax
    cross-entropy by minibatch SGD or one of its variants."""

    dataset: str = "digits"
    """Registered dataset (`digits` is embedded: scikit-learn's 8x8 handwritten digits; mnist, cifar10, ...)."""
    data_dir: str = ""
    """Where downloaded data sets live (default: $FOVEA_DATA, else ./data)."""
    backbone: BackboneSpec = field(default_factory=lambda: BackboneSpec(name="convnet"))
    """Backbone and its options: --backbone resnet --backbone.depth 8; --backbone mlp --backbone.hidden 256."""
    backbone_from: str = ""
    """Start the backbone from another run's weights: runs/NAME (the part that fits, e.g. an autoencoder's
    encoder) or runs/NAME:PREFIX."""
    freeze_backbone: bool = False
    """With --backbone-from: keep those weights fixed and train only the head (a linear probe)."""
    init: Literal["default", "kaiming", "xavier", "small"] = "default"
    """Weight initialisation of every conv / linear layer (notes 6.3): kaiming (ReLU nets), xavier, small
    (N(0, 0.01^2), the notes' failure case) or default (PyTorch's)."""
    dropout: float = param(0.0, ge=0, lt=1)
    """Dropout before the linear head."""
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adamw"
    """torch.optim optimizer (sgd uses Nesterov momentum when momentum > 0)."""
    lr: float = param(3e-3, gt=0)
    """Peak learning rate."""
    momentum: float = param(0.9, ge=0, lt=1)
    """Momentum for sgd and rmsprop."""
    weight_decay: float = param(5e-4, ge=0)
    """L2 penalty (decoupled for adamw)."""
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    """Learning-rate schedule over the epochs: cosine to 0, step (x0.1 at 50% and 75%) or constant."""
    batch_size: int = param(64, ge=1)
    """Minibatch size."""
    epochs: int = param(30, ge=1)
    """Passes over the training split."""
    augment: str = "shift:1"
    """Data augmentation, comma-separated: shift:N, flip, rotate:DEG, affine:DEG, erase:P ('' for none)."""
    label_smoothing: float = param(0.0, ge=0, lt=1)
    """Cross-entropy label smoothing."""
    patience: int = param(0, ge=0)
    """Early stopping: stop after this many epochs without a better validation accuracy (0: never). The
    weights of the best validation accuracy are what is tested and evaluated, either way."""
    train_limit: int = param(0, ge=0)
    """Train on the first N training images only (0: all), e.g. 100 labelled digits for transfer learning."""
    overfit_batch: int = param(0, ge=0)
    """Sanity check (notes 6.5): train on the first N training images with no regularisation or
    augmentation; the loss should reach about 0. 0: off."""
    seed: int = 0
    """Seeds every RNG."""
    checkpoint_every: int = param(5, ge=1)
    """Epochs between checkpoints (one is also written at the end and on Ctrl-C / SIGTERM)."""
    amp: Amp = "auto"
    """Mixed precision: auto (bf16 on CUDA, fp32 elsewhere), off, bf16 or fp16 (with loss scaling)."""
    compile: bool = False
    """torch.compile the training step's forward and loss (the first epoch pays the compilation)."""

    def validate(self) -> None:
        vdata.check_dataset_field(self)
        parse_augment(self.augment)
        if self.freeze_backbone and not self.backbone_from:
            raise ConfigError("freeze_backbone = true needs --backbone-from runs/NAME (weights to freeze)")

    @staticmethod
    def upgrade(data: dict) -> dict:
        """A config.json written before ``augment`` replaced ``augment_shift`` (shift:N is the same thing)."""
        if "augment_shift" in data:
            shift = data.pop("augment_shift")
            data.setdefault("augment", f"shift:{shift}" if shift else "")
        return data

    def sanity_check(self) -> ClassifierConfig:
        """The config ``--overfit-batch`` trains with: no weight decay, dropout, augmentation or smoothing, and
        a constant learning rate."""
        return dataclasses.replace(self, weight_decay=0.0, dropout=0.0, augment="", label_smoothing=0.0, patience=0,
                                   schedule="constant")  # fmt: skip


def build(cfg: ClassifierConfig, shape: tuple[int, int, int], num_classes: int, max_value: int,
          pretrained: bool = True) -> Classifier:  # fmt: skip
    """The classifier, initialised by ``cfg.init``; with ``pretrained`` its backbone then starts from
    ``backbone_from`` (a checkpoint being loaded next passes False: it holds every weight, and the source run
    may be gone)."""
    model = Classifier(cfg.backbone.build(shape), num_classes, max_value, cfg.dropout, shape)
    initialise(model, cfg.init)
    if pretrained and cfg.backbone_from:
        start_from(model.backbone, cfg.backbone_from, cfg.freeze_backbone)
    return model


def make_optimizer(cfg: ClassifierConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: ClassifierConfig, epoch: int) -> float:
    """The schedule's multiplier of ``lr`` after ``epoch`` epochs. Read from cfg at every step, so a run
    resumed with more --epochs stretches the schedule to the new end."""
    t = min(epoch, cfg.epochs) / cfg.epochs
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def load_splits(cfg: ClassifierConfig, device: torch.device | str) -> dict[str, vdata.ImageData]:
    """train / val / test on ``device``; train cut to its first ``overfit_batch`` or ``train_limit`` images."""
    splits = {s: vdata.load(cfg.dataset, s, data_dir=cfg.data_dir or None).to(device) for s in vdata.SPLITS}
    limit = cfg.overfit_batch or cfg.train_limit
    if limit:
        tr = splits["train"]
        if limit > len(tr):
            what = "overfit_batch" if cfg.overfit_batch else "train_limit"
            raise ConfigError(f"{what} = {limit} is more than the {len(tr)} training images of {cfg.dataset}")
        splits["train"] = vdata.ImageData(tr.images[:limit], tr.labels[:limit], tr.max_value, tr.classes)
    return splits


@torch.inference_mode()
def evaluate_split(model: nn.Module, split: vdata.ImageData, batch_size: int = 512) -> dict:
    """Loss, accuracy, per-class accuracy and the confusion matrix (rows: true class, columns: predicted).

    ``model(images)`` gives (B, K) scores whose argmax is the prediction; the loss is the cross-entropy of
    those scores read as logits (a kNN returns log vote shares, so its loss is the log-loss of the votes).
    """
    was_training = model.training
    model.eval()
    k = len(split.classes)
    confusion = torch.zeros(k, k, dtype=torch.long)
    total_loss = torch.zeros(())
    for images, labels in vdata.batches(split, batch_size):
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").cpu()
        confusion += torch.bincount((labels * k + logits.argmax(1)).cpu(), minlength=k * k).view(k, k)
    model.train(was_training)
    per_class = confusion.diag() / confusion.sum(1).clamp(min=1)
    return {"loss": total_loss.item() / len(split), "acc": (confusion.diag().sum() / confusion.sum()).item(),
            "per_class_acc": per_class.tolist(), "confusion": confusion.tolist()}  # fmt: skip


def confusion_image(confusion: list[list[int]], cell: int = 16) -> torch.Tensor:
    """The confusion matrix as a grey (H, W) uint8 picture: row-normalised, each cell ``cell`` pixels wide."""
    m = torch.tensor(confusion, dtype=torch.float32)
    m = m / m.sum(1, keepdim=True).clamp(min=1)
    return (m * 255).round().to(torch.uint8).repeat_interleave(cell, 0).repeat_interleave(cell, 1)


def report(run: Run, model: nn.Module, split: vdata.ImageData, key: str = "test") -> dict:
    """``fovea eval`` for any classifier: accuracy, loss, per-class accuracy and the confusion matrix, which is
    also drawn (counts and class names) to ``runs/NAME/eval/KEY_confusion_STEP.png`` and logged to W&B, beside a
    table of the per-class accuracies and W&B's confusion-matrix chart."""
    res = evaluate_split(model, split)
    figures: dict = {f"{key}/acc": res["acc"], f"{key}/loss": res["loss"]}
    figures.update({f"{key}/acc_class_{c}": a for c, a in zip(split.classes, res["per_class_acc"], strict=True)})
    path = run.log_image(f"{key}/confusion", np.asarray(confusion_png(res["confusion"], split.classes)), folder="eval")
    if path is not None:
        figures["confusion_png"] = str(path)
    counts = [sum(row) for row in res["confusion"]]  # W&B: a table of the per-class figures and the chart
    rows = [[c, a, n] for c, a, n in zip(split.classes, res["per_class_acc"], counts, strict=True)]
    run.log_table(f"{key}/per_class", ["class", "accuracy", "images"], rows)
    run.log_confusion(f"{key}/confusion_matrix", res["confusion"], list(split.classes))
    return {**figures, "confusion": res["confusion"]}


def stopped_early(cfg: ClassifierConfig, run: Run, keep: KeepBest) -> str | None:
    """Why to stop, once ``patience`` epochs have passed without a better validation accuracy; else None."""
    best = keep.record
    if not cfg.patience or best.score is None or run.step - best.at < cfg.patience:
        return None
    return f"no better val/acc for {cfg.patience} epochs (best {best.figure:.4f} at epoch {best.at})"


def train(cfg: ClassifierConfig, run: Run) -> dict:
    """Train the classifier of ``cfg`` on the train split and validate it every epoch, keeping the weights of the
    best validation accuracy (among equal accuracies the lowest loss; stopping early after ``patience`` epochs
    without a better one; with ``overfit_batch``, the sanity check instead: a few images, no regularisation,
    the last weights kept).

    Returns the summary figures of the kept weights {test/acc, test/loss, val/acc, train/acc, train/loss,
    best_epoch, epochs}; their confusion matrix on val is logged as a picture.
    """
    if cfg.overfit_batch:
        cfg = cfg.sanity_check()
        run.say(f"Sanity check: overfitting the first {cfg.overfit_batch} training images (no regularisation).")
    distributed.check_batch(cfg.batch_size)
    splits = load_splits(cfg, run.device)
    tr = splits["train"]
    model = build(cfg, tr.shape, len(tr.classes), tr.max_value)
    model = channels_last(distributed.sync_batchnorm(model), run.device).to(run.device)
    best = copy.deepcopy(model)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg, e))
    shuffle = torch.Generator().manual_seed(cfg.seed)  # the same on every process: one shuffle, split by rank
    precision = Precision(cfg.amp, run.device)
    run.track(model=model, best=best, optimizer=optimizer, scheduler=scheduler, shuffle=shuffle, **precision.tracked())
    run.restore(fallback={"best": "model"})  # a run from before best weights were kept: its last ones
    keep = KeepBest(run, model, best, "val/acc")
    augment, ratios = augmenter(cfg.augment), UpdateRatios(model)
    loss_fn = compiled(distributed.wrap(model, "loss"), cfg.compile)
    noise = distributed.rank_generator(shuffle, cfg.seed)
    update = Update(lambda b: loss_fn((augment(b[0], noise), b[1]), cfg.label_smoothing), optimizer, precision,
                    model.parameters)  # fmt: skip

    def batches():  # batch norm cannot train on one image: a last batch of one is dropped
        for images, labels, total in vdata.global_batches(tr, cfg.batch_size, shuffle):
            if not len(labels) == 1 < len(tr):
                yield (images, labels), len(labels), total

    def train_one(epoch: int) -> tuple[dict, int]:
        def first_step():  # the update / weight ratio of the epoch's first step (notes 6.6)
            ratios.before()
            return ratios.after

        means, _, seen = train_epoch(batches(), lambda _: (update,), skip=run.skip_step, first_step=first_step)
        scheduler.step()
        return means, seen

    def stop(epoch: int) -> str | None:
        why = stopped_early(cfg, run, keep) if epoch < cfg.epochs else None
        return f"Early stop at epoch {epoch}: {why}." if why else None

    if stopped_early(cfg, run, keep):
        run.say(f"{run.dir} stopped early at epoch {run.step} ({stopped_early(cfg, run, keep)}); "
                f"raise --patience (or set it to 0) to train on.")  # fmt: skip
    epochs = run.step if stopped_early(cfg, run, keep) else cfg.epochs
    fit(run, epochs=epochs, train=train_one, validate=lambda _: evaluate_split(model, splits["val"]), keep=keep,
        score=lambda v: None if cfg.overfit_batch else (v["acc"], -v["loss"]),  # (a sanity check keeps its last)
        lr=lambda: optimizer.param_groups[0]["lr"], stop=stop, show="val/acc",
        throughput="perf/samples_per_s")  # fmt: skip
    test, val = evaluate_split(best, splits["test"]), evaluate_split(best, splits["val"])
    run.log_image("val/confusion", confusion_image(val["confusion"]))
    fit_ = evaluate_split(best, tr)
    return {"test/acc": test["acc"], "test/loss": test["loss"], "val/acc": val["acc"], "train/acc": fit_["acc"],
            "train/loss": fit_["loss"], "best_epoch": keep.record.at, "epochs": run.step}  # fmt: skip


def evaluate(cfg: ClassifierConfig, run: Run) -> dict:
    """``fovea eval`` for a classifier: the best weights kept in ``run``'s latest checkpoint (its last weights,
    for a run from before best weights were kept) scored on the test split by ``report``.

    Returns {test/acc, test/loss, test/acc_class_CLASS per class, confusion_png (the drawn matrix, where it was
    written), confusion (rows: true class, columns: predicted)}.
    """
    test = vdata.load(cfg.dataset, "test", data_dir=cfg.data_dir or None).to(run.device)
    return report(run, load_trained(cfg, run, test), test)


def load_trained(cfg: ClassifierConfig, run: Run, data: vdata.ImageData) -> Classifier:
    """The classifier in ``run``'s latest checkpoint, in eval mode on ``run.device``; ``data`` gives its shape."""
    model = build(cfg, data.shape, len(data.classes), data.max_value, pretrained=False).to(run.device)
    return restore_model(run, model, "best", fallback={"best": "model"})  # a run from before best weights: its last


def restore_model(run: Run, model: M, name: str = "model", fallback: dict[str, str] | None = None) -> M:
    """``model`` with the weights tracked as ``name`` in ``run``'s latest checkpoint loaded into it, in eval mode
    (``Run.restored`` is another thing: whether a resume put back one tracked object). A run with no checkpoint
    is a ConfigError saying so."""
    run.track(**{name: model})
    if not run.restore(fallback=fallback):
        raise ConfigError(f"{run.dir} has no checkpoint yet; train it first (fovea train --resume {run.dir})")
    return model.eval()


register_task(ClassifierConfig, train, evaluate, explain=explainer(load_trained), distributed=True)
DIGITS_CNN = BackboneSpec(name="convnet", options={"widths": (64, 128)})
CIFAR_CNN = BackboneSpec(name="convnet", options={"widths": (64, 128, 256), "convs_per_stage": 2})

register_recipe(
    "cnn-digits",
    ClassifierConfig(backbone=DIGITS_CNN, dropout=0.3, epochs=40),
    "CNN (2 conv-bn-relu stages, 64 and 128 channels) on the embedded 8x8 digits, 1-pixel shifts: ~98% test",
)
register_recipe(
    "twolayer-digits",
    ClassifierConfig(backbone=BackboneSpec(name="mlp", options={"hidden": (512,)}), init="kaiming", dropout=0.5,
                     epochs=60),  # fmt: skip
    "two-layer net (notes ch. 4): 64 pixels -> 512 ReLU -> dropout -> 10, AdamW, 1-pixel shifts, on the digits",
)
register_recipe(
    "resnet-digits",
    ClassifierConfig(backbone=BackboneSpec(name="resnet", options={"depth": 8}), epochs=40),
    "ResNet-8 (CIFAR-style: 3 stages of basic blocks, global pooling) on the embedded 8x8 digits",
)
register_recipe(
    "cnn-mnist",
    ClassifierConfig(dataset="mnist", backbone=DIGITS_CNN, dropout=0.3, epochs=10, batch_size=128, lr=2e-3,
                     augment="shift:2"),  # fmt: skip
    "the digits CNN on MNIST (28x28; --data-dir or a torchvision download)",
)
register_recipe(
    "twolayer-cifar10",
    ClassifierConfig(dataset="cifar10", backbone=BackboneSpec(name="mlp", options={"hidden": (500,)}),
                     init="kaiming", optimizer="sgd", lr=1e-2, weight_decay=1e-3, batch_size=200, epochs=20,
                     schedule="step", augment=""),  # fmt: skip
    "two-layer net on CIFAR-10 pixels (CS231n assignment 1's bar: above 48% test)",
)
register_recipe(
    "cnn-cifar10",
    ClassifierConfig(dataset="cifar10", backbone=CIFAR_CNN, dropout=0.3, epochs=10, batch_size=128, lr=2e-3,
                     augment="shift:4,flip"),  # fmt: skip
    "VGG-style CNN (3 stages of 2 conv-bn-relu, 64-128-256) on CIFAR-10, crops and flips (bar: 70% in 10 epochs)",
)
register_recipe(
    "resnet-cifar10",
    ClassifierConfig(dataset="cifar10", backbone=BackboneSpec(name="resnet", options={"depth": 20}),
                     optimizer="sgd", lr=0.1, weight_decay=5e-4, batch_size=128, epochs=160, augment="shift:4,flip"),
    "ResNet-20 (He et al. 2016, section 4.2) on CIFAR-10, SGD 0.1 with Nesterov momentum, cosine (needs a GPU)",
)
