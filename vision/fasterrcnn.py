"""Faster R-CNN (Ren et al. 2015, arXiv:1506.01497) on a Fovea backbone, by torchvision's implementation.

A two-stage detector: a region proposal network (RPN) slides a small head over the backbone's feature
map and scores / refines a fixed set of anchor boxes per cell; the best proposals, after non-maximum
suppression, are cropped from the same map by RoI Align (the RoI pooling of Fast R-CNN, Girshick 2015)
and a second head classifies each crop into K classes + background and refines its box: the two-stage path
of object detection in the notes, 11.3 (R-CNN, Girshick et al. 2014; Fast R-CNN; Faster R-CNN).

``torchvision.models.detection.FasterRCNN`` does the RPN, the RoI heads, the box coding and the
post-processing; this file composes it with a registered backbone's ``forward_features`` and sizes it
for small canvases: no resizing to 800 px (the input is used at its size, or ``upscale`` times it),
anchors of the objects' scale, a light box head. It keeps Fovea's detector contract: ``loss(images,
boxes, labels)``, ``predict(images)``; labels are 0..K-1 outside (torchvision reserves 0 for the
background, so they are shifted by one inside).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

DETECTIONS_PER_IMAGE = 100
"""At most this many detections per image (the contract of ``predict``)."""
LOSS_NAMES = {
    "loss_objectness": "rpn_objectness",
    "loss_rpn_box_reg": "rpn_box",
    "loss_classifier": "roi_class",
    "loss_box_reg": "roi_box",
}
"""torchvision's loss names -> ours."""


class FeatureMap(nn.Module):
    """A Fovea image backbone seen as torchvision detection wants it: one map and its ``out_channels``.

    Args:
        backbone: a built image backbone with ``forward_features(x) -> (B, out_channels, h, w)``.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        if not hasattr(backbone, "forward_features") or not hasattr(backbone, "out_channels"):
            raise TypeError(
                f"{type(backbone).__name__} has no forward_features / out_channels; use an image backbone "
                "(convnet, resnet, nature-cnn)"
            )
        self.body = backbone
        self.out_channels = int(backbone.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)  # (B, out_channels, h, w)


class FasterRCNNDetector(nn.Module):
    """Faster R-CNN with a Fovea backbone, for ``num_classes`` classes on ``size`` x ``size`` canvases.

    The defaults suit the digits canvases (64 px, digits 12-32 px tall, taller than wide) on a stride-4
    or stride-8 feature map.

    Args:
        backbone: a built image backbone (``backbones.build``) with ``forward_features`` and ``out_channels``;
            its stride is whatever its downsampling gives (convnet: 2 ** len(widths) with ``max``).
        num_classes: K; labels are 0..K-1.
        max_value: the largest pixel value of the input (16 for digits, 255 for 8-bit images).
        size: side of the (square) input canvases; images are run at ``size * upscale`` pixels, never 800.
        upscale: run the detector on images scaled up by this factor (bilinear); boxes come back in the
            input's pixels. Finer anchors and feature cells for small objects, at upscale ** 2 the cost.
        anchor_sizes: anchor sides (square root of the area) in input pixels, one set per feature cell.
        aspect_ratios: anchor height / width ratios (torchvision's convention); digits are about 1.2-1.7.
        roi_size: RoI Align output side (roi_size x roi_size cells per proposal).
        representation: width of the two fully connected layers of the box head.
        proposals: RPN proposals kept after NMS per image, (training, inference).
        rpn_batch: anchors sampled per image for the RPN loss (half positive at most).
        roi_batch: proposals sampled per image for the box head's loss (a quarter positive at most).
        roi_sampling: bilinear samples per RoI Align bin side (torchvision's sampling_ratio; its CPU backward
            costs in proportion to roi_sampling ** 2 and dominates a training step at 2).
        rpn_fg_iou: IoU with a true box above which an anchor is a positive for the RPN (below 0.3: negative);
            each true box also takes its best anchor. torchvision's 0.7 leaves small objects few positives.
        nms: IoU of the per-class non-maximum suppression of the final detections.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        max_value: float,
        size: int,
        *,
        upscale: float = 1.0,
        anchor_sizes: Sequence[float] = (12, 16, 22, 30),
        aspect_ratios: Sequence[float] = (1.0, 1.5, 2.0),
        roi_size: int = 5,
        representation: int = 256,
        proposals: tuple[int, int] = (256, 100),
        rpn_batch: int = 256,
        roi_batch: int = 64,
        roi_sampling: int = 1,
        rpn_fg_iou: float = 0.5,
        nms: float = 0.5,
    ):
        super().__init__()
        if num_classes < 1 or max_value <= 0 or size < 1 or upscale <= 0:
            raise ValueError(
                f"FasterRCNNDetector needs num_classes >= 1, max_value > 0, size >= 1 and upscale > 0; got "
                f"num_classes={num_classes}, max_value={max_value}, size={size}, upscale={upscale}"
            )
        if not anchor_sizes or not aspect_ratios or min(anchor_sizes) <= 0 or min(aspect_ratios) <= 0:
            raise ValueError(f"anchor_sizes and aspect_ratios must be positive; got {anchor_sizes}, {aspect_ratios}")
        features = FeatureMap(backbone)
        self.num_classes = num_classes
        self.max_value = float(max_value)
        self.size = size
        self.upscale = float(upscale)
        side = round(size * upscale)
        channels = _in_channels(backbone)
        self.in_channels = channels
        # The anchors live in the transformed (upscaled) image's pixels.
        anchors = AnchorGenerator((tuple(s * upscale for s in anchor_sizes),), (tuple(aspect_ratios),))
        pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=roi_size, sampling_ratio=roi_sampling)
        self.model = FasterRCNN(
            features,
            # Pixels arrive as floats in 0..1; mean 0.5, std 1 gives the zero-centred input every Fovea
            # classifier feeds its backbone (x / max_value - 0.5), so classifier weights transfer as they are.
            min_size=side,
            max_size=side,
            image_mean=[0.5] * channels,
            image_std=[1.0] * channels,
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=1000,
            rpn_pre_nms_top_n_test=1000,
            rpn_post_nms_top_n_train=proposals[0],
            rpn_post_nms_top_n_test=proposals[1],
            rpn_fg_iou_thresh=rpn_fg_iou,
            rpn_batch_size_per_image=rpn_batch,
            box_roi_pool=pool,
            box_head=TwoMLPHead(features.out_channels * roi_size**2, representation),
            box_predictor=FastRCNNPredictor(representation, num_classes + 1),  # + background, label 0
            box_nms_thresh=nms,
            box_detections_per_img=DETECTIONS_PER_IMAGE,
            box_batch_size_per_image=roi_batch,
        )

    def _images(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Pixels (B, C, H, W) in 0..max_value -> B float (C, H, W) images in 0..1, torchvision's input."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"FasterRCNNDetector expects images (B, {self.in_channels}, H, W) in pixel units; "
                f"got shape {tuple(images.shape)}"
            )
        return list((images.float() / self.max_value).unbind(0))

    def loss(
        self, images: torch.Tensor, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The four Faster R-CNN losses and their sum ``loss``, for a batch in train() mode.

        Args:
            images: (B, C, H, W) uint8 (or float) pixels in 0..max_value.
            boxes: B float tensors (n_i, 4) of xyxy pixel boxes (n_i may be 0).
            labels: B int64 tensors (n_i,) of classes 0..K-1.

        Returns:
            ``loss`` (the total), ``rpn_objectness``, ``rpn_box``, ``roi_class``, ``roi_box``: scalar tensors.
        """
        if not self.training:
            raise RuntimeError("FasterRCNNDetector.loss needs train() mode (torchvision computes losses only then)")
        if len(boxes) != images.shape[0] or len(labels) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(boxes)} box sets and {len(labels)} label sets")
        every = torch.cat([lab.reshape(-1) for lab in labels])
        if every.numel() and not 0 <= int(every.min()) <= int(every.max()) < self.num_classes:  # one sync per batch
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}; got {every.min()}..{every.max()}")
        targets = [
            {"boxes": b.to(images.device, torch.float32).reshape(-1, 4), "labels": lab.to(images.device).long() + 1}
            for b, lab in zip(boxes, labels, strict=True)
        ]
        parts = self.model(self._images(images), targets)
        out = {LOSS_NAMES[k]: v for k, v in parts.items()}
        out["loss"] = sum(out.values())
        return out

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, score_threshold: float = 0.05) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``boxes`` (m, 4) xyxy pixels, ``scores`` (m,), ``labels`` (m,) in 0..K-1.

        Sorted by score, highest first; at most 100 per image, each above ``score_threshold``. Runs the
        model in eval() behaviour (torchvision's forward only detects then) and restores the mode after.
        """
        was_training = self.training
        heads = self.model.roi_heads
        threshold, heads.score_thresh = heads.score_thresh, score_threshold
        try:
            self.eval()
            detections = self.model(self._images(images))
        finally:
            heads.score_thresh = threshold
            self.train(was_training)
        out = []
        for d in detections:
            order = d["scores"].argsort(descending=True)
            out.append({"boxes": d["boxes"][order], "scores": d["scores"][order], "labels": d["labels"][order] - 1})
        return out

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.predict(images)


def _in_channels(backbone: nn.Module) -> int:
    """The input channels of a backbone: those of its first convolution."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise TypeError(f"{type(backbone).__name__} has no convolution to read its input channels from")
