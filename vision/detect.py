"""Object detection (the notes, chapter 11): classification + localisation, a one-stage detector and Faster R-CNN,
with one config, one training loop, one evaluation (COCO mAP through torchmetrics) and ``fovea detect``.

The models, each in its own file:

- ``locate`` (``vision.locate``): classification + localisation of the one object in an image (notes 11.2): a
  backbone, a class head (softmax loss) and a box head (L2 or GIoU loss), the two losses weighted and summed.
- ``fcos`` (``vision.fcos``): the one-stage, anchor-free detector (notes 11.3, "detection without proposals"),
  after FCOS (Tian et al. 2019), on a small feature pyramid of any registered backbone; its box coding and
  post-processing are in ``vision.boxes``.
- ``fasterrcnn`` (``vision.fasterrcnn``): torchvision's Faster R-CNN with a Fovea backbone, the two-stage path of
  notes 11.3 (region proposals, RoI Align, box heads).

Every detector honours one contract: ``loss(images, boxes, labels)`` returns ``{"loss": total, part: value}``
for uint8 images (B, C, H, W), per-image xyxy pixel boxes (n_i, 4) and labels (n_i,) in 0..K-1;
``predict(images, score_threshold)`` returns per image a dict of ``boxes`` (m, 4), ``scores`` (m,) and
``labels`` (m,), best first, at most ``boxes.MAX_DETECTIONS`` (100, as in COCO's evaluation).

Around them: the training batches in ``vision.detection_batches``, mAP and pictures in
``vision.detection_metrics``, the files of ``fovea detect`` in ``vision.detect_io``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fovea import distributed
from fovea.config import BackboneSpec, Config, param, register_recipe, register_task, suggest
from fovea.errors import ConfigError
from fovea.fit import KeepBest, Update, fit, train_epoch
from fovea.precision import Amp, Precision, channels_last, compiled
from fovea.run import Run
from fovea.tracking import wandb_boxes
from fovea.vision import detection_data as ddata
from fovea.vision.data import SPLITS
from fovea.vision.detect_io import ModelIO, detect_files, read_model_io, save_model_io
from fovea.vision.detection_batches import training_batches
from fovea.vision.detection_metrics import detect_all, evaluate_split, picture
from fovea.vision.fcos import FCOS
from fovea.vision.locate import Locator


@dataclass(kw_only=True)
class DetectorConfig(Config):
    """An object detector: classification + localisation (locate), a one-stage detector (fcos) or Faster R-CNN
    (fasterrcnn), on a registered backbone, trained by AdamW with a cosine schedule and evaluated by COCO mAP."""

    model: Literal["locate", "fcos", "fasterrcnn"] = "fcos"
    """locate: one object per image, a class head and a box head (notes 11.2); fcos: the one-stage detector;
    fasterrcnn: torchvision's Faster R-CNN on the backbone."""
    dataset: str = "digits-detect"
    """Detection data set: digits-detect and digits-locate are generated from the embedded digits; voc and coco
    read DATA_DIR/VOCdevkit/VOC2007 and DATA_DIR/coco."""
    data_dir: str = ""
    """Where voc and coco live (default: $FOVEA_DATA, else ./data)."""
    size: int = param(64, ge=16)
    """Image side in pixels: digits canvases are drawn at it, real images resized to it."""
    train_images: int = param(0, ge=0)
    """Training images (0: the data set's default, 4000 generated canvases or every real image)."""
    eval_images: int = param(0, ge=0)
    """Validation and test images (0: the data set's default, 500 generated canvases or every real image); fewer
    make quick checks quicker, and their figures noisier."""
    backbone: BackboneSpec = field(
        default_factory=lambda: BackboneSpec(name="convnet", options={"widths": (32, 64, 128)})
    )
    """Backbone and its options, e.g. --backbone resnet --backbone.depth 14."""
    backbone_from: str = ""
    """Start the backbone from another run's weights: runs/NAME (e.g. a digits classifier) or runs/NAME:PREFIX."""
    strides: tuple[int, ...] = (4, 8, 16)
    """fcos: strides of the pyramid's levels (doubling; the backbone's own maps, coarser ones added)."""
    width: int = param(64, ge=8)
    """fcos: channels of the pyramid and of the heads."""
    box_loss: Literal["l2", "giou"] = "l2"
    """locate: the box loss, l2 (squared error of xyxy as fractions of the image) or giou (1 - generalised IoU)."""
    box_weight: float = param(5.0, ge=0)
    """locate: weight of the box loss in the multitask loss (class cross-entropy + box_weight * box loss)."""
    augment: str = ""
    """Training augmentation, comma-separated: flip, scale:LO:HI, iou-crop ('' for none; digits are not flipped)."""
    workers: int = param(0, ge=0)
    """DataLoader worker processes that read and augment the training batches (0: the training process does);
    on CUDA the batches come in pinned memory. The batches are the same for any number."""
    lr: float = param(2e-3, gt=0)
    """Peak learning rate of AdamW (linear warm-up over 10% of the steps, at least 100, then cosine to 0)."""
    weight_decay: float = param(1e-4, ge=0)
    """Decoupled weight decay."""
    batch_size: int = param(32, ge=2)
    """Minibatch size."""
    epochs: int = param(12, ge=1)
    """Passes over the training images."""
    grad_clip: float = param(10.0, gt=0)
    """Gradients are clipped to this global norm (detection losses spike early on)."""
    score_threshold: float = param(0.05, ge=0, lt=1)
    """Detections scored below this are dropped before mAP (COCO practice: low, so recall is complete)."""
    seed: int = 0
    """Seeds every RNG and the generated canvases."""
    checkpoint_every: int = param(2, ge=1)
    """Epochs between checkpoints (one is also written at the end and on Ctrl-C / SIGTERM)."""
    amp: Amp = "auto"
    """Mixed precision: auto (bf16 on CUDA, fp32 elsewhere), off, bf16 or fp16 (with loss scaling); the heads'
    outputs and the losses stay fp32."""
    compile: bool = False
    """torch.compile the training step's loss (the first epoch pays the compilation)."""

    def validate(self) -> None:
        if self.dataset not in ddata.DETECTION_DATASETS:
            raise ConfigError(f"unknown detection dataset {self.dataset!r}; "
                              f"{suggest(self.dataset, list(ddata.DETECTION_DATASETS))}")  # fmt: skip
        if self.model == "locate" and self.dataset != "digits-locate" and self.dataset.startswith("digits"):
            raise ConfigError("model = locate finds one object per image: use --dataset digits-locate")
        ddata.parse_augment(self.augment)


def load_split(cfg: DetectorConfig, split: str) -> ddata.DetectionData:
    """``split`` of the detection data set of ``cfg``, at its size, count and seed."""
    count = (cfg.train_images if split == "train" else cfg.eval_images) or None
    return ddata.load(cfg.dataset, split, size=cfg.size, count=count, seed=cfg.seed, data_dir=cfg.data_dir or None)


def build(cfg: DetectorConfig, data: ddata.DetectionData, pretrained: bool = True) -> nn.Module:
    """The detector of ``cfg`` for images shaped like ``data``'s; with ``pretrained`` its backbone starts from
    ``backbone_from``."""
    shape, k = data.shape, len(data.classes)
    backbone = cfg.backbone.build(shape)
    if pretrained and cfg.backbone_from:
        from fovea.backbones.transfer import start_from

        start_from(backbone, cfg.backbone_from, False)
    if not hasattr(backbone, "forward_features"):
        raise ConfigError(f"backbone {cfg.backbone.name!r} has no feature map to detect on; use convnet or resnet")
    if cfg.model == "locate":
        return Locator(backbone, shape, k, data.max_value, cfg.box_loss, cfg.box_weight)
    if cfg.model == "fcos":
        return FCOS(backbone, shape, k, data.max_value, cfg.strides, cfg.width)
    from fovea.vision.fasterrcnn import FasterRCNNDetector

    return FasterRCNNDetector(backbone, k, data.max_value, cfg.size)



def warmup_cosine(cfg: DetectorConfig, steps_per_epoch: int):
    """The learning-rate multiplier at optimizer step t: linear warm-up over the first 10% of the steps but at
    least 100 (at most one epoch), then cosine to 0 at the last; read from cfg each step, so a run resumed with
    more --epochs stretches the schedule. FCOS needs the 100: with a 25-step warm-up, 2 epochs of detect-digits
    reached mAP@.5 0.44 instead of 0.84."""

    def factor(t: int) -> float:
        steps = cfg.epochs * steps_per_epoch
        warm = max(1, min(steps_per_epoch, max(100, steps // 10)))
        if t < warm:
            return (t + 1) / warm
        total = max(steps - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t - warm, total) / total))

    return factor


def train(cfg: DetectorConfig, run: Run) -> dict:
    """Train the detector of ``cfg`` on the train split by AdamW (warm-up, then cosine), measure its mAP on val
    every epoch, keep the weights of the best val mAP and score them on test.

    Returns the summary figures {test/map, test/map_50, test/map_75, val/map (the best), best_epoch, epochs}.
    """
    distributed.check_batch(cfg.batch_size)
    splits = {s: load_split(cfg, s) for s in SPLITS}
    tr = splits["train"]
    if run.main:
        save_model_io(run.dir, tr)
    model = channels_last(distributed.sync_batchnorm(build(cfg, tr)), run.device).to(run.device)
    best = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tr) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg, steps_per_epoch))
    shuffle = torch.Generator().manual_seed(cfg.seed)  # the same on every process: one shuffle, split by rank
    precision = Precision(cfg.amp, run.device)
    run.track(model=model, best=best, optimizer=optimizer, scheduler=scheduler, shuffle=shuffle, **precision.tracked())
    run.restore()
    keep = KeepBest(run, model, best, "val/map")
    dev = run.device
    pin = dev.type == "cuda"  # batches in pinned memory, copied without blocking
    # find_unused: a feature pyramid may leave a backbone's last stages out, and Faster R-CNN's heads vary
    loss_fn = compiled(distributed.wrap(model, "loss", find_unused=True), cfg.compile)
    noise = distributed.rank_generator(shuffle, cfg.seed)
    update = Update(lambda b: loss_fn(*b), optimizer, precision, model.parameters, cfg.grad_clip, scheduler)

    def batches():
        for images, boxes, labels, total in training_batches(tr, cfg.batch_size, shuffle, noise, cfg.augment,
                                                             cfg.workers, pin):  # fmt: skip
            boxes, labels = [b.to(dev, non_blocking=pin) for b in boxes], [c.to(dev, non_blocking=pin) for c in labels]
            yield (images.to(dev, non_blocking=pin), boxes, labels), len(images), total

    def train_one(epoch: int) -> tuple[dict, int]:
        means, _, seen = train_epoch(batches(), lambda _: (update,), skip=run.skip_step)
        return means, seen

    def validate(epoch: int) -> dict:
        return evaluate_split(model, splits["val"], cfg.score_threshold)

    fit(run, epochs=cfg.epochs, train=train_one, validate=validate, keep=keep, score=lambda v: (v["map"],),
        media=lambda epoch, val: run.log_image("val/detections", picture(splits["val"], val["predictions"])),
        lr=lambda: optimizer.param_groups[0]["lr"], show="val/map_50")  # fmt: skip
    test = evaluate_split(best, splits["test"], cfg.score_threshold)
    return {"test/map": test["map"], "test/map_50": test["map_50"], "test/map_75": test["map_75"],
            "val/map": keep.record.figure or 0.0, "best_epoch": keep.record.at,
            "epochs": run.step}  # fmt: skip


def load_trained(cfg: DetectorConfig, run: Run, data: ddata.DetectionData) -> nn.Module:
    """The kept best detector of ``run``, in eval mode on ``run.device``; ``data`` gives the image shape and
    classes."""
    from fovea.vision.classify import restore_model

    return restore_model(run, build(cfg, data, pretrained=False).to(run.device), "best")


def evaluate(cfg: DetectorConfig, run: Run) -> dict:
    """``fovea eval`` for a detector: the kept best weights of ``run`` scored on the test split, and a picture
    of their detections drawn to runs/NAME/eval/ and logged.

    Returns the figures {test/map, test/map_50, test/map_75, test/ap_CLASS per class, images_per_s (inference),
    detections_png (where the picture was written, when it was), eval_s}.
    """
    test = load_split(cfg, "test")
    model = load_trained(cfg, run, test)
    detect_all(model, test.images[:64], cfg.score_threshold)  # warm-up
    start = time.perf_counter()
    res = evaluate_split(model, test, cfg.score_threshold)
    seconds = time.perf_counter() - start
    figures = {"test/map": res["map"], "test/map_50": res["map_50"], "test/map_75": res["map_75"],
               **{f"test/ap_{c}": ap for c, ap in res["ap_per_class"].items()}}  # fmt: skip
    predict_start = time.perf_counter()
    detect_all(model, test.images, cfg.score_threshold)
    figures["images_per_s"] = len(test) / (time.perf_counter() - predict_start)
    path = run.log_image("test/detections", picture(test, res["predictions"]), folder="eval")
    run.log_table("test/ap_per_class", ["class", "ap"], [[c, ap] for c, ap in res["ap_per_class"].items()])
    shown = res["predictions"][:4] if getattr(run.tracker, "wb", None) is not None else []
    for i, pred in enumerate(shown):  # W&B images with boxes, predicted and true, that toggle by class
        boxes = wandb_boxes(pred, test.classes, (test.boxes[i], test.labels[i]))
        run.log_image(f"test/boxes_{i}", test.images[i] * (255 // test.max_value), folder="eval", boxes=boxes)
    if path is not None:
        figures["detections_png"] = str(path)
    figures["eval_s"] = seconds
    return figures




def detect(cfg: DetectorConfig, run: Run, images: Sequence[str], output: str | None = None,
           threshold: float = 0.5) -> dict:  # fmt: skip
    """``fovea detect``: the kept best detector of ``run`` on image files (see ``detect_io.detect_files``): each
    resized to the model's input, its detections above ``threshold`` drawn on the original image to
    OUTPUT/NAME.png and listed in OUTPUT/detections.json.

    Returns the figures {output_dir, images (processed), skipped, detections (their total)}.
    """
    io = model_io(cfg, run)
    data_like = ddata.DetectionData(torch.zeros(1, io.channels, cfg.size, cfg.size, dtype=torch.uint8), [], [],
                                    io.max_value, io.classes)  # fmt: skip
    model = load_trained(cfg, run, data_like)
    return detect_files(model, run, images, io, cfg.size, output, threshold)


def model_io(cfg: DetectorConfig, run: Run) -> ModelIO:
    """The classes, channels and max_value of the detector ``run`` trains, from ``detect_io.IO_FILE`` (else from
    its val split)."""
    io = read_model_io(run.dir)
    if io is None:
        val = load_split(cfg, "val")
        io = ModelIO(val.classes, val.shape[0], val.max_value)
    return io


register_task(DetectorConfig, train, evaluate, detect=detect, distributed=True)
register_recipe(
    "locate-digits",
    DetectorConfig(model="locate", dataset="digits-locate", epochs=8, lr=1e-3,
                   backbone=BackboneSpec(name="convnet", options={"widths": (32, 64, 128, 128)})),  # fmt: skip
    "classification + localisation (notes 11.2): one 12-32 px digit per 64x64 canvas, a class and a box head",
)
register_recipe(
    "detect-digits",
    DetectorConfig(model="fcos", epochs=8),
    "one-stage detector (FCOS: focal + GIoU + centre-ness, NMS) on 64x64 canvases of 1-5 digits",
)
register_recipe(
    "fasterrcnn-digits",
    DetectorConfig(model="fasterrcnn", backbone=BackboneSpec(name="convnet", options={"widths": (32, 64)}), lr=3e-3,
                   batch_size=16, epochs=6),  # fmt: skip
    "torchvision's Faster R-CNN (RPN, RoI Align, box heads) on a stride-4 ConvNet, canvases of 1-5 digits",
)
register_recipe(
    "detect-voc",
    DetectorConfig(model="fcos", dataset="voc", size=256, augment="flip,iou-crop", epochs=24,
                   backbone=BackboneSpec(name="resnet", options={"depth": 18, "widths": (32, 64, 128, 256)}),
                   strides=(8, 16, 32), width=128, batch_size=16, workers=4),  # fmt: skip
    "FCOS on Pascal VOC 2007 (DATA_DIR/VOCdevkit/VOC2007) at 256x256, flips and IoU crops (needs a GPU)",
)
register_recipe(
    "detect-coco",
    DetectorConfig(model="fcos", dataset="coco", size=320, augment="flip,iou-crop", epochs=12,
                   backbone=BackboneSpec(name="resnet", options={"depth": 18, "widths": (32, 64, 128, 256)}),
                   strides=(8, 16, 32), width=128, batch_size=16, workers=4),  # fmt: skip
    "FCOS on COCO 2017 (DATA_DIR/coco) at 320x320, flips and IoU crops (needs a GPU and a --train-images cap)",
)
