"""How well a detector does, and pictures of what it finds: ``detect_all`` runs it over a set of images,
``mean_ap`` scores its detections by COCO's mAP (torchmetrics' MeanAveragePrecision, pycocotools backend), and
``picture`` draws true boxes (green) and predicted ones (red, with class and score) on a grid of images, with
``draw`` (images with their boxes and class names) and ``draw_predictions``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fovea.vision.detection_set import DetectionData
from fovea.vision.plots import image_grid

TRUE_COLOR, PRED_COLOR = "lime", "red"


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


def mean_ap(predictions: list[dict], data: DetectionData) -> dict:
    """COCO mAP@[.5:.95], mAP@.5, mAP@.75 and AP per class of ``predictions`` against ``data``'s boxes, through
    torchmetrics' MeanAveragePrecision (pycocotools backend).

    ``data``'s ignored regions (VOC's difficult objects, COCO's crowds) go in as crowd boxes (``iscrowd`` 1):
    COCOeval matches a detection to one by the intersection over the detection's area, any number of detections
    to the same crowd, and counts such a detection neither as a true nor as a false positive; the region is no
    positive to find. For a VOC difficult object this ignores every detection the VOC devkit ignores (IoU >= t
    implies intersection over the detection's area >= t) and also a smaller detection lying mostly inside it.
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")
    targets = []
    for i, (boxes, labels) in enumerate(zip(data.boxes, data.labels, strict=True)):
        ignored_boxes, ignored_labels = data.ignored(i)
        targets.append({
            "boxes": torch.cat([boxes, ignored_boxes]).cpu(),  # (n + m, 4)
            "labels": torch.cat([labels, ignored_labels]).cpu(),
            "iscrowd": torch.cat([torch.zeros(len(labels)), torch.ones(len(ignored_labels))]).long(),
        })  # fmt: skip
    metric.update(predictions, targets)
    res = metric.compute()
    per_class = dict(zip(res["classes"].flatten().tolist(), res["map_per_class"].flatten().tolist(), strict=True))
    return {"map": res["map"].item(), "map_50": res["map_50"].item(), "map_75": res["map_75"].item(),
            "ap_per_class": {data.classes[c]: ap for c, ap in per_class.items()}}  # fmt: skip


def evaluate_split(model: nn.Module, data: DetectionData, score_threshold: float = 0.05) -> dict:
    """mAPs of ``model`` on ``data``, plus its predictions."""
    predictions = detect_all(model, data.images, score_threshold)
    return {**mean_ap(predictions, data), "predictions": predictions}


def picture(data: DetectionData, predictions: list[dict], n: int = 8, threshold: float = 0.5,
            columns: int = 4) -> np.ndarray:  # fmt: skip
    """The first ``n`` images with their true boxes (green) and predicted boxes scored above ``threshold`` (red,
    with class and score), as one (H, W, 3) uint8 grid."""
    n = min(n, len(data))
    upscale = max(1, 256 // max(data.shape[1:]))
    kept = [{k: v[p["scores"] >= threshold] for k, v in p.items()} for p in predictions[:n]]
    truth = draw(data.images[:n], data.boxes[:n], data.labels[:n], [""] * len(data.classes), data.max_value,
                       upscale=upscale, color=TRUE_COLOR)  # fmt: skip
    drawn = [draw_predictions(t, p, data.classes, upscale) for t, p in zip(truth, kept, strict=True)]
    return image_grid(np.stack(drawn), columns)


def draw_predictions(rgb: np.ndarray, pred: dict, classes: Sequence[str], upscale: float,
                     width: int = 2) -> np.ndarray:  # fmt: skip
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


def draw(
    images: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    classes: Sequence[str],
    max_value: int,
    *,
    scores: Sequence[torch.Tensor] | None = None,
    upscale: int = 4,
    color: str = "red",
    width: int = 1,
) -> list[np.ndarray]:
    """Pictures of images with their boxes and class names, e.g. for W&B: a list of (H*upscale, W*upscale, 3) uint8.

    Args:
        images: (N, C, H, W) pixels in 0..max_value, C = 1 (grey) or 3.
        boxes: N (n_i, 4) xyxy boxes in the images' pixel coordinates.
        labels: N (n_i,) class indices.
        classes: class names, index = label.
        max_value: the largest pixel value, drawn as white.
        scores: N (n_i,) confidences shown after the class names (predictions); None for true boxes.
        upscale: each pixel becomes upscale x upscale pixels (nearest), so small canvases stay legible.
        color: box and text colour.
        width: box line width in drawn pixels.
    """
    from torchvision.utils import draw_bounding_boxes

    pictures = []
    for i, image in enumerate(images.detach().cpu()):
        rgb = (image.float() * (255 / max_value)).round().clamp(0, 255).to(torch.uint8).expand(3, -1, -1)
        rgb = rgb.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)  # (3, H*upscale, W*upscale)
        names = [classes[int(k)] for k in labels[i]]
        if scores is not None:
            names = [f"{name} {float(s):.2f}" for name, s in zip(names, scores[i], strict=True)]
        if names:  # torchvision warns on an image without boxes
            rgb = draw_bounding_boxes(rgb, boxes[i].detach().cpu().float() * upscale, names, colors=color, width=width)
        pictures.append(rgb.permute(1, 2, 0).contiguous().numpy())
    return pictures
