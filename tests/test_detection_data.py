"""The synthetic detection data sets digits-detect and digits-locate (vision/detection_data.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from fovea.errors import ConfigError
from vision import data as vdata
from vision import detection_data as ddata

SPLIT_SIZES = {"train": 1000, "val": 350, "test": 447}
ARGS = {"count": 64, "size": 64, "objects": (1, 5), "scale": (12, 32), "noise": 2, "seed": 0}


@pytest.fixture(scope="module")
def canvases() -> tuple[ddata.DetectionData, list[np.ndarray]]:
    """64 test canvases with, per digit, (source index in the split, x, y, side) of its pasted square."""
    return ddata._canvases("test", *ARGS.values())


def same(a: ddata.DetectionData, b: ddata.DetectionData) -> bool:
    return (
        torch.equal(a.images, b.images)
        and len(a.boxes) == len(b.boxes)
        and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
        and all(torch.equal(x, y) for x, y in zip(a.labels, b.labels, strict=True))
    )


def test_deterministic_and_seeded():
    a = ddata.digits_canvases("val", count=32, seed=3)
    assert same(a, ddata.digits_canvases("val", count=32, seed=3))
    assert not torch.equal(a.images, ddata.digits_canvases("val", count=32, seed=4).images)
    assert not torch.equal(a.images, ddata.digits_canvases("test", count=32, seed=3).images)


def test_layout_and_default_counts():
    val = ddata.load("digits-detect", "val")
    assert len(val) == ddata.CANVASES["val"] == 500 and ddata.CANVASES["train"] == 4000
    assert val.shape == (1, 64, 64) and val.images.dtype == torch.uint8 and val.max_value == 16
    assert val.classes == tuple("0123456789") and int(val.images.max()) <= 16
    assert all(
        b.dtype == torch.float32 and b.shape == (len(lab), 4) for b, lab in zip(val.boxes, val.labels, strict=True)
    )
    assert all(lab.dtype == torch.int64 for lab in val.labels)
    moved = val.to("cpu")
    assert same(moved, val) and isinstance(moved, ddata.DetectionData)
    small = ddata.digits_canvases("train", count=5, size=40, scale=(8, 16))
    assert small.shape == (1, 40, 40) and len(small) == 5


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_digits_come_from_their_own_split(split):
    data, placed = ddata._canvases(split, *ARGS.values())
    source = vdata.digits(split)
    assert len(source) == SPLIT_SIZES[split]
    for labels, where in zip(data.labels, placed, strict=True):
        assert ((where[:, 0] >= 0) & (where[:, 0] < SPLIT_SIZES[split])).all()
        assert torch.equal(labels, source.labels[where[:, 0]])
    # The pixels trace back to that split's digit: the canvas holds at least the scaled digit (pasted with max).
    for image, where in zip(data.images, placed, strict=True):
        for index, x, y, side in where.tolist():
            digit = F.interpolate(source.images[index][None].float(), size=(side, side), mode="bilinear")
            digit = digit[0, 0].round().to(torch.uint8)
            assert (image[0, y : y + side, x : x + side] >= digit).all()


def test_counts_labels_and_boxes(canvases):
    data, placed = canvases
    lo, hi = ARGS["scale"]
    counts = [len(b) for b in data.boxes]
    assert min(counts) >= 1 and max(counts) <= 5 and len(set(counts)) > 2
    for boxes, labels, where in zip(data.boxes, data.labels, placed, strict=True):
        assert ((labels >= 0) & (labels <= 9)).all()
        x1, y1, x2, y2 = boxes.T
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 64).all() and (y2 <= 64).all()
        assert (boxes == boxes.round()).all()  # exact pixel coordinates
        side = torch.from_numpy(where[:, 3]).float()
        assert ((side >= lo) & (side <= hi)).all()
        # The tight box lies inside the pasted square: never larger than the scaled digit, possibly smaller.
        x, y = torch.from_numpy(where[:, 1]).float(), torch.from_numpy(where[:, 2]).float()
        assert (x1 >= x).all() and (y1 >= y).all() and (x2 <= x + side).all() and (y2 <= y + side).all()
        w, h = x2 - x1, y2 - y1
        assert (w >= 1).all() and (h >= side / 2).all()  # digits are tall: at least half the square high


def test_boxes_of_a_canvas_overlap_little(canvases):
    data, _ = canvases
    for boxes in data.boxes:
        iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
        assert (iou <= ddata.MAX_IOU + 1e-6).all()
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        inter = iou * (area[:, None] + area[None, :]) / (1 + iou)  # IoU = I / (A + B - I)
        assert (inter <= ddata.MAX_COVER * torch.minimum(area[:, None], area[None, :]) + 1e-3).all()


def test_every_box_edge_touches_lit_pixels(canvases):
    data, _ = canvases
    for image, boxes in zip(data.images[:, 0], data.boxes, strict=True):
        lit = image > ddata.LIT
        for x1, y1, x2, y2 in boxes.long().tolist():
            assert lit[y1, x1:x2].any() and lit[y2 - 1, x1:x2].any()  # top and bottom rows
            assert lit[y1:y2, x1].any() and lit[y1:y2, x2 - 1].any()  # left and right columns


def test_background_is_noisy_but_dark(canvases):
    data, placed = canvases
    outside = torch.ones(data.images.shape, dtype=torch.bool)
    for i, where in enumerate(placed):
        for _, x, y, side in where.tolist():
            outside[i, 0, y : y + side, x : x + side] = False
    background = data.images[outside]
    assert int(background.max()) == ARGS["noise"] and (background > 0).float().mean() > 0.5


def test_locate_has_exactly_one_digit():
    data = ddata.load("digits-locate", "train", count=50, seed=1)
    assert len(data) == 50 and all(
        len(b) == 1 and len(lab) == 1 for b, lab in zip(data.boxes, data.labels, strict=True)
    )
    assert len({int(lab) for lab in data.labels}) > 5


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ConfigError, match="digits-detect"):
        ddata.load("digit-detect", "train")
    with pytest.raises(ConfigError, match="train, val, test"):
        ddata.load("digits-detect", "training")
    with pytest.raises(ConfigError, match="scale"):
        ddata.digits_canvases("val", size=20, scale=(12, 32))
    with pytest.raises(ConfigError, match="objects"):
        ddata.digits_canvases("val", objects=(0, 3))
    with pytest.raises(ConfigError, match="noise"):
        ddata.digits_canvases("val", noise=5)


def test_draw(canvases):
    data, _ = canvases
    pictures = ddata.draw(data.images[:4], data.boxes[:4], data.labels[:4], data.classes, data.max_value)
    assert len(pictures) == 4
    assert all(p.shape == (256, 256, 3) and p.dtype == np.uint8 for p in pictures)
    for picture, boxes in zip(pictures, data.boxes[:4], strict=True):
        for x1, y1, x2, y2 in (boxes * 4).long().tolist():
            mid = (y1 + y2) // 2
            assert tuple(picture[mid, x1]) == (255, 0, 0) and tuple(picture[mid, x2]) == (255, 0, 0)
    plain = ddata.draw(data.images[:1], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], data.classes, 16)[0]
    assert (plain[..., 0] == plain[..., 1]).all() and (plain[..., 1] == plain[..., 2]).all()  # grey, no boxes
    scores = [torch.rand(len(data.boxes[0]))]
    scored = ddata.draw(data.images[:1], data.boxes[:1], data.labels[:1], data.classes, 16, scores=scores)
    assert scored[0].shape == (256, 256, 3)
