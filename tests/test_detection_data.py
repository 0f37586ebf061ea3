"""Detection data (vision/detection_data.py and the modules it gathers): the synthetic digits sets, VOC and COCO
read from tiny trees written here in their own formats (their difficult and crowd objects kept apart), the uniform
``load`` and the training augmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_iou

from fovea.errors import ConfigError
from fovea.vision import data as vdata
from fovea.vision import detection_data as ddata
from fovea.vision import detection_digits

SPLIT_SIZES = {"train": 1000, "val": 350, "test": 447}
ARGS = {"count": 64, "size": 64, "objects": (1, 5), "scale": (12, 32), "noise": 2, "seed": 0}


@pytest.fixture(scope="module")
def canvases() -> tuple[ddata.DetectionData, list[np.ndarray]]:
    """64 test canvases with, per digit, (source index in the split, x, y, side) of its pasted square."""
    return detection_digits._canvases("test", *ARGS.values())


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
    data, placed = detection_digits._canvases(split, *ARGS.values())
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


# ----------------------------------------------------------------------------- the uniform load


def test_every_entry_takes_the_uniform_arguments():
    for name in ("digits-detect", "digits-locate"):
        entry = ddata.DETECTION_DATASETS[name]
        direct = (ddata.digits_canvases if name == "digits-detect" else ddata.digits_locate)("val", count=8, seed=2)
        assert same(entry("val", size=64, count=8, seed=2, data_dir=None), direct)  # bit-identical at 64
    small = ddata.load("digits-locate", "test", size=32, count=16, seed=1)
    assert small.shape == (1, 32, 32) and len(small) == 16
    assert all(len(b) == 1 and (b >= 0).all() and (b <= 32).all() for b in small.boxes)
    assert set(ddata.DETECTION_DATASETS) == {"digits-detect", "digits-locate", "voc", "coco"}
    with pytest.raises(ConfigError, match="count = 0"):
        ddata.load("digits-detect", "val", count=0)
    with pytest.raises(ConfigError, match="size = -4"):
        ddata.load("voc", "val", size=-4)


# ----------------------------------------------------------------------------- Pascal VOC 2007

VOC_IMAGES = {  # id: (split, (width, height), PIL mode, fill, [(name, (xmin, ymin, xmax, ymax), difficult)])
    "000001": (
        "train",
        (100, 50),
        "RGB",
        (255, 0, 0),
        [("dog", (10, 5, 60, 45), 0), ("person", (1, 1, 20, 20), 1), ("car", (50, 10, 100, 50), 0)],
    ),
    "000002": ("train", (40, 80), "L", 128, [("cat", (0, 0, 40, 80), 0), ("tvmonitor", (10, 10, 10.5, 20), 0)]),
    "000003": ("val", (30, 30), "RGB", (0, 0, 255), [("bird", (5, 5, 25, 25), 1)]),
    "000004": ("test", (20, 20), "RGB", (0, 255, 0), []),
    "000005": ("test", (64, 32), "RGB", (9, 9, 9), [("sheep", (12.5, 4, 44.5, 28), 0)]),
}


def voc_xml(name: str, size: tuple[int, int], objects: list) -> str:
    parts = [
        f"<object><name>{cls}</name><difficult>{hard}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for cls, (x1, y1, x2, y2), hard in objects
    ]
    return (
        f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{''.join(parts)}</annotation>"
    )


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """DATA_DIR holding VOCdevkit/VOC2007 with the images of VOC_IMAGES."""
    root = tmp_path_factory.mktemp("voc")
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for name, (_, size, mode, fill, objects) in VOC_IMAGES.items():
        Image.new(mode, size, fill).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
        (base / "Annotations" / f"{name}.xml").write_text(voc_xml(name, size, objects))
    for split in ("train", "val", "test"):
        names = [n for n, (s, *_) in VOC_IMAGES.items() if s == split]
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_voc_splits_classes_boxes_and_pixels(voc_root, monkeypatch):
    train = ddata.load("voc", "train", size=32, data_dir=voc_root)
    assert len(train) == 2 and train.shape == (3, 32, 32) and train.images.dtype == torch.uint8
    assert train.max_value == 255 and train.classes == ddata.VOC_CLASSES and len(train.classes) == 20
    assert train.classes[:2] == ("aeroplane", "bicycle") and train.classes[-1] == "tvmonitor"
    # 100x50 -> 32x32: x * 0.32, y * 0.64; the difficult person is kept apart, for evaluation to ignore.
    torch.testing.assert_close(train.boxes[0], torch.tensor([[3.2, 3.2, 19.2, 28.8], [16.0, 6.4, 32.0, 32.0]]))
    assert train.labels[0].tolist() == [ddata.VOC_CLASSES.index("dog"), ddata.VOC_CLASSES.index("car")]
    torch.testing.assert_close(train.ignored_boxes[0], torch.tensor([[0.32, 0.64, 6.4, 12.8]]))
    assert train.ignored_labels[0].tolist() == [ddata.VOC_CLASSES.index("person")]
    assert train.ignored_boxes[1].shape == (0, 4) and train.ignored_labels[1].shape == (0,)
    # 40x80 -> 32x32: the 0.5 px wide monitor becomes 0.4 px wide and is dropped; the cat fills the image.
    torch.testing.assert_close(train.boxes[1], torch.tensor([[0.0, 0.0, 32.0, 32.0]]))
    assert train.labels[1].tolist() == [ddata.VOC_CLASSES.index("cat")]
    red, grey = train.images[0].int(), train.images[1].int()
    assert (red[0] >= 250).all() and (red[1:] <= 5).all()  # RGB order kept
    assert (grey - 128).abs().max() <= 2 and torch.equal(grey[0], grey[1])  # a grey JPEG comes out as RGB
    val = ddata.load("voc", "val", size=32, data_dir=voc_root)
    assert len(val) == 1 and val.boxes[0].shape == (0, 4) and val.labels[0].shape == (0,)  # only a difficult bird
    assert val.ignored_labels[0].tolist() == [ddata.VOC_CLASSES.index("bird")]
    monkeypatch.setenv("FOVEA_DATA", str(voc_root))  # data_dir None: $FOVEA_DATA
    test = ddata.load("voc", "test", size=16)
    assert len(test) == 2 and test.shape == (3, 16, 16) and test.boxes[0].shape == (0, 4)  # no objects at all
    torch.testing.assert_close(test.boxes[1], torch.tensor([[3.125, 2.0, 11.125, 14.0]]))  # 64x32 -> 16x16
    assert test.labels[1].tolist() == [ddata.VOC_CLASSES.index("sheep")]
    assert len(ddata.voc("train", size=8, count=1, data_dir=voc_root)) == 1


def test_voc_missing_and_corrupt_files(voc_root, tmp_path):
    with pytest.raises(ConfigError, match="VOCdevkit/VOC2007") as missing:
        ddata.load("voc", "train", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(missing.value) and "not downloaded automatically" in str(missing.value)
    root = tmp_path / "data"
    shutil.copytree(voc_root, root)
    base = root / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(ConfigError, match=r"no .*val\.txt"):
        ddata.load("voc", "val", data_dir=root)
    (base / "Annotations" / "000001.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(ConfigError, match=r"000001\.xml is not a readable VOC annotation"):
        ddata.load("voc", "train", data_dir=root)
    (base / "Annotations" / "000005.xml").write_text(voc_xml("000005", (64, 32), [("unicorn", (1, 1, 9, 9), 0)]))
    with pytest.raises(ConfigError, match="'unicorn'"):
        ddata.load("voc", "test", data_dir=root)
    (base / "JPEGImages" / "000004.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match=r"cannot read image .*000004\.jpg"):
        ddata.load("voc", "test", data_dir=root)


# ----------------------------------------------------------------------------- COCO 2017

COCO_CATEGORIES = [{"id": 7, "name": "apple", "supercategory": "x"}, {"id": 3, "name": "zebra", "supercategory": "x"}]
COCO_TRAIN_IDS = [40, 3, 25, 7, 12, 100, 5, 60, 8, 90, 33, 18]  # sorted: 3, 5, ... 90 train, 100 val (12 // 10 = 1)
COCO_SIZES = {5: (20, 10), 1: (16, 16)}  # (width, height); the others are 8x8
COCO_ANNOTATIONS = {  # part: [(image id, category id, xywh, iscrowd)]
    "train2017": [
        (5, 3, [2, 1, 10, 4], 0),
        (5, 7, [0, 0, 20, 10], 1),
        (5, 7, [15, 5, 5, 5], 0),
        (100, 7, [1, 1, 4, 4], 0),
    ],
    "val2017": [(1, 3, [0, 0, 8, 8], 0)],
}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    """DATA_DIR holding coco/{train2017,val2017}/ and coco/annotations/instances_*.json."""
    root = tmp_path_factory.mktemp("cocodata")
    (root / "coco" / "annotations").mkdir(parents=True)
    for part, ids in (("train2017", COCO_TRAIN_IDS), ("val2017", [2, 1])):
        (root / "coco" / part).mkdir()
        images = []
        for i in ids:
            size = COCO_SIZES.get(i, (8, 8))
            Image.new("RGB", size, (i, 2 * i, 100)).save(root / "coco" / part / f"{i:012d}.jpg", quality=95)
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": size[0], "height": size[1]})
        annotations = [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": box, "iscrowd": crowd, "area": box[2] * box[3]}
            for k, (i, c, box, crowd) in enumerate(COCO_ANNOTATIONS[part])
        ]
        document = {"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
        (root / "coco" / "annotations" / f"instances_{part}.json").write_text(json.dumps(document))
    return root


def test_coco_splits_classes_and_boxes(coco_root):
    train = ddata.load("coco", "train", size=32, data_dir=coco_root)
    val = ddata.coco("val", size=32, data_dir=coco_root)
    test = ddata.load("coco", "test", size=32, data_dir=coco_root)
    assert (len(train), len(val), len(test)) == (11, 1, 2)
    assert train.classes == ("zebra", "apple") == test.classes  # category ids 3, 7 in id order -> labels 0, 1
    assert train.shape == (3, 32, 32) and train.images.dtype == torch.uint8 and train.max_value == 255
    # image 3 (first by id) has no annotations; image 5 (20x10 -> 32x32: x * 1.6, y * 3.2) keeps its crowd apart.
    assert train.boxes[0].shape == (0, 4) and train.labels[0].shape == (0,)
    torch.testing.assert_close(train.boxes[1], torch.tensor([[3.2, 3.2, 19.2, 16.0], [24.0, 16.0, 32.0, 32.0]]))
    assert train.labels[1].tolist() == [0, 1]
    torch.testing.assert_close(train.ignored_boxes[1], torch.tensor([[0.0, 0.0, 32.0, 32.0]]))
    assert train.ignored_labels[1].tolist() == [1] and sum(len(b) for b in train.ignored_boxes) == 1
    assert sum(len(b) for b in train.boxes) == 2
    # val: the last image of train2017 by id (100, 8x8 -> x4); test: val2017, image 1 (16x16 -> x2) then image 2.
    torch.testing.assert_close(val.boxes[0], torch.tensor([[4.0, 4.0, 20.0, 20.0]]))
    assert val.labels[0].tolist() == [1]
    assert (val.images[0, 2].int() - 100).abs().max() <= 3  # its blue channel
    torch.testing.assert_close(test.boxes[0], torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert test.labels[0].tolist() == [0] and test.boxes[1].shape == (0, 4)
    capped = ddata.load("coco", "train", size=32, count=2, data_dir=coco_root)
    assert len(capped) == 2 and torch.equal(capped.images, train.images[:2])


def test_coco_missing_and_corrupt_files(coco_root, tmp_path):
    with pytest.raises(ConfigError, match="instances_train2017.json") as missing:
        ddata.load("coco", "train", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "coco") in str(missing.value)
    assert "not downloaded automatically" in str(missing.value)
    root = tmp_path / "data"
    shutil.copytree(coco_root, root)
    (root / "coco" / "annotations" / "instances_val2017.json").write_text('{"images": [{"id": 1,')
    with pytest.raises(ConfigError, match=r"instances_val2017\.json is not a COCO annotation file"):
        ddata.load("coco", "test", data_dir=root)
    (root / "coco" / "train2017" / f"{5:012d}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ConfigError, match=r"cannot read image .*000000000005\.jpg"):
        ddata.load("coco", "train", data_dir=root)


# ----------------------------------------------------------------------------- augmentation

S = 48


def blocks(channels: int, n: int = 12, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Black S x S images holding up to two filled rectangles of value 40 * (label + 1), one per half; the first
    image has none. The pixel at a box's centre tells its label, so a box and its label can be checked together."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, channels, S, S, dtype=torch.uint8)
    boxes, labels = [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)]
    for i in range(1, n):
        box, label = [], []
        for left in (0, S // 2):
            x, y = left + int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))
            w, h = int(torch.randint(10, 18, (1,), generator=g)), int(torch.randint(12, 34, (1,), generator=g))
            k = int(torch.randint(0, 5, (1,), generator=g))
            images[i, :, y : y + h, x : x + w] = 40 * (k + 1)
            box.append([x, y, x + w, y + h])
            label.append(k)
        boxes.append(torch.tensor(box, dtype=torch.float32))
        labels.append(torch.tensor(label))
    return images, boxes, labels


def test_flip_mirrors_boxes_exactly():
    images, boxes, labels = blocks(1)
    out, new_boxes, new_labels = ddata.augmenter("flip")(images, boxes, labels, torch.Generator().manual_seed(0))
    flipped = 0
    for image, box, label, o, ob, ol in zip(images, boxes, labels, out, new_boxes, new_labels, strict=True):
        assert torch.equal(ol, label)
        if torch.equal(o, image.flip(-1)) and len(box):
            flipped += 1
            x1, y1, x2, y2 = box.T
            assert torch.equal(ob, torch.stack([S - x2, y1, S - x1, y2], 1))  # x1' = S - x2, x2' = S - x1
        else:
            assert torch.equal(o, image) and torch.equal(ob, box)
    assert 0 < flipped < len(images) - 1  # p = 0.5: some flipped, some not


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spec", ["scale:0.5:1.6", "iou-crop", "flip, scale:0.7:1.3, iou-crop"])
def test_crops_and_zooms_keep_valid_boxes_with_their_labels(spec, channels):
    images, boxes, labels = blocks(channels)
    out, new_boxes, new_labels = ddata.augmenter(spec)(images, boxes, labels, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8 and len(new_boxes) == len(new_labels) == len(images)
    for image, box, label in zip(out, new_boxes, new_labels, strict=True):
        assert box.dtype == torch.float32 and label.dtype == torch.int64 and box.shape == (len(label), 4)
        assert (box >= 0).all() and (box <= S).all()
        assert ((box[:, 2] - box[:, 0]) >= 1).all() and ((box[:, 3] - box[:, 1]) >= 1).all()
        for (x1, y1, x2, y2), k in zip(box.tolist(), label.tolist(), strict=True):
            if x2 - x1 >= 6 and y2 - y1 >= 6:  # far enough from the edges that resizing leaves the fill exact
                centre = image[:, int((y1 + y2) / 2), int((x1 + x2) / 2)].int()
                assert ((centre - 40 * (k + 1)).abs() <= 1).all()
    changed = sum(len(a) != len(b) or not torch.equal(a, b) for a, b in zip(boxes, new_boxes, strict=True))
    assert changed >= len(images) // 2
    assert new_boxes[0].shape == (0, 4) and (out[0] == 0).all()  # no boxes: nothing to crop around, stays blank


def test_scale_zooms_by_its_factor_at_a_random_place():
    images, boxes, labels = blocks(1)
    out, new_boxes, new_labels = ddata.augmenter("scale:0.5:0.5")(images, boxes, labels, torch.Generator())
    shifts = set()
    for image, small, box, new, label, new_label in zip(images, out, boxes, new_boxes, labels, new_labels, strict=True):
        assert torch.equal(new_label, label)  # zooming out loses no box
        shift = new[:, :2] - box[:, :2] / 2  # each box halved, all moved by one offset within the S / 2 margin
        torch.testing.assert_close(new[:, 2:] - new[:, :2], (box[:, 2:] - box[:, :2]) / 2)
        assert (shift == shift[:1]).all() and ((shift >= 0) & (shift <= S / 2)).all()
        shifts.update(map(tuple, shift.tolist()))
        assert abs(4 * small.float().mean() - image.float().mean()) < 1  # a quarter of the area on a black canvas
    assert len(shifts) > 3
    out, new_boxes, _ = ddata.augmenter("scale:2:2")(images, boxes, labels, torch.Generator())
    widths = torch.cat([b[:, 2] - b[:, 0] for b in new_boxes])
    assert widths.max() > 18 and (widths <= 36).all()  # doubled (10..17 px wide -> 20..34), or cut by the crop


def test_augment_is_deterministic_and_leaves_the_global_rng_alone():
    images, boxes, labels = blocks(3)
    augment = ddata.augmenter("flip,scale:0.5:1.5,iou-crop")
    state = torch.get_rng_state()
    a = augment(images, boxes, labels, torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())
    b = augment(images, boxes, labels, torch.Generator().manual_seed(5))
    c = augment(images, boxes, labels, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1] + a[2], b[1] + b[2], strict=True))
    assert not torch.equal(a[0], c[0])
    none = ddata.augmenter("")(images, boxes, labels, torch.Generator())
    assert none[0] is images and none[1] == boxes and ddata.parse_augment(" ") == ()


def test_bad_augment_specs():
    assert ddata.parse_augment("flip,scale:0.5:2") == (("flip", ()), ("scale", (0.5, 2.0)))
    for spec in ("flip,rotate", "flip:1", "crop"):
        with pytest.raises(ConfigError, match="valid items.*flip, scale:LO:HI, iou-crop"):
            ddata.augmenter(spec)
    for spec in ("scale:2:1", "scale:0.5", "scale:a:b", "scale:0:1", "scale:1:inf"):
        with pytest.raises(ConfigError, match="scale:LO:HI with numbers 0 < LO <= HI"):
            ddata.parse_augment(spec)
    with pytest.raises(ConfigError, match="twice"):
        ddata.parse_augment("flip,iou-crop,flip")
