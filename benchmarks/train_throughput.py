"""Training images/s of the digits CNN, the VAE and the GAN: Fovea's training loops against a plain PyTorch loop
of the same model, in one script.

Each model is its recipe (``cnn-digits``, ``vae-digits``, ``gan-digits``) built by Fovea's own builders, so the
two sides train the same network with the same optimizer, batch size, data order and augmentation. Ours is
``fovea train`` through a Run (checkpoints, metrics.jsonl, the progress bar, and the fast path: autocast,
channels_last, the DDP and compile wrappers when asked for); its figure is what the loop logs each epoch
(``perf/samples_per_s`` for the classifier, whose span holds the epoch's validation pass, and
``perf/images_per_s`` for the generative models, whose span is the training pass). The peer is the loop
that anyone would write, ``zero_grad, loss.backward(), step`` over the same batches, in fp32, timed over the
same span. The first epoch of each side is left out (allocator and kernel warm-up); the figure is the median
of the rest. The peer runs before and after ours and its two medians are averaged.

    python -m benchmarks.train_throughput [--models cnn vae gan] [--epochs 6] [--device auto] [--amp auto]
        [--compile]

Last line: {"results": [{"model", "ours", "peer", "ratio", ...}, ...], and "ours", "peer", "ratio" of the
first model, "device", ...}; ours and peer are training images per second (ratio > 1: ours is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

import torch

from fovea import generative  # noqa: F401  (registers the generative recipes)
from fovea.cli import print_figures
from fovea.config import get_recipe
from fovea.generative import base as gbase
from fovea.run import Run, pick_device, seed_everything
from fovea.vision import classify
from fovea.vision import data as vdata
from fovea.vision.practice import augmenter

RECIPES = {"cnn": "cnn-digits", "vae": "vae-digits", "gan": "gan-digits"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peer_classifier(cfg: classify.ClassifierConfig, device: torch.device) -> list[float]:
    """Images/s of each epoch of a bare loop: training pass, schedule step and validation pass (ours' span)."""
    seed_everything(cfg.seed)
    splits = classify.load_splits(cfg, device)
    tr = splits["train"]
    model = classify.build(cfg, tr.shape, len(tr.classes), tr.max_value).to(device)
    optimizer = classify.make_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: classify.lr_factor(cfg, e))
    shuffle = torch.Generator().manual_seed(cfg.seed)
    augment, rates = augmenter(cfg.augment), []
    for _ in range(cfg.epochs):
        start, seen = time.perf_counter(), 0
        model.train()
        for images, labels in vdata.batches(tr, cfg.batch_size, shuffle):
            out = model.loss((augment(images, shuffle), labels), cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            seen += len(labels)
        scheduler.step()
        classify.evaluate_split(model, splits["val"])  # reads its figures back: the device is done
        rates.append(seen / (time.perf_counter() - start))
    return rates


def peer_generative(cfg: gbase.GenConfig, device: torch.device) -> list[float]:
    """Images/s of each training pass of a bare loop over the model's players."""
    seed_everything(cfg.seed)
    tr = gbase.load_split(cfg, "train").to(device)
    model = gbase.build_model(cfg, tr).to(device)
    optimizers = gbase.make_optimizers(cfg, model)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    iteration, rates = 0, []
    for _ in range(cfg.epochs):
        start = time.perf_counter()
        model.train()
        for batch in vdata.batches(tr, cfg.batch_size, shuffle):
            iteration += 1
            for player in model.players_at(iteration):
                out = model.loss(batch, player)
                optimizers[player].zero_grad(set_to_none=True)
                out["loss"].backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.player_parameters(player), cfg.grad_clip)
                optimizers[player].step()
        sync(device)
        rates.append(len(tr) / (time.perf_counter() - start))
    return rates


def ours(recipe: str, cfg, device: torch.device, runs_dir: str) -> list[float]:
    """Images/s of each epoch as Fovea's loop logs it, from the run's metrics.jsonl."""
    with Run.create(recipe, cfg, runs_dir=runs_dir, device=str(device), wandb="disabled") as run:
        get_recipe(recipe).task.train(cfg, run)
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    key = "perf/samples_per_s" if isinstance(cfg, classify.ClassifierConfig) else "perf/images_per_s"
    rates = [row[key] for row in rows if key in row]
    if len(rates) != cfg.epochs:
        raise RuntimeError(f"{recipe} logged {key} {len(rates)} times in {cfg.epochs} epochs ({run.dir})")
    return rates


def steady(rates: list[float]) -> float:
    """The median images/s after the first epoch (warm-up)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def measure(model: str, epochs: int, device: torch.device, amp: str, compile: bool, runs_dir: str) -> dict:
    recipe = RECIPES[model]
    base = get_recipe(recipe).config
    cfg = dataclasses.replace(base, epochs=epochs, checkpoint_every=max(1, epochs), amp=amp, compile=compile)
    if isinstance(cfg, gbase.GenConfig):
        cfg = dataclasses.replace(cfg, eval_every=10**6)  # validation only at the end, outside the timed epochs
    peer_fn = peer_classifier if isinstance(cfg, classify.ClassifierConfig) else peer_generative
    plain = dataclasses.replace(cfg, amp="off", compile=False)
    first = steady(peer_fn(plain, device))
    mine = steady(ours(recipe, cfg, device, runs_dir))
    peer = (first + steady(peer_fn(plain, device))) / 2  # before and after ours
    return {"model": model, "recipe": recipe, "batch_size": cfg.batch_size, "epochs": epochs,
            "ours": round(mine, 1), "peer": round(peer, 1), "ratio": round(mine / peer, 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=["cnn", "vae", "gan"],
                   help="which recipes to measure (default: cnn vae gan)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=6, help="epochs per run, the first one untimed (default: 6)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="Fovea's precision (default: auto, bf16 on CUDA); the peer is fp32")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile Fovea's training step")
    args = p.parse_args()
    if args.epochs < 2:
        p.error(f"--epochs {args.epochs}: give at least 2 (the first epoch is warm-up)")
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}", flush=True)
    with tempfile.TemporaryDirectory() as runs_dir:
        results = [measure(m, args.epochs, device, args.amp, args.compile, runs_dir) for m in args.models]
    for r in results:
        print(f"{r['recipe']:>12}: ours {r['ours']:>9.1f} images/s, plain loop {r['peer']:>9.1f}, "
              f"ratio {r['ratio']:.3f}", flush=True)  # fmt: skip
    figures = {"benchmark": "train_throughput", "device": name, "amp": args.amp, "compile": args.compile,
               "results": results, "ours": results[0]["ours"], "peer": results[0]["peer"],
               "ratio": results[0]["ratio"]}  # fmt: skip
    print_figures("Training images/s: Fovea's loops vs a plain PyTorch loop", figures)


if __name__ == "__main__":
    main()
