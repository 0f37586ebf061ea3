"""Boxes as distances from a grid of points, and dense predictions turned into detections.

A dense detector (``vision.fcos``) predicts at every cell centre of its feature maps the distances (left, top,
right, bottom) to the sides of the box that holds it, in units of the map's stride: ``grid_points`` gives the
centres, ``encode`` and ``decode`` go between xyxy pixel boxes and distances, ``centreness`` scores a point by
how near the middle of its box it lies (FCOS, Tian et al. 2019), and ``postprocess`` keeps one image's best
boxes with per-class non-maximum suppression.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import batched_nms

MAX_DETECTIONS = 100
"""Detections kept per image, as in COCO's evaluation."""


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
