"""Classification + localisation (the notes, 11.2): the one object in an image, found by a backbone, a class head
(softmax loss) and a box head (L2 or GIoU loss), the two losses weighted and summed (a multitask loss)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from fovea.errors import ConfigError


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
