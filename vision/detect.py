"""Object detection (notes ch. 11): classification + localisation, a one-stage detector and Faster R-CNN.

Three models share one training loop, one evaluation (COCO mAP through torchmetrics) and ``fovea detect``:

- ``locate``: classification + localisation of the one object in an image (notes 11.2): a backbone, a class head
  (softmax loss) and a box head (L2 or GIoU loss), the two losses weighted and summed (a multitask loss).
- ``fcos``: the one-stage detector (notes 11.3, "detection without proposals"), after FCOS (Tian et al. 2019).
  FCOS rather than YOLO or SSD because it is anchor-free: every feature-map location inside an object predicts
  its class and its distances to the box's four sides, so there are no anchor sizes or aspect ratios to tune per
  data set, and one dense head serves a small feature pyramid on any registered backbone. Focal loss for the
  classes (most locations are background), GIoU loss for the boxes, a centre-ness branch that ranks boxes from
  the middle of an object above those from its edge, then ``batched_nms``.
- ``fasterrcnn``: torchvision's Faster R-CNN with a Fovea backbone (``vision.fasterrcnn``): the two-stage path of
  the notes (region proposals, RoI Align, box heads).

Every detector honours one contract: ``loss(images, boxes, labels)`` returns ``{"loss": total, part: value}``
for uint8 images (B, C, H, W), per-image xyxy pixel boxes (n_i, 4) and labels (n_i,) in 0..K-1;
``predict(images, score_threshold)`` returns per image a dict of ``boxes`` (m, 4), ``scores`` (m,) and
``labels`` (m,), best first, at most ``MAX_DETECTIONS``.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import (
    FeaturePyramidNetwork,
    batched_nms,
    clip_boxes_to_image,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from fovea import distributed
from fovea.config import BackboneSpec, Config, param, register_recipe, register_task, suggest
from fovea.errors import ConfigError
from fovea.precision import Amp, Precision, channels_last, compiled
from fovea.run import Run
from fovea.vision import detection_data as ddata
from fovea.vision.data import SPLITS

MAX_DETECTIONS = 100
"""Detections kept per image, as in COCO's evaluation."""
TRUE_COLOR, PRED_COLOR = "lime", "red"


# ----------------------------------------------------------------------------- boxes on a grid of points


def grid_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int], device=None) -> tuple[torch.Tensor, ...]:
    """The centres of every cell of feature maps of ``sizes`` (h, w) at ``strides``, level by level, row-major.

    Returns (P, 2) xy pixel coordinates ((j + 0.5) * stride, (i + 0.5) * stride), (P,) their strides and (P,)
    their level indices.
    """
    points, point_strides, levels = [], [], []
    for level, ((h, w), s) in enumerate(zip(sizes, strides, strict=True)):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()], 1).float().add(0.5).mul(s))
        point_strides.append(torch.full((h * w,), float(s), device=device))
        levels.append(torch.full((h * w,), level, device=device))
    return torch.cat(points), torch.cat(point_strides), torch.cat(levels)


def encode(boxes: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """xyxy boxes (P, 4) as distances (left, top, right, bottom) from ``points`` (P, 2), in units of ``strides``."""
    x, y = points.unbind(1)
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], 1)
    return ltrb / strides[:, None]


def decode(ltrb: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """The inverse of ``encode``: distances (..., P, 4) in strides from ``points`` back to xyxy pixel boxes."""
    d = ltrb * strides[:, None]
    x, y = points.unbind(1)
    return torch.stack([x - d[..., 0], y - d[..., 1], x + d[..., 2], y + d[..., 3]], -1)


def centreness(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS's centre-ness (P,) of distances (P, 4): 1 at a box's centre, falling to 0 at its edges."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    across = lr.min(1).values / lr.max(1).values.clamp(min=1e-6)
    down = tb.min(1).values / tb.max(1).values.clamp(min=1e-6)
    return (across * down).clamp(min=0).sqrt()


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, score_threshold: float, nms_iou: float,
                top_k: int = 1000) -> dict[str, torch.Tensor]:  # fmt: skip
    """One image's detections from dense predictions: ``boxes`` (P, 4) and per-class ``scores`` (P, K). Pairs of
    (location, class) scored above ``score_threshold``, the best ``top_k`` of them, then NMS per class at
    ``nms_iou``; at most MAX_DETECTIONS, best first."""
    k = scores.shape[1]
    s = scores.flatten()
    keep = (s > score_threshold).nonzero().squeeze(1)
    keep = keep[s[keep].topk(min(top_k, len(keep))).indices]
    point, label = keep // k, keep % k
    box, score = boxes[point], s[keep]
    kept = batched_nms(box, score, label, nms_iou)[:MAX_DETECTIONS]
    return {"boxes": box[kept], "scores": score[kept], "labels": label[kept]}


# ----------------------------------------------------------------------------- the feature pyramid


class FeaturePyramid(nn.Module):
    """Maps at ``strides`` from any registered image backbone: its own maps where it has them, then an FPN.

    The backbone's maps are found by a probe: run once, every submodule's output is recorded, and for each stride
    the last module whose output has that resolution is taken (the end of a stage). Strides coarser than the
    backbone's coarsest map are made by stride-2 3x3 convolutions (RetinaNet's P6 / P7); strides finer than its
    first map, or between its maps, cannot be and are a ConfigError naming the strides it has.

    Args:
        backbone: a registered image backbone with ``forward_features``.
        in_shape: (C, H, W) of the input.
        strides: increasing strides of the output maps, e.g. (4, 8, 16).
        width: channels of every output map.
    """

    def __init__(self, backbone: nn.Module, in_shape: tuple[int, int, int], strides: Sequence[int], width: int):
        super().__init__()
        self.backbone, self.strides = backbone, tuple(strides)
        found = self._probe(in_shape)  # stride -> (module name, channels)
        own = [s for s in self.strides if s in found]
        extra = [s for s in self.strides if s not in found]
        coarsest = max(found)
        doubling = all(b == 2 * a for a, b in zip(self.strides, self.strides[1:], strict=False))
        if not own or any(s < coarsest for s in extra) or not doubling:
            raise ConfigError(
                f"strides = {self.strides} do not fit this backbone, whose maps are at strides "
                f"{sorted(found)}: give doubling strides that start at one of these (coarser ones are added)"
            )
        self.taps = [found[s][0] for s in own]
        self.fpn = FeaturePyramidNetwork([found[s][1] for s in own], width)
        self.extra = nn.ModuleList(nn.Conv2d(width, width, 3, 2, 1) for _ in extra)

    def _probe(self, in_shape: tuple[int, int, int]) -> dict[int, tuple[str, int]]:
        shapes: list[tuple[str, torch.Size]] = []
        handles = [
            m.register_forward_hook(lambda mod, i, o, name=name: shapes.append((name, o.shape)))
            for name, m in self.backbone.named_modules()
            if name
        ]
        was_training = self.backbone.training
        try:
            with torch.no_grad():
                self.backbone.eval()
                self.backbone.forward_features(torch.zeros(1, *in_shape))
        finally:
            self.backbone.train(was_training)
            for h in handles:
                h.remove()
        found: dict[int, tuple[str, int]] = {}
        for name, shape in shapes:  # in completion order: a later module at the same resolution replaces an earlier
            if len(shape) == 4 and in_shape[1] % shape[2] == 0 and in_shape[1] // shape[2] > 1:
                found[in_shape[1] // shape[2]] = (name, shape[1])
        if not found:
            raise ConfigError("this backbone has no spatial feature map to detect on")
        return found

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # The tapped outputs are caught by hooks that live only during this call (hooks kept on the modules would
        # outlive a deepcopy of the model and write to the original's maps).
        outputs: dict[str, torch.Tensor] = {}
        modules = dict(self.backbone.named_modules())
        handles = [
            modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
            for name in self.taps
        ]
        try:
            self.backbone.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        levels = list(self.fpn(OrderedDict((n, outputs[n]) for n in self.taps)).values())
        for conv in self.extra:
            levels.append(conv(F.relu(levels[-1]) if len(levels) > len(self.taps) else levels[-1]))
        return levels  # one (B, width, H / s, W / s) map per stride


# ----------------------------------------------------------------------------- the one-stage detector (FCOS)


class FCOS(nn.Module):
    """A one-stage, anchor-free detector (FCOS, Tian et al. 2019) on a small feature pyramid of any backbone.

    Each location of each pyramid level predicts K class logits, its distances to the four sides of the box it is
    in (exp(scale_l * x), in strides) and the box's centre-ness. Training assigns a location to the smallest true
    box that contains it, when the location lies within ``centre_radius`` strides of the box's centre and the box's
    size suits the level (the largest distance in (``RANGE`` * stride / 2, ``RANGE`` * stride], the first level
    from 0, the last unbounded); the rest are background.

    Args:
        backbone: a registered image backbone.
        in_shape: (C, H, W) of the input.
        num_classes: K.
        max_value: the largest pixel value of the uint8 input.
        strides: strides of the pyramid levels.
        width: channels of the pyramid and the heads.
        convs: 3x3 conv-GroupNorm-ReLU layers in each of the two towers (classes; boxes and centre-ness).
        centre_radius: positives lie within this many strides of a box's centre (FCOS's centre sampling).
        nms_iou: boxes of one class overlapping a better one by more than this IoU are suppressed.
    """

    RANGE = 4
    """A level of stride s takes boxes whose farthest side is at most RANGE * s from the location (and more than
    RANGE * s / 2, below the first level)."""

    def __init__(self, backbone: nn.Module, in_shape: tuple[int, int, int], num_classes: int, max_value: float,
                 strides: Sequence[int] = (4, 8, 16), width: int = 64, convs: int = 2, centre_radius: float = 1.5,
                 nms_iou: float = 0.6):  # fmt: skip
        super().__init__()
        self.pyramid = FeaturePyramid(backbone, in_shape, strides, width)
        self.strides, self.num_classes = tuple(strides), num_classes
        self.max_value, self.centre_radius, self.nms_iou = float(max_value), centre_radius, nms_iou
        groups = math.gcd(width, 32)

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers += [nn.Conv2d(width, width, 3, 1, 1), nn.GroupNorm(groups, width), nn.ReLU()]
            return nn.Sequential(*layers)

        self.class_tower, self.box_tower = tower(), tower()
        self.class_logits = nn.Conv2d(width, num_classes, 3, 1, 1)
        self.box_ltrb = nn.Conv2d(width, 4, 3, 1, 1)
        self.centre_logit = nn.Conv2d(width, 1, 3, 1, 1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for m in [*self.class_tower, *self.box_tower, self.class_logits, self.box_ltrb, self.centre_logit]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.class_logits.bias, -math.log(99))  # p(object) = 0.01 at the start (focal loss)
        c, h, w = in_shape
        with torch.no_grad():
            sizes = [tuple(f.shape[2:]) for f in self._eval(lambda: self.pyramid(torch.zeros(1, c, h, w)))]
        points, point_strides, levels = grid_points(sizes, self.strides)
        self.register_buffer("points", points, persistent=False)
        self.register_buffer("point_strides", point_strides, persistent=False)
        self.register_buffer("levels", levels, persistent=False)
        self.image_size = (h, w)

    def _eval(self, fn):
        was_training = self.training
        self.eval()
        try:
            return fn()
        finally:
            self.train(was_training)

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per location of every level, concatenated: class logits (B, P, K), distances to the sides (B, P, 4) in
        strides and centre-ness logits (B, P)."""
        if tuple(images.shape[2:]) != self.image_size:
            raise ConfigError(f"images are {tuple(images.shape[2:])} pixels; this detector takes {self.image_size}")
        maps = self.pyramid(images.float() / self.max_value - 0.5)
        logits, ltrb, centre = [], [], []
        for level, f in enumerate(maps):
            c, b = self.class_tower(f), self.box_tower(f)
            # the heads' outputs in fp32 (under autocast the convolutions run in bf16): they feed exp, boxes, losses
            logits.append(self.class_logits(c).float().flatten(2).transpose(1, 2))
            ltrb_l = torch.exp((self.scales[level] * self.box_ltrb(b).float()).clamp(max=10))
            ltrb.append(ltrb_l.flatten(2).transpose(1, 2))
            centre.append(self.centre_logit(b).float().flatten(1))
        return torch.cat(logits, 1), torch.cat(ltrb, 1), torch.cat(centre, 1)

    @torch.no_grad()
    def targets(self, boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The box (P, 4) and class (P,) each location learns for one image's true ``boxes`` (n, 4) and ``labels``
        (n,); class -1 is background."""
        p = self.points.shape[0]
        if len(boxes) == 0:
            return torch.zeros(p, 4, device=boxes.device), torch.full((p,), -1, device=boxes.device)
        x, y = self.points[:, 0:1], self.points[:, 1:2]  # (P, 1)
        ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], 2)  # (P, n, 4)
        inside = ltrb.min(2).values > 0
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2  # (n,)
        r = self.centre_radius * self.point_strides[:, None]
        near = ((x - cx).abs() < r) & ((y - cy).abs() < r)  # (P, n) centre sampling
        reach = ltrb.max(2).values
        hi = self.RANGE * self.point_strides[:, None]
        lo = torch.where(self.levels[:, None] == 0, 0.0, hi / 2)
        hi = torch.where(self.levels[:, None] == len(self.strides) - 1, math.inf, hi)
        fits = inside & near & (reach > lo) & (reach <= hi)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(p, -1)
        area = torch.where(fits, area, math.inf)
        smallest, which = area.min(1)
        classes = torch.where(torch.isinf(smallest), -1, labels[which])
        return boxes[which], classes

    def loss(self, images: torch.Tensor, boxes: Sequence[torch.Tensor],
             labels: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:  # fmt: skip
        """Focal loss over every location and class, GIoU and centre-ness losses over the positives, each summed
        and divided by the number of positives in the batch (the box loss by their summed centre-ness)."""
        logits, ltrb, centre = self.forward_raw(images)
        truth = [self.targets(b, lab) for b, lab in zip(boxes, labels, strict=True)]
        true_boxes = torch.stack([t[0] for t in truth])  # (B, P, 4)
        classes = torch.stack([t[1] for t in truth])  # (B, P)
        positive = classes >= 0
        onehot = F.one_hot(classes.clamp(min=0), self.num_classes).to(logits.dtype) * positive[..., None]
        n_pos = positive.sum().clamp(min=1)
        class_loss = sigmoid_focal_loss(logits, onehot, reduction="sum") / n_pos
        if not positive.any():
            zero = (ltrb.sum() + centre.sum()) * 0.0
            return {"loss": class_loss + zero, "class_loss": class_loss, "box_loss": zero, "centre_loss": zero}
        pts = self.points[None].expand_as(true_boxes[..., :2])[positive]
        st = self.point_strides[None].expand_as(classes)[positive]
        true_ltrb = encode(true_boxes[positive], pts, st)
        target_centre = centreness(true_ltrb)
        pred_boxes = decode(ltrb[positive], pts, st)
        giou = generalized_box_iou_loss(pred_boxes, true_boxes[positive], reduction="none")
        box_loss = (giou * target_centre).sum() / target_centre.sum().clamp(min=1e-6)
        centre_loss = F.binary_cross_entropy_with_logits(centre[positive], target_centre, reduction="sum") / n_pos
        return {"loss": class_loss + box_loss + centre_loss, "class_loss": class_loss, "box_loss": box_loss,
                "centre_loss": centre_loss}  # fmt: skip

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, score_threshold: float = 0.05) -> list[dict[str, torch.Tensor]]:
        """Per image: boxes (m, 4) xyxy pixels, scores (m,) = sqrt(p(class) * centre-ness) and labels (m,), after
        per-class NMS, best first, at most MAX_DETECTIONS."""
        logits, ltrb, centre = self.forward_raw(images)
        scores = (torch.sigmoid(logits) * torch.sigmoid(centre)[..., None]).sqrt()  # (B, P, K)
        boxes = clip_boxes_to_image(decode(ltrb, self.points, self.point_strides), self.image_size)
        return [postprocess(boxes[b], scores[b], score_threshold, self.nms_iou) for b in range(len(images))]

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.predict(images)


# ----------------------------------------------------------------------------- classification + localisation


class Locator(nn.Module):
    """One object per image (notes 11.2): a backbone's feature map feeds a class head (K logits) and a box head
    (the box's left and top as fractions of the image, then its width and height as fractions of the room left,
    through sigmoids: every box lies inside the image and is ordered).

    The class head reads the map's maximum over space (global max pooling), so an object is recognised wherever
    it is and the background around it does not dilute it (averaging did, and made the head hostage to batch
    norm's running statistics). The box head reads the flattened map, because where things are is what it must
    tell, and pooling throws that away.

    Args:
        backbone: a registered image backbone with ``forward_features``.
        in_shape: (C, H, W) of the input.
        num_classes: K.
        max_value: the largest pixel value of the uint8 input.
        box_loss: ``l2`` (squared error of the xyxy coordinates as fractions of the image) or ``giou``.
        box_weight: weight of the box loss in the multitask loss (class cross-entropy + box_weight * box loss).
    """

    def __init__(self, backbone: nn.Module, in_shape: tuple[int, int, int], num_classes: int, max_value: float,
                 box_loss: str = "l2", box_weight: float = 1.0):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            was_training = backbone.training
            fmap = backbone.eval().forward_features(torch.zeros(1, *in_shape))
            backbone.train(was_training)
        self.class_head = nn.Linear(fmap.shape[1], num_classes)
        self.box_head = nn.Linear(fmap.numel(), 4)
        self.max_value = float(max_value)
        self.register_buffer("scale", torch.tensor([in_shape[2], in_shape[1]] * 2, dtype=torch.float32), False)
        self.box_loss_kind, self.box_weight = box_loss, box_weight

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) class logits and (B, 4) xyxy pixel boxes."""
        fmap = self.backbone.forward_features(images.float() / self.max_value - 0.5)  # (B, C, h, w)
        x1, y1, w, h = torch.sigmoid(self.box_head(fmap.flatten(1)).float()).unbind(1)  # fp32 under autocast too
        box = torch.stack([x1, y1, x1 + w * (1 - x1), y1 + h * (1 - y1)], 1)
        return self.class_head(fmap.amax((2, 3))).float(), box * self.scale

    def loss(self, images: torch.Tensor, boxes: Sequence[torch.Tensor],
             labels: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:  # fmt: skip
        """Cross-entropy of the class plus ``box_weight`` times the box loss of each image's first true box."""
        if any(len(b) == 0 for b in boxes):
            raise ConfigError("the locate model needs one object in every image; use fcos or fasterrcnn for others")
        true_boxes, true_labels = torch.stack([b[0] for b in boxes]), torch.stack([lab[0] for lab in labels])
        logits, pred = self.forward_raw(images)
        class_loss = F.cross_entropy(logits, true_labels)
        if self.box_loss_kind == "giou":
            box_loss = generalized_box_iou_loss(pred, true_boxes, reduction="mean")
        else:
            box_loss = F.mse_loss(pred / self.scale, true_boxes / self.scale, reduction="none").sum(1).mean()
        return {"loss": class_loss + self.box_weight * box_loss, "class_loss": class_loss, "box_loss": box_loss}

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, score_threshold: float = 0.05) -> list[dict[str, torch.Tensor]]:
        """Per image one box, labelled with the most likely class and scored by its probability (an image whose
        probability is below ``score_threshold`` gets none)."""
        logits, boxes = self.forward_raw(images)
        score, label = logits.softmax(1).max(1)
        keep = score > score_threshold
        return [{"boxes": boxes[i : i + 1][keep[i : i + 1]], "scores": score[i : i + 1][keep[i : i + 1]],
                 "labels": label[i : i + 1][keep[i : i + 1]]} for i in range(len(images))]  # fmt: skip

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.predict(images)


# ----------------------------------------------------------------------------- config and training


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


def batches(data: ddata.DetectionData, batch_size: int,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, list, list]]:  # fmt: skip
    """Minibatches of (images, boxes, labels), shuffled with ``generator`` when given, in order otherwise."""
    n = len(data)
    order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield data.batch(idx)


class EpochBatches(torch.utils.data.Dataset):
    """One epoch's training batches as a map-style data set, item i = batch i: this process's (images, boxes,
    labels) of ``plan[i] = (indices, global batch size, augmentation seed or None)``, augmented, and the global
    batch's size. The plan is drawn before any batch is read, so a batch is the same whichever process reads it."""

    def __init__(self, data: ddata.DetectionData, plan: list[tuple[list[int], int, int | None]], augment: str) -> None:
        self.data, self.plan, self.spec = data, plan, augment
        self.augment: ddata.Augmenter | None = None  # made where the batches are read (a closure does not pickle)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], int]:
        idx, total, seed = self.plan[i]
        images, boxes, labels = self.data.batch(idx)
        if seed is not None:
            self.augment = self.augment or ddata.augmenter(self.spec)
            images, boxes, labels = self.augment(images, boxes, labels, seed)
        return images, boxes, labels, total


def training_batches(
    data: ddata.DetectionData,
    batch_size: int,
    shuffle: torch.Generator,
    noise: torch.Generator,
    augment: str = "",
    workers: int = 0,
    pin: bool = False,
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], int]]:
    """One epoch of training batches, each split over the torchrun processes (see ``vision.data.global_batches``):
    this process's augmented (images, boxes, labels) and the global batch's size.

    Reading and augmenting (per image, in Python: the costly part on a GPU) happen in ``workers`` DataLoader
    processes (0: in this one), ``pin``: into pinned memory, so that the copy to the GPU need not block. The
    shuffle (from ``shuffle``) and one augmentation seed per batch (from ``noise``, as ``augment`` would draw it)
    are drawn here first, in this process, so the batches, and the generators' states after them, are the same for
    any ``workers``. A batch of one image (batch norm cannot train on it) is left out of a set of more.
    """
    draws = bool(ddata.parse_augment(augment))
    plan = []
    for idx, total in distributed.global_batches(len(data), batch_size, shuffle):
        if len(idx) == 1 < len(data):
            continue
        plan.append((idx.tolist(), total, ddata.draw_seed(noise) if draws else None))
    # forked workers hold the run's signal handlers from their first instant (a spawned one imports torch first)
    context = "fork" if workers and sys.platform == "linux" else None
    yield from torch.utils.data.DataLoader(
        EpochBatches(data, plan, augment), batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
        worker_init_fn=_worker_ignores_stop_signals if workers else None, multiprocessing_context=context,
    )  # fmt: skip


def _worker_ignores_stop_signals(_: int) -> None:
    """Ctrl-C and SIGTERM sent to the process group stop the training process at the end of the epoch (its
    checkpoint needs the batches still to come): the loader's workers must not die of them first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@torch.inference_mode()
def detect_all(model: nn.Module, images: torch.Tensor, score_threshold: float = 0.05,
               batch_size: int = 64) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """``model.predict`` over ``images`` in batches, in eval mode, on the model's device, results on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        for d in model.predict(images[i : i + batch_size].to(device), score_threshold):
            out.append({k: v.cpu() for k, v in d.items()})
    model.train(was_training)
    return out


def mean_ap(predictions: list[dict], data: ddata.DetectionData) -> dict:
    """COCO mAP@[.5:.95], mAP@.5, mAP@.75 and AP per class of ``predictions`` against ``data``'s boxes, through
    torchmetrics' MeanAveragePrecision (pycocotools backend)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")
    targets = [{"boxes": b.cpu(), "labels": lab.cpu()} for b, lab in zip(data.boxes, data.labels, strict=True)]
    metric.update(predictions, targets)
    res = metric.compute()
    per_class = dict(zip(res["classes"].flatten().tolist(), res["map_per_class"].flatten().tolist(), strict=True))
    return {"map": res["map"].item(), "map_50": res["map_50"].item(), "map_75": res["map_75"].item(),
            "ap_per_class": {data.classes[c]: ap for c, ap in per_class.items()}}  # fmt: skip


def evaluate_split(model: nn.Module, data: ddata.DetectionData, score_threshold: float = 0.05) -> dict:
    """mAPs of ``model`` on ``data``, plus its predictions."""
    predictions = detect_all(model, data.images, score_threshold)
    return {**mean_ap(predictions, data), "predictions": predictions}


def picture(data: ddata.DetectionData, predictions: list[dict], n: int = 8, threshold: float = 0.5,
            columns: int = 4) -> np.ndarray:  # fmt: skip
    """The first ``n`` images with their true boxes (green) and predicted boxes scored above ``threshold`` (red,
    with class and score), as one (H, W, 3) uint8 grid."""
    from fovea.vision.plots import image_grid

    n = min(n, len(data))
    upscale = max(1, 256 // max(data.shape[1:]))
    kept = [{k: v[p["scores"] >= threshold] for k, v in p.items()} for p in predictions[:n]]
    truth = ddata.draw(data.images[:n], data.boxes[:n], data.labels[:n], [""] * len(data.classes), data.max_value,
                       upscale=upscale, color=TRUE_COLOR)  # fmt: skip
    drawn = [_draw_on(t, p, data.classes, upscale) for t, p in zip(truth, kept, strict=True)]
    return image_grid(np.stack(drawn), columns)


def _draw_on(rgb: np.ndarray, pred: dict, classes: Sequence[str], upscale: float, width: int = 2) -> np.ndarray:
    """Predicted boxes with '<class>: <score>' drawn on an (H, W, 3) uint8 picture already ``upscale`` times the
    image's size."""
    from torchvision.utils import draw_bounding_boxes

    if len(pred["boxes"]) == 0:
        return rgb
    names = [f"{classes[int(k)]}: {float(s):.2f}" for k, s in zip(pred["labels"], pred["scores"], strict=True)]
    image = torch.from_numpy(rgb).permute(2, 0, 1)
    drawn = draw_bounding_boxes(image, pred["boxes"].float() * upscale, names, colors=PRED_COLOR, width=width,
                                label_colors="white", label_background_colors=PRED_COLOR, fill_labels=True)  # fmt: skip
    return drawn.permute(1, 2, 0).contiguous().numpy()


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
    """Train on the train split, measure mAP on val every epoch, keep the weights of the best val mAP, and report
    their test mAPs."""
    distributed.check_batch(cfg.batch_size)
    splits = {s: load_split(cfg, s) for s in SPLITS}
    tr = splits["train"]
    io = {"classes": list(tr.classes), "channels": tr.shape[0], "max_value": tr.max_value}
    if run.main:
        (run.dir / IO_FILE).write_text(json.dumps(io))
    model = channels_last(distributed.sync_batchnorm(build(cfg, tr)), run.device).to(run.device)
    best = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tr) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg, steps_per_epoch))
    shuffle = torch.Generator().manual_seed(cfg.seed)  # the same on every process: one shuffle, split by rank
    precision = Precision(cfg.amp, run.device)
    run.track(model=model, best=best, optimizer=optimizer, scheduler=scheduler, shuffle=shuffle, **precision.tracked())
    run.restore()
    dev = run.device
    pin = dev.type == "cuda"  # batches in pinned memory, copied without blocking
    # find_unused: a feature pyramid may leave a backbone's last stages out, and Faster R-CNN's heads vary
    loss_fn = compiled(distributed.wrap(model, "loss", find_unused=True), cfg.compile)
    noise = distributed.rank_generator(shuffle, cfg.seed)
    for epoch in run.loop(cfg.epochs, unit="epoch", show="val/map_50"):
        start, seen, sums = time.perf_counter(), 0, {}
        for images, boxes, labels, total in training_batches(tr, cfg.batch_size, shuffle, noise, cfg.augment,
                                                             cfg.workers, pin):  # fmt: skip
            images = images.to(dev, non_blocking=pin)
            boxes, labels = [b.to(dev, non_blocking=pin) for b in boxes], [c.to(dev, non_blocking=pin) for c in labels]
            with precision.autocast():
                out = loss_fn(images, boxes, labels)
            loss = distributed.scale_loss(out["loss"].float(), len(images), total)
            skip = lambda: run.skip_step(loss, model.parameters())  # noqa: E731, B023  (called within backward)
            if not precision.backward(loss, optimizer, model.parameters(), cfg.grad_clip, skip=skip):
                scheduler.step()  # (the schedule keeps to its steps; the skipped batch counts for nothing)
                continue
            scheduler.step()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() * len(images)
            seen += len(images)
        elapsed = time.perf_counter() - start
        if distributed.active():  # the losses of the whole global batch, not this rank's part
            keys = sorted(sums)
            tot = distributed.total(torch.stack([*(sums[k] for k in keys), torch.tensor(float(seen), device=dev)]))
            sums, seen = dict(zip(keys, tot[:-1], strict=True)), float(tot[-1])
        losses = {f"train/{k}": v / seen for k, v in sums.items()}
        if not torch.isfinite(sums["loss"]):
            run.log(losses)  # a RunError naming the loss, before broken weights are scored or saved
        val = evaluate_split(model, splits["val"], cfg.score_threshold)
        if val["map"] > run.state.get("best_val_map", -1.0):
            best.load_state_dict(model.state_dict())
            run.state.update(best_val_map=val["map"], best_epoch=epoch)
        run.log({**losses, "val/map": val["map"],
                 "val/map_50": val["map_50"], "val/map_75": val["map_75"], "val/best_map": run.state["best_val_map"],
                 "train/lr": optimizer.param_groups[0]["lr"], "perf/images_per_s": seen / elapsed})  # fmt: skip
        if run.main:
            run.log_image("val/detections", picture(splits["val"], val["predictions"]))
    test = evaluate_split(best, splits["test"], cfg.score_threshold)
    return {"test/map": test["map"], "test/map_50": test["map_50"], "test/map_75": test["map_75"],
            "val/map": run.state.get("best_val_map", 0.0), "best_epoch": run.state.get("best_epoch", 0),
            "epochs": run.step}  # fmt: skip


def load_trained(cfg: DetectorConfig, run: Run, data: ddata.DetectionData) -> nn.Module:
    """The kept best detector of ``run``, in eval mode on ``run.device``; ``data`` gives the image shape and
    classes."""
    from fovea.vision.classify import restored

    return restored(run, build(cfg, data, pretrained=False).to(run.device), "best")


def evaluate(cfg: DetectorConfig, run: Run) -> dict:
    """Test mAP@[.5:.95], mAP@.5, mAP@.75 and AP per class of the kept best weights, inference images/s, and a
    picture of detections in runs/NAME/eval/."""
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
    if path is not None:
        figures["detections_png"] = str(path)
    figures["eval_s"] = seconds
    return figures


def detect(cfg: DetectorConfig, run: Run, images: Sequence[str], output: str | None = None,
           threshold: float = 0.5) -> dict:  # fmt: skip
    """``fovea detect``: each image file read, resized to the model's input, its detections above ``threshold``
    drawn on the original image to OUTPUT/NAME.png and listed in OUTPUT/detections.json. An unreadable image or
    one with the wrong channel count is reported and skipped; the others are still processed."""
    from PIL import Image, UnidentifiedImageError

    classes, channels, max_value = model_io(cfg, run)
    data_like = ddata.DetectionData(torch.zeros(1, channels, cfg.size, cfg.size, dtype=torch.uint8), [], [],
                                    max_value, classes)  # fmt: skip
    model = load_trained(cfg, run, data_like)
    out_dir = Path(output) if output else run.dir / "detections"
    out_dir.mkdir(parents=True, exist_ok=True)
    results, problems = {}, []
    for name in images:
        path = Path(name)
        try:
            with Image.open(path) as im:
                im.load()
                pil = im.convert("L" if im.mode in ("L", "LA", "I", "I;16", "1") else "RGB")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            problems.append(f"{path}: cannot read it as an image ({e.__class__.__name__}: {e})")
            continue
        c = 1 if pil.mode == "L" else 3
        if c != channels:
            problems.append(f"{path}: {c} channel{'s' * (c > 1)} ({pil.mode}), but {run.dir}'s model takes "
                            f"{channels} ({'grey' if channels == 1 else 'RGB'}); convert it first")  # fmt: skip
            continue
        w, h = pil.size
        pixels = np.asarray(pil.resize((cfg.size, cfg.size), Image.BILINEAR), np.float32).reshape(
            cfg.size, cfg.size, c
        )
        x = torch.from_numpy(np.round(pixels * (max_value / 255.0))).permute(2, 0, 1)[None].to(torch.uint8)
        (pred,) = detect_all(model, x, threshold)
        pred["boxes"] = pred["boxes"] * torch.tensor([w / cfg.size, h / cfg.size] * 2)
        rgb = np.asarray(pil.convert("RGB"))
        upscale = max(1, 256 // max(w, h))
        big = rgb.repeat(upscale, 0).repeat(upscale, 1)
        target = out_dir / f"{path.stem}.png"
        Image.fromarray(_draw_on(big, pred, classes, upscale)).save(target)
        results[str(path)] = {"output": str(target), "detections": [
            {"label": classes[int(k)], "score": round(float(s), 4), "box": [round(float(v), 2) for v in b]}
            for b, s, k in zip(pred["boxes"], pred["scores"], pred["labels"], strict=True)]}  # fmt: skip
    (out_dir / "detections.json").write_text(json.dumps(results, indent=1))
    for p in problems:
        run.say(f"skipped {p}")
    if not results:
        raise ConfigError(f"no image could be processed ({len(problems)} skipped): {problems[0]}")
    return {"output_dir": str(out_dir), "images": len(results), "skipped": len(problems),
            "detections": sum(len(r["detections"]) for r in results.values())}  # fmt: skip


IO_FILE = "detector.json"
"""In a run folder: the classes, channels and largest pixel value the detector was trained on, so ``fovea detect``
needs no data set."""


def model_io(cfg: DetectorConfig, run: Run) -> tuple[tuple[str, ...], int, int]:
    """(classes, channels, max_value) of the detector ``run`` trains, from its ``IO_FILE`` (else its val split)."""
    path = run.dir / IO_FILE
    try:
        doc = json.loads(path.read_text())
        return tuple(doc["classes"]), int(doc["channels"]), int(doc["max_value"])
    except (OSError, ValueError, KeyError, TypeError):
        val = load_split(cfg, "val")
        return val.classes, val.shape[0], val.max_value


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
