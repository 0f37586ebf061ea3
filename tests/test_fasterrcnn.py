"""Faster R-CNN on a Fovea backbone (vision/fasterrcnn.py): the detector contract, sizes, and that it learns."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from fovea import backbones
from fovea.vision.detection_data import digits_canvases
from fovea.vision.fasterrcnn import FasterRCNNDetector

K = 10
PARTS = {"rpn_objectness", "rpn_box", "roi_class", "roi_box"}


@pytest.fixture(scope="module")
def data():
    return digits_canvases("train", count=4, seed=1)


def tiny(seed: int = 0, **options) -> FasterRCNNDetector:
    torch.manual_seed(seed)
    backbone = backbones.build("convnet", (1, 64, 64), widths=(4, 8))
    return FasterRCNNDetector(backbone, K, 16, 64, representation=32, **options)


def batch(data, n: int = 4):
    return data.images[:n], data.boxes[:n], data.labels[:n]


def test_loss_parts_finite_and_backpropagate(data):
    model = tiny().train()
    out = model.loss(*batch(data))
    assert set(out) == PARTS | {"loss"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], sum(out[k] for k in PARTS))
    out["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"
    assert model.model.backbone.body.stages[0].weight.grad.abs().sum() > 0  # reaches the first layer


def test_loss_takes_float_pixels_and_an_image_without_boxes(data):
    model = tiny().train()
    images, boxes, labels = batch(data, 2)
    boxes = [boxes[0], torch.zeros(0, 4)]
    labels = [labels[0], torch.zeros(0, dtype=torch.int64)]
    out = model.loss(images.float(), boxes, labels)
    assert torch.isfinite(out["loss"])


def test_no_resize_to_800_and_upscale(data):
    transform = tiny().model.transform
    assert transform.min_size == (64,) and transform.max_size == 64
    images = [im.float() / 16 for im in data.images[:2]]
    assert transform(images)[0].tensors.shape[-2:] == (64, 64)
    upscaled = tiny(upscale=2).model.transform
    assert upscaled.min_size == (128,) and upscaled(images)[0].tensors.shape[-2:] == (128, 128)


def check_detections(detections, n: int, threshold: float) -> None:
    assert len(detections) == n
    for d in detections:
        assert set(d) == {"boxes", "scores", "labels"}
        m = len(d["scores"])
        assert m <= 100 and d["boxes"].shape == (m, 4) and d["labels"].shape == (m,)
        assert d["boxes"].dtype == torch.float32 and d["labels"].dtype == torch.int64
        assert (d["scores"] > threshold).all() and (d["scores"].diff() <= 0).all()
        assert ((d["labels"] >= 0) & (d["labels"] < K)).all()
        assert ((d["boxes"] >= 0) & (d["boxes"] <= 64)).all()
        assert (d["boxes"][:, 2:] >= d["boxes"][:, :2]).all()


@pytest.mark.parametrize("upscale", [1, 2])
def test_predict_format(data, upscale):
    model = tiny(upscale=upscale).eval()
    detections = model.predict(data.images[:3], score_threshold=0.0)
    check_detections(detections, 3, 0.0)
    assert sum(len(d["scores"]) for d in detections) > 0, "an untrained model at threshold 0 should detect something"
    assert any(len(d["scores"]) == 100 for d in detections)  # capped, not all candidates
    assert all(len(d["scores"]) == 0 for d in model.predict(data.images[:3], score_threshold=1.0))
    same = model(data.images[:3])
    assert all(torch.equal(a["scores"], b["scores"]) for a, b in zip(same, model.predict(data.images[:3]), strict=True))
    assert model.model.roi_heads.score_thresh == 0.05  # the threshold is restored


def test_predict_in_train_mode_keeps_the_mode(data):
    model = tiny().train()
    check_detections(model.predict(data.images[:2]), 2, 0.05)
    assert model.training and model.model.backbone.training


def test_state_dict_round_trip(data):
    a, b = tiny(seed=0).eval(), tiny(seed=1).eval()
    b.load_state_dict(a.state_dict())
    for x, y in zip(a.predict(data.images[:2], 0.0), b.predict(data.images[:2], 0.0), strict=True):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])


def test_bad_images_are_refused(data):
    model = tiny()
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model.predict(data.images[:2].expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="box sets"):
        model.train().loss(data.images[:2], data.boxes[:1], data.labels[:1])
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9"):
        model.loss(data.images[:1], data.boxes[:1], [data.labels[0] + K])
    with pytest.raises(RuntimeError, match="train"):
        model.eval().loss(*batch(data, 2))


def test_predict_undoes_the_background_shift(data):
    """torchvision's class c + 1 is our class c: a box predictor that always says torchvision class K gives K - 1."""
    model = tiny().eval()
    cls = model.model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        cls.weight.zero_()
        cls.bias.fill_(-10.0)
        cls.bias[K] = 10.0
    detections = model.predict(data.images[:2])
    assert all(len(d["labels"]) > 0 and (d["labels"] == K - 1).all() for d in detections)


def test_overfits_a_tiny_batch(data):
    """60 steps on 2 canvases: the loss halves and each canvas's top detection is a true digit, box and label."""
    torch.manual_seed(0)
    model = FasterRCNNDetector(backbones.build("convnet", (1, 64, 64), widths=(8, 16)), K, 16, 64).train()
    images, boxes, labels = batch(data, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(60):
        out = model.loss(images, boxes, labels)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    model.eval()
    for d, true_boxes, true_labels in zip(model.predict(images), boxes, labels, strict=True):
        iou = box_iou(d["boxes"][:1], true_boxes)[0]  # (n_i,) of the top detection with each true box
        best = iou.argmax()
        assert iou[best] > 0.5 and d["labels"][0] == true_labels[best], (d["labels"][:3], true_labels)
