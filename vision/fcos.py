"""The one-stage detector (the notes, 11.3, "detection without proposals"): FCOS (Tian et al. 2019,
arXiv:1904.01355) on a small feature pyramid of any registered backbone.

FCOS rather than YOLO or SSD because it is anchor-free: every feature-map location inside an object predicts its
class and its distances to the box's four sides, so there are no anchor sizes or aspect ratios to tune per data
set, and one dense head serves a small feature pyramid on any registered backbone. Focal loss for the classes
(most locations are background), GIoU loss for the boxes, a centre-ness branch that ranks boxes from the middle of
an object above those from its edge, then ``batched_nms``. The box coding and post-processing are in
``vision.boxes``; as in torchvision's fcos.py, this file holds the backbone's pyramid, the heads and the loss.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, clip_boxes_to_image, generalized_box_iou_loss, sigmoid_focal_loss

from fovea.errors import ConfigError
from fovea.vision.boxes import centreness, decode, encode, grid_points, postprocess

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
