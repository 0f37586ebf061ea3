"""What the Run costs: ``fovea train cnn-digits`` against a plain PyTorch loop doing the same work.

Both train the same model (the cnn-digits recipe: same backbone, optimizer, schedule, batches,
augmentation and a validation pass per epoch) from the same seed, in one process, alternating.
Ours adds what a Run gives: checkpoints every 5 epochs and at the end, metrics.jsonl, the
progress bar and signal handling (W&B is disabled on both sides so its start-up is not counted).

    python -m benchmarks.run_overhead [--epochs 40] [--repeats 3] [--device cpu]

Last line: {"ours": s, "peer": s, "ratio": ours / peer, ...} (median wall seconds per training).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import torch

from fovea.cli import print_figures
from fovea.config import get_recipe
from fovea.run import Run, pick_device, seed_everything
from fovea.vision import classify
from fovea.vision import data as vdata
from fovea.vision.practice import augmenter


def plain_loop(cfg: classify.ClassifierConfig, device: torch.device) -> float:
    """The same training written as a bare PyTorch loop (the peer); returns its test accuracy."""
    seed_everything(cfg.seed)
    splits = {s: vdata.load(cfg.dataset, s).to(device) for s in vdata.SPLITS}
    tr = splits["train"]
    model = classify.build(cfg, tr.shape, len(tr.classes), tr.max_value).to(device)
    optimizer = classify.make_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    augment = augmenter(cfg.augment)
    for _ in range(cfg.epochs):
        for images, labels in vdata.batches(tr, cfg.batch_size, shuffle):
            out = model.loss((augment(images, shuffle), labels))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
        scheduler.step()
        classify.evaluate_split(model, splits["val"])
    return classify.evaluate_split(model, splits["test"])["acc"]


def fovea_run(cfg: classify.ClassifierConfig, device: str, runs_dir: str) -> float:
    with Run.create("cnn-digits", cfg, runs_dir=runs_dir, device=device, wandb="disabled") as run:
        return classify.train(cfg, run)["test/acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    cfg = dataclasses.replace(get_recipe("cnn-digits").config, epochs=args.epochs)
    device = pick_device(args.device)
    ours, peer, accs = [], [], {}
    with tempfile.TemporaryDirectory() as runs_dir:
        sides = {
            "peer": (lambda: plain_loop(cfg, device), peer),
            "ours": (lambda: fovea_run(cfg, str(device), runs_dir), ours),
        }
        for i in range(args.repeats):
            for side in ("peer", "ours") if i % 2 == 0 else ("ours", "peer"):  # alternate who goes first
                fn, times = sides[side]
                t = time.perf_counter()
                accs[side] = fn()
                times.append(time.perf_counter() - t)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    figures = {
        "benchmark": "run_overhead",
        "device": name,
        "epochs": args.epochs,
        "ours": round(statistics.median(ours), 3),
        "peer": round(statistics.median(peer), 3),
        "ratio": round(statistics.median(ours) / statistics.median(peer), 3),
        "ours_test_acc": accs["ours"],
        "peer_test_acc": accs["peer"],
    }
    print_figures("Run overhead: fovea train cnn-digits vs a plain PyTorch loop (median s)", figures)


if __name__ == "__main__":
    main()
