"""DDIM with few steps against DDPM's 1,000-step ancestral sampler, the same trained diffusion model: seconds per
image and the Frechet distance (and KID) of each sampler's images to held-out images, in a digits classifier's features.

Ours is deterministic DDIM (eta = 0) over ``--steps`` timesteps (Song et al. 2021); the peer is DDPM's sampler
(Ho et al. 2020), every one of the model's T timesteps. Both draw ``--samples`` images (default: half the held-out
pool, the N of each draw) in chunks of 250, a conditional model's classes in turn, from the moving average of the
weights. Each set is scored as ``fovea eval`` scores samples (``fovea.generative.metrics.compare``): against N
held-out real images (val and test) in each of 10 draws, beside real-vs-real at the same N.

    python -m benchmarks.diffusion_sampling runs/ddpm-digits [--classifier runs/cnn-digits] [--steps 50]

Last line: {"ours_s_per_image", "peer_s_per_image", "speedup": peer / ours, "fid_ours", "fid_peer",
"fid_ratio": ours / peer, "fid_real_vs_real", the same for kid_, the _std of each over the draws, ...}.
"""

from __future__ import annotations

import argparse
import time

import torch

from fovea.cli import print_figures
from fovea.config import from_dict, get_recipe
from fovea.generative import base, evaluation, metrics
from fovea.run import Run, pick_device, read_run


def timed(model, n: int, seed: int, **kw) -> tuple[torch.Tensor, float]:
    """``n`` images from ``model.generate(**kw)`` in chunks of 250 (a conditional model's classes in turn) and the
    seconds they took."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    start = time.perf_counter()
    out = []
    for i in range(0, n, 250):
        lab = labels[i : i + 250] if labels is not None else None
        out.append(model.generate(min(250, n - i), generator=gen, labels=lab, **kw))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return torch.cat(out), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a trained diffusion run folder (e.g. runs/ddpm-digits)")
    p.add_argument("--classifier", default=None, help="a classifier run for the features (default: the newest "
                   "cnn-digits run beside the run, trained if there is none)")  # fmt: skip
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    p.add_argument("--samples", type=int, default=0, help="images per sampler (default: half the held-out images)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    device = pick_device(args.device)
    doc = read_run(args.run)
    cfg = from_dict(type(get_recipe(doc["recipe"]).config), doc["config"])
    run = Run.open(args.run, doc["recipe"], cfg, device=str(device))
    model, test = evaluation.load_trained(cfg, run)
    features = metrics.FeatureSpace.for_run(cfg, run, args.classifier)
    if features is None:
        raise SystemExit(f"no feature space for {cfg.dataset}: pass --classifier runs/NAME")
    held_out = torch.cat([base.load_split(cfg, "val", run).images.to(device), test.images])
    n = args.samples or len(held_out) // 2
    with torch.no_grad():
        model.generate(2, steps=2, generator=torch.Generator().manual_seed(0))  # warm-up
        ours_images, ours = timed(model, n, args.seed, steps=args.steps, eta=0.0)
        peer_images, peer = timed(model, n, args.seed, sampler="ddpm")
    real = features.features(held_out)
    scores = {k: metrics.compare(features.features(v), real, seed=args.seed)
              for k, v in (("ours", ours_images), ("peer", peer_images))}  # fmt: skip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    figures = {"benchmark": "diffusion_sampling", "run": args.run, "recipe": doc["recipe"], "device": name,
               "samples": n, "held_out": len(held_out), "ddim_steps": args.steps, "ddpm_steps": model.timesteps,
               "ours_s_per_image": ours / n, "peer_s_per_image": peer / n, "speedup": peer / ours}  # fmt: skip
    for m in ("fid", "kid"):
        for who in ("ours", "peer"):
            figures.update({f"{m}_{who}": scores[who][f"{m}/test"], f"{m}_{who}_std": scores[who][f"{m}/test_std"]})
        figures[f"{m}_real_vs_real"] = scores["ours"][f"{m}/real_vs_real"]
    figures["fid_ratio"] = figures["fid_ours"] / figures["fid_peer"]
    figures["classifier"] = str(features.source)
    print_figures(f"DDIM ({args.steps} steps) vs DDPM ({model.timesteps} steps): seconds per image and Frechet "
                  "distance to held-out images", figures)  # fmt: skip


if __name__ == "__main__":
    main()
