"""The files of ``fovea detect``: what a trained detector takes (``IO_FILE`` in its run folder, so it runs on image
files without its data set), and the image files themselves: each read, resized to the model's input, its
detections drawn on the original image to OUTPUT/NAME.png and listed in OUTPUT/detections.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from fovea.errors import ConfigError
from fovea.run import Run
from fovea.vision import detection_data as ddata
from fovea.vision.detection_metrics import detect_all, draw_predictions

IO_FILE = "detector.json"
"""In a run folder: the classes, channels and largest pixel value the detector was trained on, so ``fovea detect``
needs no data set."""


class ModelIO(NamedTuple):
    """What a detector takes and gives: its class names, the channels of its images and their largest value."""

    classes: tuple[str, ...]
    channels: int
    max_value: int


def save_model_io(run_dir: Path, data: ddata.DetectionData) -> None:
    """Write ``data``'s classes, channels and largest pixel value to ``run_dir``/``IO_FILE``."""
    io = {"classes": list(data.classes), "channels": data.shape[0], "max_value": data.max_value}
    (run_dir / IO_FILE).write_text(json.dumps(io))


def read_model_io(run_dir: Path) -> ModelIO | None:
    """The ``ModelIO`` in ``run_dir``/``IO_FILE``; None where it is missing or unreadable (a run from before it)."""
    try:
        doc = json.loads((run_dir / IO_FILE).read_text())
        return ModelIO(tuple(doc["classes"]), int(doc["channels"]), int(doc["max_value"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def detect_files(model: nn.Module, run: Run, images: Sequence[str], io: ModelIO, size: int,
                 output: str | None = None, threshold: float = 0.5) -> dict:  # fmt: skip
    """Each image file read, resized to the ``size`` x ``size`` input of ``model``, its detections above
    ``threshold`` drawn on the original image to OUTPUT/NAME.png (OUTPUT: ``output``, else runs/NAME/detections)
    and listed in OUTPUT/detections.json. An unreadable image or one with the wrong channel count is reported
    and skipped; the others are still processed, and none processed is a ConfigError.

    Returns the figures {output_dir, images (processed), skipped, detections (their total)}.
    """
    from PIL import Image, UnidentifiedImageError

    out_dir = Path(output) if output else run.dir / "detections"
    out_dir.mkdir(parents=True, exist_ok=True)
    results, problems = {}, []
    for name in images:
        path = Path(name)
        try:
            with Image.open(path) as im:
                im.load()
                pil = im.convert("L" if io.channels == 1 else "RGB")  # what the model takes (colour to grey...)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            problems.append(f"{path}: cannot read it as an image ({e.__class__.__name__}: {e})")
            continue
        c = io.channels
        w, h = pil.size
        pixels = np.asarray(pil.resize((size, size), Image.BILINEAR), np.float32).reshape(size, size, c)
        x = torch.from_numpy(np.round(pixels * (io.max_value / 255.0))).permute(2, 0, 1)[None].to(torch.uint8)
        (pred,) = detect_all(model, x, threshold)
        pred["boxes"] = pred["boxes"] * torch.tensor([w / size, h / size] * 2)
        rgb = np.asarray(pil.convert("RGB"))
        upscale = max(1, 256 // max(w, h))
        big = rgb.repeat(upscale, 0).repeat(upscale, 1)
        target = out_dir / f"{path.stem}.png"
        Image.fromarray(draw_predictions(big, pred, io.classes, upscale)).save(target)
        results[str(path)] = {"output": str(target), "detections": [
            {"label": io.classes[int(k)], "score": round(float(s), 4), "box": [round(float(v), 2) for v in b]}
            for b, s, k in zip(pred["boxes"], pred["scores"], pred["labels"], strict=True)]}  # fmt: skip
    (out_dir / "detections.json").write_text(json.dumps(results, indent=1))
    for p in problems:
        run.say(f"skipped {p}")
    if not results:
        raise ConfigError(f"no image could be processed ({len(problems)} skipped): {problems[0]}")
    return {"output_dir": str(out_dir), "images": len(results), "skipped": len(problems),
            "detections": sum(len(r["detections"]) for r in results.values())}  # fmt: skip
