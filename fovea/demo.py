"""``fovea demo``: the four jobs of Fovea chained on embedded data, each printed as ``fovea`` prints it, then a
summary of what was made and the commands that go on from there."""

from __future__ import annotations

import argparse
from pathlib import Path

from fovea.cli import err, run_job, train

# The sample grid: cgan-digits for 40 of its 100 epochs (a row per digit). Trained 40 epochs each beside other jobs,
# scored against held-out digits (fovea eval, Frechet distance / KID in the cnn-digits features, real data 32.4 /
# -0.009): cgan 72.2 / 0.19 in 33 s, ddpm 67.7 / 0.25 in 44 s, vae 167.6 / 2.48 in 14 s; the VAE's grid was
# mostly blur, the cGAN's the sharpest by eye.
DEMO_GAN_EPOCHS = 40
# of 4000 x 8 at batch 32; batch 16 doubles the steps for the same images: mAP@.5 0.65-0.75 over seeds 0-2, where
# batch 32 reached 0.16-0.29
DEMO_DETECTOR = ["--train-images", "1500", "--epochs", "3", "--batch-size", "16", "--eval-images", "200"]
# ... on the demo classifier's backbone (--backbone-from, the ConvNet 64-128 of cnn-digits): seed 0, mAP@.5 0.72 ->
# 0.90-0.91 and mAP@[.5:.95] 0.55 -> 0.71-0.72, most wrong labels in the picture gone (69 s -> 93 s beside other jobs)
DEMO_TRANSFER = ["--backbone.widths", "64,128", "--backbone-from"]


def run(args: argparse.Namespace) -> None:
    """The three things Fovea is for, on embedded data, in about 2 minutes on 2 CPU cores: a CNN classifying the
    8x8 digits, a class-conditional GAN drawing new ones (a row per digit), a detector on the CNN's backbone finding
    digits on canvases, then a DQN agent learning Catch from pixels, recorded on video. ``args``: the run options of
    ``fovea demo``."""
    base, job = args.name, dict(device=args.device, wandb=args.wandb, project=args.project)

    def train_one(recipe: str, suffix: str, overrides: list[str]) -> tuple[dict, Path]:
        args.recipe, args.resume, args.name = recipe, None, f"{base}{suffix}" if base and suffix else base
        figures = train(args, overrides)
        return figures, Path(figures["run"])

    figures, run_dir = train_one("cnn-digits", "", [])
    gan, gan_dir = train_one("cgan-digits", "-gan", ["--epochs", str(DEMO_GAN_EPOCHS)])
    grid = run_job("sample", gan_dir, job, n=64, output=str(gan_dir / "samples" / "demo_grid.png"))
    detector, detector_dir = train_one("detect-digits", "-detector", [*DEMO_DETECTOR, *DEMO_TRANSFER, str(run_dir)])
    detections = run_job("eval", detector_dir, job)
    agent, agent_dir = train_one("dqn-catch", "-agent", [])
    watched = run_job("eval", agent_dir, job, video=True)
    caught = (agent["eval/mean_return"] + 1) / 2  # +1 caught, -1 missed
    seconds = figures["wall_s"] + gan["wall_s"] + detector["wall_s"] + agent["wall_s"]
    err.print(f"\n[bold]Demo done[/bold] in {seconds:.0f} s of training.")
    err.print(f"  classifier     {run_dir}/: test accuracy {figures['test/acc']:.1%} on the 8x8 digits")
    err.print(f"  generator      {gan_dir}/: a class-conditional GAN, {gan['epochs']} epochs")
    err.print(f"  sample grid    {grid['output']} (a row per digit 0-7)")
    err.print(f"  detector       {detector_dir}/: FCOS on the classifier's backbone, mAP@.5 "
              f"{detections['test/map_50']:.2f} and mAP@[.5:.95] {detections['test/map']:.2f} on canvases of 1-5 "
              "digits")  # fmt: skip
    err.print(f"  detections     {detections['detections_png']}")
    err.print(f"  agent          {agent_dir}/: catches the ball in {caught:.0%} of {agent['eval/episodes']} games")
    err.print(f"  agent video    {watched['video']}")
    from fovea.tracking import sync_glob

    offline = [sync_glob(d) for d in (run_dir, gan_dir, detector_dir, agent_dir) if any(d.glob("wandb/offline-run-*"))]
    if offline:  # every train, eval and sample of the demo is its own W&B run
        err.print(f"  W&B (offline)  upload with: wandb sync {' '.join(offline)}")
    err.print(f"  evaluate       fovea eval {run_dir}   |   fovea eval {gan_dir}   |   fovea eval {agent_dir} --video")
    err.print(f"  sample more    fovea sample {gan_dir} --label 3   |   fovea sample {gan_dir} --interpolate")
    err.print(f"  detect         fovea detect {detector_dir} YOUR.png -o detections/")
    err.print(f"  train longer   fovea train --resume {run_dir} --epochs {figures['epochs'] + 20}")
