"""VOC's difficult objects and COCO's crowd regions are ignored in evaluation, as the VOC devkit and COCOeval do: a
detection that matches one counts neither as a true nor as a false positive, and they are not positives to find.
Tiny VOC and COCO trees are written here in their own formats; the scores are checked against pycocotools run on
the COCO files directly and against the VOC devkit's matching rule written out below."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_detection_data import voc_xml
from torchvision.ops import box_iou

from fovea.vision import detection_data as ddata
from fovea.vision.detection_metrics import mean_ap

DOG = ddata.VOC_CLASSES.index("dog")
PLAIN, HARD = (2.0, 2.0, 14.0, 14.0), (18.0, 18.0, 30.0, 30.0)  # xyxy on a 32x32 image, read at size 32: unscaled
AWAY = (1.0, 20.0, 9.0, 30.0)  # overlaps neither object


def voc_devkit_ap(found: list[tuple[tuple[float, ...], float]], truth: list[tuple[tuple[float, ...], bool]]) -> float:
    """AP of one class on one image by the VOC devkit's rule (VOCevaldet, all-point interpolation as from VOC2010):
    detections by falling score each take the truth box of largest IoU; at IoU > 0.5 a difficult one is ignored,
    a first hit of an ordinary one is a true positive, a second hit a false positive; difficult boxes are not
    counted as positives."""
    truth_boxes = torch.tensor([b for b, _ in truth])
    difficult = [d for _, d in truth]
    taken = [False] * len(truth)
    tp, fp = [], []
    for box, _ in sorted(found, key=lambda f: -f[1]):
        iou = box_iou(torch.tensor([box]), truth_boxes)[0]
        best = int(iou.argmax())
        if iou[best] > 0.5 and difficult[best]:
            continue
        hit = bool(iou[best] > 0.5) and not taken[best]
        taken[best] = taken[best] or hit
        tp.append(float(hit))
        fp.append(float(not hit))
    positives = len(truth) - sum(difficult)
    recall = np.cumsum(tp) / positives
    precision = np.cumsum(tp) / np.maximum(np.cumsum(tp) + np.cumsum(fp), 1e-12)
    mrec, mpre = np.concatenate([[0], recall, [1]]), np.concatenate([[0], precision, [0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


def as_predictions(found: list[tuple[tuple[float, ...], float]], label: int) -> list[dict]:
    """One image's detections (box, score), all of class ``label``, as a detector returns them."""
    boxes = torch.tensor([b for b, _ in found], dtype=torch.float32).reshape(-1, 4)
    return [{"boxes": boxes, "scores": torch.tensor([s for _, s in found]), "labels": torch.full((len(found),), label)}]


# ----------------------------------------------------------------------------- VOC: difficult objects


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """A VOC tree whose test set is one 32x32 image holding an ordinary dog and a difficult one."""
    root = tmp_path_factory.mktemp("vocignore")
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    Image.new("RGB", (32, 32), (90, 90, 90)).save(base / "JPEGImages" / "000001.jpg")
    objects = [("dog", PLAIN, 0), ("dog", HARD, 1)]
    (base / "Annotations" / "000001.xml").write_text(voc_xml("000001", (32, 32), objects))
    (base / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    return root


@pytest.mark.parametrize(
    "found, expected",
    [
        ([(HARD, 0.9), (PLAIN, 0.8)], 1.0),  # both dogs found: the difficult one is no false positive (0.5 before)
        ([(HARD, 0.9), (AWAY, 0.85), (PLAIN, 0.8)], 0.5),  # one real false positive, ranked above the hit
        ([(PLAIN, 0.9)], 1.0),  # missing the difficult dog costs nothing
    ],
)
def test_voc_difficult_objects_are_ignored_as_the_devkit_ignores_them(voc_root, found, expected):
    data = ddata.load("voc", "test", size=32, data_dir=voc_root)
    truth = [(PLAIN, False), (HARD, True)]
    assert voc_devkit_ap(found, truth) == pytest.approx(expected)
    res = mean_ap(as_predictions(found, DOG), data)
    assert res["map_50"] == pytest.approx(expected) and res["ap_per_class"]["dog"] == pytest.approx(expected)


def test_voc_keeps_difficult_objects_for_evaluation_only(voc_root):
    data = ddata.load("voc", "test", size=32, data_dir=voc_root)
    torch.testing.assert_close(data.boxes[0], torch.tensor([PLAIN]))  # what a detector trains on
    torch.testing.assert_close(data.ignored_boxes[0], torch.tensor([HARD]))
    assert data.labels[0].tolist() == [DOG] and data.ignored_labels[0].tolist() == [DOG]
    _, boxes, labels = data.batch([0])
    assert torch.equal(boxes[0], data.boxes[0]) and torch.equal(labels[0], data.labels[0])


# ----------------------------------------------------------------------------- COCO: crowd regions

CROWD_XYWH, PLAIN_XYWH = [16, 16, 14, 14], [2, 2, 12, 12]  # PLAIN and CROWD in COCO's x, y, width, height
CROWD = (16.0, 16.0, 30.0, 30.0)
INSIDE_CROWD = (18.0, 18.0, 22.0, 22.0)  # IoU with the crowd box 16 / 196, but wholly inside it


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    """A COCO tree whose val2017 (the test split) is one 32x32 image holding an ordinary zebra and a crowd of them."""
    root = tmp_path_factory.mktemp("cocoignore")
    (root / "coco" / "annotations").mkdir(parents=True)
    for part in ("train2017", "val2017"):
        (root / "coco" / part).mkdir()
        Image.new("RGB", (32, 32), (10, 20, 30)).save(root / "coco" / part / f"{1:012d}.jpg")
        annotations = [
            {"id": k + 1, "image_id": 1, "category_id": 3, "bbox": box, "iscrowd": crowd, "area": box[2] * box[3]}
            for k, (box, crowd) in enumerate([(PLAIN_XYWH, 0), (CROWD_XYWH, 1)])
        ]
        document = {
            "images": [{"id": 1, "file_name": f"{1:012d}.jpg", "width": 32, "height": 32}],
            "annotations": annotations,
            "categories": [{"id": 3, "name": "zebra", "supercategory": "x"}],
        }
        (root / "coco" / "annotations" / f"instances_{part}.json").write_text(json.dumps(document))
    return root


def pycocotools_map(annotations: Path, found) -> tuple[float, float]:
    """mAP@[.5:.95] and mAP@.5 of ``found`` (xyxy, score) on image 1, category 3, by pycocotools run directly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotations))
        results = [
            {"image_id": 1, "category_id": 3, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
            for (x1, y1, x2, y2), s in found
        ]
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


@pytest.mark.parametrize(
    "found, expected",
    [
        ([(CROWD, 0.9), (PLAIN, 0.8)], 1.0),  # both found: the crowd hit is no false positive (0.5 before)
        ([(INSIDE_CROWD, 0.95), (PLAIN, 0.8)], 1.0),  # crowds match by intersection over the detection's area
        ([(CROWD, 0.9), (AWAY, 0.85), (PLAIN, 0.8)], 0.5),  # one real false positive above the hit
    ],
)
def test_coco_crowd_regions_are_ignored_as_pycocotools_ignores_them(coco_root, found, expected):
    data = ddata.load("coco", "test", size=32, data_dir=coco_root)
    reference, reference_50 = pycocotools_map(coco_root / "coco" / "annotations" / "instances_val2017.json", found)
    res = mean_ap(as_predictions(found, 0), data)
    assert reference_50 == pytest.approx(expected)
    assert res["map_50"] == pytest.approx(reference_50) and res["map"] == pytest.approx(reference)


def test_coco_keeps_crowd_regions_for_evaluation_only(coco_root):
    data = ddata.load("coco", "test", size=32, data_dir=coco_root)
    torch.testing.assert_close(data.boxes[0], torch.tensor([PLAIN]))
    torch.testing.assert_close(data.ignored_boxes[0], torch.tensor([CROWD]))
    assert data.labels[0].tolist() == [0] and data.ignored_labels[0].tolist() == [0]
