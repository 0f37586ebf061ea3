"""Seconds to sample a batch of 28x28 images (MNIST-sized, 256 levels) from a PixelCNN: the fast sampler
against the plain loop, the same model, the same seed, and the same samples.

The plain loop (the peer) runs the whole network over the whole image once per pixel, as PixelCNN is
usually sampled. The fast sampler (ours) keeps every layer's output map and computes each layer at the new
pixel only, from the window of its input its kernel covers (the gated model's vertical stack a row at a
time). The model is freshly initialised (the work per pixel does not depend on the weights) and in eval
mode; the fast run goes first, after a one-row warm-up of both.

    python -m benchmarks.pixelcnn_sampling [--batch 16] [--device cpu] [--variant gated] [--hidden 32]

Last line: {"ours": fast seconds, "peer": plain-loop seconds, "ratio": peer / ours, "identical": ...}.
"""

from __future__ import annotations

import argparse
import time

import torch

from fovea.cli import print_figures
from fovea.generative.pixelcnn import PixelCNN, PixelCNNConfig, build
from fovea.run import pick_device
from fovea.vision.data import ImageData


def timed_sample(model: PixelCNN, n: int, seed: int, fast: bool) -> tuple[torch.Tensor, float]:
    """``n`` samples with a fresh generator seeded ``seed``, and the seconds they took."""
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    start = time.perf_counter()
    images = model.sample(n, generator=torch.Generator().manual_seed(seed), fast=fast)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return images, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="images sampled at once (default: 16)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--variant", choices=["gated", "plain"], default="gated")
    p.add_argument("--hidden", type=int, default=32, help="features per layer (default: 32)")
    p.add_argument("--layers", type=int, default=5, help="masked layers (default: 5, as pixelcnn-digits)")
    p.add_argument("--size", type=int, default=28, help="image height and width (default: 28)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    cfg = PixelCNNConfig(gated=args.variant == "gated", hidden=args.hidden, layers=args.layers)
    shape = (1, args.size, args.size)
    data = ImageData(torch.zeros((1, *shape), dtype=torch.uint8), torch.zeros(1, dtype=torch.long), 255, ("0",))
    model = build(cfg, data).to(device).eval()

    warm = build(cfg, ImageData(data.images[:, :, :1], data.labels, 255, ("0",))).to(device).eval()  # one row
    warm.load_state_dict(model.state_dict())
    for fast in (True, False):
        warm.sample(args.batch, generator=torch.Generator().manual_seed(args.seed), fast=fast)
    fast_images, ours = timed_sample(model, args.batch, args.seed, fast=True)
    naive_images, peer = timed_sample(model, args.batch, args.seed, fast=False)
    identical = torch.equal(fast_images, naive_images)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    figures = {"benchmark": "pixelcnn_sampling", "device": name, "variant": args.variant, "shape": list(shape),
               "levels": 256, "batch": args.batch, "hidden": args.hidden, "layers": args.layers,
               "ours": round(ours, 3), "peer": round(peer, 3), "ratio": round(peer / ours, 2),
               "identical": identical, "ours_ms_per_pixel": round(1000 * ours / (args.size**2), 3)}  # fmt: skip
    print_figures("PixelCNN sampling, seconds per batch: fast sampler vs the whole network per pixel", figures)
    if not identical:
        raise SystemExit("the fast sampler's samples differ from the plain loop's")


if __name__ == "__main__":
    main()
