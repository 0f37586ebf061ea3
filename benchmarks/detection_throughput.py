"""Detection training images/s with augmentation: Fovea's loop (batches read and augmented by DataLoader workers,
pinned on CUDA) against the loop of torchvision's detection reference (a per-image data set applying transforms
v2, ``DataLoader(shuffle=True, num_workers=W, collate_fn=list)``), in one script.

Both sides train the same FCOS, built by Fovea's builder from the ``detect-digits`` recipe, with the same
AdamW, batch size and augmentation pipeline (``--augment``, default flip + SSD's IoU crop, per image in Python:
the part that workers take off the training process). Ours is ``fovea train`` through a Run (checkpoints,
metrics.jsonl, the progress bar, autocast and channels_last); its figure is the ``perf/images_per_s`` that
the loop logs for each epoch's training pass. The peer is fp32 ``zero_grad, backward, clip, step``, timed over
the same span. The first epoch of each side is left out (warm-up); the figure is the median of the rest. Ours
also runs with ``--workers 0`` (reading in the training process), to show what the workers bring.

    python -m benchmarks.detection_throughput [--workers 2] [--epochs 4] [--size 96] [--images 512]
        [--augment flip,iou-crop] [--device auto]

Last line: {"ours", "peer", "ratio", "ours_workers_0", "workers_gain", "device", ...}; images/s (ratio > 1:
ours is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from fovea.cli import print_figures
from fovea.config import get_recipe
from fovea.errors import ConfigError
from fovea.run import Run, pick_device, seed_everything
from fovea.vision import detect
from fovea.vision import detection_data as ddata

STEPS = {"flip": lambda size: [v2.RandomHorizontalFlip(0.5)],
         "iou-crop": lambda size: [v2.RandomIoUCrop(), v2.Resize(size, antialias=True)]}  # fmt: skip
"""The peer's transforms for each item of --augment: torchvision's own, as its reference scripts compose them."""


class PerImage(torch.utils.data.Dataset):
    """The reference recipe's data set: item i is image i with its target, through the transforms."""

    def __init__(self, data: ddata.DetectionData, transform: v2.Compose) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        image = tv_tensors.Image(self.data.images[i])
        boxes = tv_tensors.BoundingBoxes(self.data.boxes[i], format="XYXY", canvas_size=tuple(image.shape[-2:]))
        return self.transform(image, {"boxes": boxes, "labels": self.data.labels[i]})


def collate(batch: list) -> tuple:
    return tuple(zip(*batch, strict=True))


def peer(cfg: detect.DetectorConfig, device: torch.device, workers: int) -> list[float]:
    """Images/s of each training pass of the reference loop."""
    seed_everything(cfg.seed)
    tr = detect.load_split(cfg, "train")
    model = detect.build(cfg, tr).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    size = (cfg.size, cfg.size)
    steps = [s for name, _ in ddata.parse_augment(cfg.augment) for s in STEPS[name](size)]
    transform = v2.Compose([*steps, v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()])
    loader = torch.utils.data.DataLoader(PerImage(tr, transform), batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=workers, collate_fn=collate, drop_last=True,
                                         pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    rates = []
    for _ in range(cfg.epochs):
        model.train()
        start, seen = time.perf_counter(), 0
        for images, targets in loader:
            x = torch.stack(images).to(device, non_blocking=True)
            boxes = [t["boxes"].as_subclass(torch.Tensor).to(device, non_blocking=True) for t in targets]
            labels = [t["labels"].to(device, non_blocking=True) for t in targets]
            loss = model.loss(x, boxes, labels)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            seen += len(images)
        loss.item()  # the device is done with the epoch
        rates.append(seen / (time.perf_counter() - start))
    return rates


def ours(cfg: detect.DetectorConfig, device: torch.device, runs_dir: str) -> list[float]:
    """Images/s of each training pass as Fovea's loop logs it, from the run's metrics.jsonl."""
    with Run.create("detect-digits", cfg, runs_dir=runs_dir, device=str(device), wandb="disabled") as run:
        detect.train(cfg, run)
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    rates = [row["perf/images_per_s"] for row in rows if "perf/images_per_s" in row]
    if len(rates) != cfg.epochs:
        raise RuntimeError(f"the run logged perf/images_per_s {len(rates)} times in {cfg.epochs} epochs ({run.dir})")
    return rates


def steady(rates: list[float]) -> float:
    """The median images/s after the first epoch (warm-up)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers on both sides (default: 2)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run, the first one untimed (default: 4)")
    p.add_argument("--size", type=int, default=96, help="canvas side in pixels (default: 96)")
    p.add_argument("--images", type=int, default=512, help="training canvases (default: 512)")
    p.add_argument("--augment", default="flip,iou-crop", help="items of flip, iou-crop (default: flip,iou-crop)")
    p.add_argument("--batch-size", type=int, default=32, help="minibatch size (default: 32)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    args = p.parse_args()
    if args.epochs < 2:
        p.error(f"--epochs {args.epochs}: give at least 2 (the first epoch is warm-up)")
    if args.workers < 1:
        p.error(f"--workers {args.workers}: give at least 1 (0 is measured anyway, as ours_workers_0)")
    try:
        unknown = [name for name, _ in ddata.parse_augment(args.augment) if name not in STEPS]
    except ConfigError as e:
        p.error(f"--augment: {e}")
    if unknown:
        p.error(f"--augment: the peer has no {unknown[0]!r}; use items of {', '.join(STEPS)}")
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}", flush=True)
    base = get_recipe("detect-digits").config
    cfg = dataclasses.replace(base, size=args.size, train_images=args.images, eval_images=64, epochs=args.epochs,
                              augment=args.augment, batch_size=args.batch_size, checkpoint_every=args.epochs,
                              workers=args.workers)  # fmt: skip
    with tempfile.TemporaryDirectory() as runs_dir:
        first = steady(peer(cfg, device, args.workers))
        mine = steady(ours(cfg, device, runs_dir))
        in_process = steady(ours(dataclasses.replace(cfg, workers=0), device, runs_dir))
        theirs = (first + steady(peer(cfg, device, args.workers))) / 2  # before and after ours
    print(f"ours ({args.workers} workers) {mine:.1f} images/s, reference loop {theirs:.1f}, ratio {mine / theirs:.3f}; "
          f"ours with 0 workers {in_process:.1f} (workers gain x{mine / in_process:.2f})", flush=True)  # fmt: skip
    figures = {"benchmark": "detection_throughput", "device": name, "workers": args.workers, "size": args.size,
               "images": args.images, "augment": args.augment, "batch_size": args.batch_size,
               "ours": round(mine, 1), "peer": round(theirs, 1), "ratio": round(mine / theirs, 3),
               "ours_workers_0": round(in_process, 1), "workers_gain": round(mine / in_process, 3)}  # fmt: skip
    print_figures("Detection training images/s: Fovea's loop vs torchvision's reference loop", figures)


if __name__ == "__main__":
    main()
