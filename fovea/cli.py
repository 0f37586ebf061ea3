"""The ``fovea`` command: recipes, train, eval, sample, explain, detect, search, demo, backbones.

Every command that computes figures prints a readable table, then, as its last line, the same
figures as one JSON object. A user's mistake gets one line naming the problem and the fix, and a
non-zero exit; never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import inspect
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fovea.errors import FoveaError, UsageError

TASK_PACKAGES = ("fovea.vision", "fovea.agents", "fovea.generative")  # packages that register recipes (imported lazily)
EXPLANATIONS = ("filters", "saliency", "occlusion", "tsne", "neighbours")  # vision.explain.METHODS, kept here so
# that `fovea --help` needs no torch import (a test checks the two agree)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def load_tasks() -> None:
    for pkg in TASK_PACKAGES:
        importlib.import_module(pkg)


def print_figures(title: str, figures: dict[str, Any]) -> None:
    """A table of the scalar figures, then every figure as one JSON line (the last line of output)."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        if isinstance(v, int | float | str) and not isinstance(v, bool):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)
    finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in figures.items()}
    print(json.dumps(finite), flush=True)  # strict JSON: NaN / Inf become null


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="run folder name under --runs-dir (default: <recipe>-<date>-<time>)")
    p.add_argument("--runs-dir", help="where run folders live (default: runs)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode; auto: online when logged in, offline otherwise")  # fmt: skip
    p.add_argument("--project", default="fovea", help="W&B project (default: fovea)")
    p.add_argument("--keep-checkpoints", type=int, default=3, help="how many recent checkpoints to keep (default: 3)")
    p.add_argument("--on-nonfinite", default="stop", choices=["stop", "skip"],
                   help="a NaN or infinite loss or gradient: stop the run, keeping the last good checkpoint (default), "
                   "or skip that update (one device read per update)")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake like every other one (one ``error:`` line, exit 2) instead of printing
    its usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (`{self.prog} --help` lists the options)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fovea", description="Learning from pixels: train, evaluate and compare models.",
                                allow_abbrev=False)  # fmt: skip
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("recipes", help="list every recipe with a one-line description")
    sub.add_parser("backbones", help="list the registered backbones and their options")
    t = sub.add_parser(
        "train",
        help="train a recipe: fovea train RECIPE [--field value ...]",
        usage="fovea train RECIPE [--name NAME] [run options] [--field VALUE ...]  |  fovea train --resume RUN_DIR",
        add_help=False,
        allow_abbrev=False,
    )
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    t.add_argument("-h", "--help", action="store_true", help="show the recipe's fields (with a recipe) or this help")
    _run_options(t)
    e = sub.add_parser("eval", help="evaluate a run's latest checkpoint: fovea eval runs/NAME", allow_abbrev=False)
    e.add_argument("run_dir")
    e.add_argument("--device", default="auto")
    e.add_argument("--episodes", type=int, help="agents: episodes to play (default: the config's eval_episodes)")
    e.add_argument("--network", choices=["final", "best"],
                   help="agents: score the final network (default) or the best of the periodic evaluations; either "
                        "plays fresh games, seeded apart from every game of training")  # fmt: skip
    e.add_argument("--video", action="store_true", help="agents: record one episode to runs/NAME/videos/ and W&B")
    e.add_argument("--saliency", action="store_true", help="agents: the video shows gradient saliency (pixels only)")
    e.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode for the pictures and videos eval logs (default: auto)")  # fmt: skip
    e.add_argument("--project", default="fovea", help="W&B project (default: fovea)")
    e.add_argument("--classifier", metavar="RUN_DIR",
                   help="generative: the classifier run whose features score samples (default: the newest "
                        "cnn-digits run beside RUN, trained once when there is none)")  # fmt: skip
    e.add_argument("--samples", type=int, help="generative: samples scored (default: 1000)")
    s = sub.add_parser("sample", help="a PNG grid of a generative model's samples: fovea sample runs/NAME -n 64",
                       allow_abbrev=False)  # fmt: skip
    s.add_argument("run_dir")
    s.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    s.add_argument("-o", "--output", help="PNG to write (default: runs/NAME/samples/sample_seedS.png)")
    s.add_argument("--seed", type=int, default=0, help="the same seed gives the same samples (default: 0)")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="1: the model's distribution; lower: more typical samples (0: the most likely)")  # fmt: skip
    s.add_argument("--interpolate", action="store_true", help="rows of images between two random latent codes")
    s.add_argument("--label", type=int, help="class-conditional models: samples of this class")
    s.add_argument("--device", default="auto")
    s.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode for the grid (default: auto)")  # fmt: skip
    s.add_argument("--project", default="fovea", help="W&B project (default: fovea)")
    x = sub.add_parser("explain", help="a picture of what a classifier learned: fovea explain runs/NAME --what "
                                       "saliency", allow_abbrev=False)  # fmt: skip
    x.add_argument("run_dir")
    x.add_argument("--what", required=True, choices=EXPLANATIONS,
                   help="filters: first-layer weights; saliency: |d score / d pixel|; occlusion: drop in p(true "
                        "class) under a sliding patch; tsne: 2-D map of the last-layer features; neighbours: nearest "
                        "training images in feature space")  # fmt: skip
    x.add_argument("-n", type=int, help="images explained (default 8; tsne: points, default 2000; filters: all)")
    x.add_argument("-o", "--output", help="PNG to write (default: runs/NAME/explain/WHAT.png)")
    x.add_argument("--seed", type=int, default=0, help="which test images are picked (default: 0)")
    x.add_argument("--device", default="auto")
    x.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode for the picture (default: auto)")  # fmt: skip
    x.add_argument("--project", default="fovea", help="W&B project (default: fovea)")
    g = sub.add_parser("detect", help="draw a detector's boxes on image files: fovea detect runs/NAME a.png -o out/",
                       allow_abbrev=False)  # fmt: skip
    g.add_argument("run_dir")
    g.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...), resized for the model")
    g.add_argument("-o", "--output", metavar="OUT_DIR",
                   help="folder for the pictures and detections.json (default: runs/NAME/detections/)")  # fmt: skip
    g.add_argument("--threshold", type=float, default=0.5, help="boxes scored below this are not drawn (default: 0.5)")
    g.add_argument("--device", default="auto")
    g.add_argument("--wandb", default="disabled", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode (default: disabled; the pictures are files)")  # fmt: skip
    g.add_argument("--project", default="fovea", help="W&B project (default: fovea)")
    q = sub.add_parser(
        "search",
        help="random hyperparameter search, coarse to fine: fovea search RECIPE --param lr=log:1e-4:1e-1 --trials 8",
        usage="fovea search RECIPE --param FIELD=KIND:RANGE [--param ...] [--trials N] [--rounds R] [--rank-by FIGURE] "
        "[--name NAME] [run options] [--field VALUE ...]",
        description="Random search over the --param ranges (log:LO:HI, logint:LO:HI, uniform:LO:HI, int:LO:HI, "
        "choice:A|B|C): a coarse round, then rounds narrowed around the best trial. Give a few --epochs per trial. "
        "Each trial is a run in runs/NAME/trial-NN/.",
        allow_abbrev=False,
    )
    q.add_argument("--param", action="append", default=[], metavar="FIELD=KIND:RANGE",
                   help="a searched field, e.g. lr=log:1e-4:1e-1 (repeat for each)")  # fmt: skip
    q.add_argument("--trials", type=int, default=8, help="trials per round (default: 8)")
    q.add_argument("--rounds", type=int, default=2, help="rounds: the first coarse, the rest finer (default: 2)")
    q.add_argument("--rank-by", default="val/acc", metavar="FIGURE",
                   help="the figure trials are ranked by (default: val/acc; losses are minimised)")  # fmt: skip
    q.add_argument("--search-seed", type=int, default=0, help="seeds the sampling of the trials (default: 0)")
    _run_options(q)
    w = sub.add_parser(
        "sweep",
        help="a W&B sweep whose trials run on every machine with `wandb agent`: fovea sweep RECIPE --param "
        "lr=log:1e-5:1e-3 --method bayes",
        usage="fovea sweep RECIPE --param FIELD=KIND:RANGE [--param ...] [--method random|grid|bayes] "
        "[--metric FIGURE] [--goal maximize|minimize] [--project P] [--name NAME] [-o sweep.yaml] [--device DEV] "
        "[--field VALUE ...]",
        description="Write a W&B sweep configuration whose trials are `fovea train RECIPE [--field VALUE ...]` with "
        "the --param values (log:LO:HI, logint:LO:HI, uniform:LO:HI, int:LO:HI, choice:A|B|C), then print the "
        "commands that create it and start agents.",
        allow_abbrev=False,
    )
    w.add_argument("--param", action="append", default=[], metavar="FIELD=KIND:RANGE",
                   help="a swept field, e.g. lr=log:1e-5:1e-3 (repeat for each)")  # fmt: skip
    w.add_argument("--method", default="random", help="random (default), grid (choices and int ranges) or bayes")
    w.add_argument("--metric", metavar="FIGURE", help="the figure to optimise (default: the recipe's, e.g. val/acc)")
    w.add_argument("--goal", help="maximize or minimize (default: minimize losses, maximize the rest)")
    w.add_argument("--project", default="fovea", help="W&B project of the sweep and its trials (default: fovea)")
    w.add_argument("--name", help="the sweep's name on W&B (default: RECIPE-METHOD)")
    w.add_argument("-o", "--output", default="sweep.yaml", help="the configuration to write (default: sweep.yaml)")
    w.add_argument("--device", help="every trial's --device (default: auto)")
    d = sub.add_parser("demo", help="about 90 s on embedded data: a digits CNN, a digits VAE and its samples, "
                                    "a digits detector, then a DQN agent on Catch pixels")
    _run_options(d)
    return p


def cmd_recipes() -> None:
    from fovea.config import recipes

    table = Table(title="Recipes (fovea train RECIPE)", header_style="bold")
    table.add_column("recipe")
    table.add_column("config")
    table.add_column("description")
    for name, r in recipes().items():
        table.add_row(name, type(r.config).__name__, r.description)
    out.print(table)


def cmd_backbones() -> None:
    from fovea import backbones
    from fovea.config import BackboneSpec

    table = Table(title="Backbones (--backbone NAME --backbone.OPTION VALUE)", header_style="bold")
    for col in ("name", "input", "options", "description"):
        table.add_column(col)
    for name in backbones.names():
        e = backbones.entry(name)
        opts = ", ".join(BackboneSpec(name=name).option_types())
        table.add_row(name, e.kind, opts, e.summary)
    out.print(table)


def recipe_help(recipe) -> None:
    import dataclasses

    from fovea.config import field_docs

    cfg = recipe.config
    out.print(
        f"[bold]fovea train {recipe.name}[/bold] [--name NAME] [--device DEV] [--wandb MODE] [--field VALUE ...]\n"
    )
    out.print(recipe.description + "\n")
    table = Table(title=f"{type(cfg).__name__} fields (override with --field VALUE)", header_style="bold")
    for col in ("option", "value", "description"):
        table.add_column(col)
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        shown = f"{v.name} {v.options}" if hasattr(v, "options") else repr(v)
        table.add_row("--" + f.name.replace("_", "-"), shown, docs.get(f.name, ""))
    out.print(table)


def train_recipe(args: argparse.Namespace, overrides: list[str], *, demo: bool = False) -> dict:
    from fovea import distributed
    from fovea.config import apply_overrides, from_dict, get_recipe
    from fovea.run import Run, read_run

    load_tasks()
    if getattr(args, "resume", None):
        if args.recipe:
            raise UsageError(f"give either a recipe or --resume RUN_DIR, not both (got {args.recipe!r})")
        if args.name or args.runs_dir:
            raise UsageError("--name and --runs-dir name a new run; --resume RUN_DIR continues the one in RUN_DIR")
        doc = read_run(args.resume)
        recipe = get_recipe(doc["recipe"])
        cfg = apply_overrides(from_dict(type(recipe.config), doc["config"]), overrides)
    else:
        if not args.recipe:
            raise UsageError("name a recipe to train, e.g. `fovea train cnn-digits` (`fovea recipes` lists them)")
        recipe = get_recipe(args.recipe)
        cfg = apply_overrides(recipe.config, overrides)
    if distributed.launched() and not recipe.task.distributed:
        raise UsageError(f"{recipe.name} does not train under torchrun: generative, classifier and detector recipes do "
                         f"(agents scale with --num-envs on one process); train it without torchrun")  # fmt: skip
    device = distributed.setup(args.device)  # under torchrun: join the process group, take this rank's device
    opts = dict(device=device, wandb=args.wandb, project=args.project, keep_checkpoints=args.keep_checkpoints,
                nonfinite=args.on_nonfinite)
    if getattr(args, "resume", None):
        run = Run(recipe.name, cfg, run_dir=args.resume, resume=True, **opts)
    elif distributed.active():  # rank 0 creates the run (its default name has the time in it); the others join it
        runs_dir = args.runs_dir or "runs"
        run = Run(recipe.name, cfg, name=args.name, runs_dir=runs_dir, **opts) if distributed.is_main() else None
        name = distributed.broadcast(run.name if run else None)
        run = run or Run(recipe.name, cfg, name=name, runs_dir=runs_dir, **opts)
    else:
        run = Run(recipe.name, cfg, name=args.name, runs_dir=args.runs_dir or "runs", **opts)
    if distributed.active():
        run.say(f"torchrun: {distributed.world_size()} processes, a global batch of {cfg.batch_size} split over them.")
    start = time.perf_counter()
    try:
        with run:
            run.say(f"Training {recipe.name} into {run.dir} on {run.device}.")
            figures = recipe.task.train(cfg, run)
            if run.state.get("skipped_updates"):
                figures["skipped_updates"] = run.state["skipped_updates"]
            figures["wall_s"] = round(time.perf_counter() - start, 2)
            run.finish(figures)
    except (FoveaError, ValueError):
        if run.main and not run.resuming and run.untouched():  # e.g. a backbone that cannot take this data
            shutil.rmtree(run.dir, ignore_errors=True)  # leave no folder
        raise
    figures = {"run": str(run.dir), **figures}
    if run.main:
        print_figures(f"{recipe.name}: {run.dir}", figures)
    return figures



def cmd_eval(args: argparse.Namespace) -> dict:
    given = {"episodes": args.episodes, "network": args.network, "video": args.video, "saliency": args.saliency,
             "classifier": args.classifier, "samples": args.samples}  # fmt: skip
    options = {k: v for k, v in given.items() if v}
    for flag in ("episodes", "samples"):
        if given[flag] is not None and given[flag] < 1:
            raise UsageError(f"--{flag} {given[flag]} must be at least 1")
    return evaluate_run(args.run_dir, options, device=args.device, wandb=args.wandb, project=args.project)


def cmd_sample(args: argparse.Namespace) -> dict:
    options = {"n": args.n, "output": args.output, "seed": args.seed, "temperature": args.temperature,
               "interpolate": args.interpolate, "label": args.label}  # fmt: skip
    return sample_run(args.run_dir, options, device=args.device, wandb=args.wandb, project=args.project)


def cmd_explain(args: argparse.Namespace) -> dict:
    if args.n is not None and args.n < 1:
        raise UsageError(f"-n {args.n} must be at least 1")
    options = {"what": args.what, "output": args.output, "n": args.n, "seed": args.seed}
    return explain_run(args.run_dir, options, device=args.device, wandb=args.wandb, project=args.project)


def cmd_detect(args: argparse.Namespace) -> dict:
    if not 0 <= args.threshold < 1:
        raise UsageError(f"--threshold {args.threshold} must be in [0, 1)")
    options = {"images": args.images, "output": args.output, "threshold": args.threshold}
    return act_on_run("detect", args.run_dir, options, device=args.device, wandb=args.wandb, project=args.project)


def open_run(run_dir: str | Path, device: str, action: str):
    """The recipe, config and read-only Run of ``run_dir``, for ``action`` (``evaluate``, ``sample``, ``explain``
    or ``detect``)."""
    from fovea.config import from_dict, get_recipe
    from fovea.run import Run, read_run

    load_tasks()
    doc = read_run(run_dir)
    recipe = get_recipe(doc["recipe"])
    if getattr(recipe.task, action) is None:
        why = {"evaluate": "has no evaluation", "sample": "is not a generative model: it has nothing to sample",
               "explain": "has nothing to explain (explanations are for classifiers)",
               "detect": "is not a detector (fovea detect is for detect-digits, ...)"}[action]  # fmt: skip
        raise UsageError(f"recipe {recipe.name!r} {why}")
    cfg = from_dict(type(recipe.config), doc["config"])
    return recipe, cfg, Run(recipe.name, cfg, run_dir=run_dir, device=device, evaluate=True)


def evaluate_run(run_dir: str | Path, options: dict, *, device: str = "auto", wandb: str = "auto",
                 project: str = "fovea") -> dict:  # fmt: skip
    recipe, cfg, run = open_run(run_dir, device, "evaluate")
    accepted = inspect.signature(recipe.task.evaluate).parameters
    unknown = [f"--{k}" for k in options if k not in accepted]
    if unknown:
        raise UsageError(f"{' and '.join(unknown)}: recipe {recipe.name!r} evaluates without such options")
    run.attach_tracker(wandb, project)
    with run:
        figures = recipe.task.evaluate(cfg, run, **options)
        figures = {"run": str(run.dir), "step": run.step, **figures}
        run.finish(figures)
    print_figures(f"eval {run.dir}", figures)
    return figures


def sample_run(run_dir: str | Path, options: dict, *, device: str = "auto", wandb: str = "auto",
               project: str = "fovea") -> dict:  # fmt: skip
    """``fovea sample``: a grid of a generative model's samples."""
    return act_on_run("sample", run_dir, options, device=device, wandb=wandb, project=project)


def explain_run(run_dir: str | Path, options: dict, *, device: str = "auto", wandb: str = "auto",
                project: str = "fovea") -> dict:  # fmt: skip
    """``fovea explain``: one picture of what a classifier learned (``options['what']``), as a PNG in the run
    folder (or ``options['output']``) and on W&B, with the figures that describe it."""
    return act_on_run("explain", run_dir, options, device=device, wandb=wandb, project=project)


def act_on_run(action: str, run_dir: str | Path, options: dict, *, device: str, wandb: str, project: str) -> dict:
    """Open ``run_dir`` read-only, call its task's ``action`` (sample, explain or detect) with its tracker attached,
    print the figures."""
    recipe, cfg, run = open_run(run_dir, device, action)
    run.attach_tracker(wandb, project, job_type=action)
    with run:
        figures = getattr(recipe.task, action)(cfg, run, **options)
    figures = {"run": str(run.dir), "step": run.step, **figures}
    print_figures(f"{action} {run.dir}", figures)
    return figures


DEMO_VAE_EPOCHS = 40  # of vae-digits' 100: about 15 s, samples already clearly digits
# of 4000 x 8 at batch 32; batch 16 doubles the steps for the same images: mAP@.5 0.65-0.75 over seeds 0-2, where
# batch 32 reached 0.16-0.29
DEMO_DETECTOR = ["--train-images", "1500", "--epochs", "3", "--batch-size", "16", "--eval-images", "200"]


def cmd_demo(args: argparse.Namespace) -> None:
    """The three things Fovea is for, on embedded data, in about 90 s on 2 CPU cores: a CNN classifying the 8x8
    digits, a VAE sampling new ones, a detector finding digits on canvases, then a DQN agent learning Catch
    from pixels, recorded on video."""
    base = args.name
    args.recipe, args.resume = "cnn-digits", None
    figures = train_recipe(args, [], demo=True)
    run_dir = Path(figures["run"])
    args.recipe, args.name = "vae-digits", f"{base}-vae" if base else None
    vae = train_recipe(args, ["--epochs", str(DEMO_VAE_EPOCHS)], demo=True)
    vae_dir = Path(vae["run"])
    grid = sample_run(vae_dir, {"n": 64, "output": str(vae_dir / "samples" / "demo_grid.png")}, device=args.device,
                      wandb=args.wandb, project=args.project)  # fmt: skip
    args.recipe, args.name = "detect-digits", f"{base}-detector" if base else None
    detector = train_recipe(args, DEMO_DETECTOR, demo=True)
    detector_dir = Path(detector["run"])
    detections = evaluate_run(detector_dir, {}, device=args.device, wandb=args.wandb, project=args.project)
    args.recipe, args.name = "dqn-catch", f"{base}-agent" if base else None
    agent = train_recipe(args, [], demo=True)
    agent_dir = Path(agent["run"])
    watched = evaluate_run(agent_dir, {"video": True}, device=args.device, wandb=args.wandb, project=args.project)
    caught = (agent["eval/mean_return"] + 1) / 2  # +1 caught, -1 missed
    seconds = figures["wall_s"] + vae["wall_s"] + detector["wall_s"] + agent["wall_s"]
    err.print(f"\n[bold]Demo done[/bold] in {seconds:.0f} s of training.")
    err.print(f"  classifier     {run_dir}/: test accuracy {figures['test/acc']:.1%} on the 8x8 digits")
    err.print(f"  generator      {vae_dir}/: a VAE, {vae['val/nll_nats']:.1f} nats per validation image (IWAE)")
    err.print(f"  sample grid    {grid['output']}")
    err.print(f"  detector       {detector_dir}/: FCOS, mAP@.5 {detections['test/map_50']:.2f} and mAP@[.5:.95] "
              f"{detections['test/map']:.2f} on canvases of 1-5 digits")
    err.print(f"  detections     {detections['detections_png']}")
    err.print(f"  agent          {agent_dir}/: catches the ball in {caught:.0%} of {agent['eval/episodes']} games")
    err.print(f"  agent video    {watched['video']}")
    from fovea.tracking import sync_glob

    offline = [sync_glob(d) for d in (run_dir, vae_dir, detector_dir, agent_dir) if any(d.glob("wandb/offline-run-*"))]
    if offline:  # every train, eval and sample of the demo is its own W&B run
        err.print(f"  W&B (offline)  upload with: wandb sync {' '.join(offline)}")
    err.print(f"  evaluate       fovea eval {run_dir}   |   fovea eval {vae_dir}   |   fovea eval {agent_dir} --video")
    err.print(f"  sample more    fovea sample {vae_dir} -n 64 --seed 1   |   fovea sample {vae_dir} --interpolate")
    err.print(f"  detect         fovea detect {detector_dir} YOUR.png -o detections/")
    err.print(f"  train longer   fovea train --resume {run_dir} --epochs {figures['epochs'] + 20}")


def cmd_search(args: argparse.Namespace, overrides: list[str]) -> dict:
    """``fovea search``: the table of trials, the best, then one JSON line."""
    import random

    from fovea.config import apply_overrides, get_recipe
    from fovea.search import Param, search

    if not args.recipe:
        raise UsageError("name a recipe to search, e.g. `fovea search softmax-digits --param lr=log:1e-4:1e-1`")
    if not args.param:
        raise UsageError("give at least one --param FIELD=KIND:RANGE, e.g. --param lr=log:1e-4:1e-1")
    for flag in ("trials", "rounds"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} {getattr(args, flag)} must be at least 1")
    load_tasks()
    recipe = get_recipe(args.recipe)
    base = apply_overrides(recipe.config, overrides)
    params = [Param.parse(spec) for spec in args.param]
    for p in params:  # a field that does not exist, or a value it cannot take, fails here, before any training
        apply_overrides(base, [f"--{p.field}", str(p.sample(random.Random(0)))])
    runs_dir = Path(args.runs_dir or "runs")
    name = args.name or f"search-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", name):
        raise UsageError(f"--name {name!r} is not a valid search name: use letters, digits, '.', '_' and '-'")
    search_dir = runs_dir / name  # (an existing one is resumed by search(), when it is this same search)
    options = dict(device=args.device, wandb=args.wandb, project=args.project, keep_checkpoints=args.keep_checkpoints,
                   nonfinite=args.on_nonfinite)
    result = search(recipe, base, params, trials=args.trials, rounds=args.rounds, metric=args.rank_by,
                    seed=args.search_seed, search_dir=search_dir, run_options=options, say=err.print)  # fmt: skip
    table = Table(title=f"search {recipe.name}: {search_dir} (ranked by {args.rank_by})", header_style="bold")
    for col in ("trial", "round", *(p.field for p in params), args.rank_by):
        table.add_column(col, justify="right")
    for row in result["trials"]:
        shown = "failed: " + row["error"][:40] if row["metric"] is None else f"{row['metric']:.4f}"
        mark = " *" if row is result["best"] else ""
        table.add_row(row["trial"] + mark, str(row["round"]), *(f"{row['params'][p.field]:.3g}"
                      if isinstance(row["params"][p.field], float) else str(row["params"][p.field])
                      for p in params), shown)  # fmt: skip
    out.print(table)
    best = result["best"]
    out.print(f"best: {best['trial']} {args.rank_by} {best['metric']:.4f} with "
              + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in best["params"].items()))
    trials = [{**r["params"], args.rank_by: r["metric"]} for r in result["trials"]]
    figures = {"search": str(search_dir), "rank_by": args.rank_by, "best_metric": best["metric"],
               "best_run": best["run"], "best_params": best["params"], "trials": trials}  # fmt: skip
    print(json.dumps(figures), flush=True)
    return figures


def cmd_sweep(args: argparse.Namespace, overrides: list[str]) -> dict:
    """``fovea sweep``: write the W&B sweep configuration, print the commands that start it, then one JSON line."""
    from fovea import sweep
    from fovea.config import get_recipe

    if not args.recipe:
        raise UsageError("name a recipe to sweep, e.g. `fovea sweep cnn-digits --param lr=log:1e-5:1e-3`")
    load_tasks()
    recipe = get_recipe(args.recipe)
    config = sweep.build(recipe, args.param, overrides, method=args.method, metric=args.metric, goal=args.goal,
                         project=args.project, name=args.name,
                         train_args=["--device", args.device] if args.device else [])  # fmt: skip
    path = sweep.write(config, args.output)
    create, agent = f"wandb sweep {path}", f"wandb agent {sweep.agent_path(args.project)}"
    metric, width = config.get("metric"), max(len(create), len(agent)) + 3
    out.print(f"Wrote {path}: a {args.method} sweep of {recipe.name} over {', '.join(config['parameters'])}"
              + (f" ({metric['goal']} {metric['name']})" if metric else "") + ". Next:")  # fmt: skip
    out.print(f"  {create:<{width}}once: registers the sweep with W&B and prints its SWEEP_ID")
    out.print(f"  {agent:<{width}}on every machine, in an environment where `python -m fovea` works")
    out.print(f"Every machine running `wandb agent` takes trials until the sweep ends (--count N: stop after N); each "
              f"trial is a run in runs/{recipe.name}-<W&B run id>/ that reports its figures to W&B.")  # fmt: skip
    result = {"sweep_config": str(path), "recipe": recipe.name, "method": args.method, "metric": metric,
              "parameters": config["parameters"], "command": config["command"],
              "next": [create, agent]}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def _fail(message: str) -> int:
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: rank 0 says it once
        err.print(f"[bold red]error:[/bold red] {message}")
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    try:
        args, rest = p.parse_known_args(argv)
    except UsageError as e:
        return _fail(str(e))
    if args.command is None:
        p.print_help()
        return 0
    if args.command in ("train", "search", "sweep"):  # the recipe comes first; the other non-option words set fields
        args.recipe = rest.pop(0) if rest and not rest[0].startswith("-") else None
    elif rest:
        return _fail(f"unexpected arguments for `fovea {args.command}`: {' '.join(rest)}")
    from fovea import backbones
    from fovea.run import Interrupted

    try:
        if args.command == "recipes":
            load_tasks()
            cmd_recipes()
        elif args.command == "backbones":
            cmd_backbones()
        elif args.command == "train":
            if args.help:
                if not args.recipe:
                    p._subparsers._group_actions[0].choices["train"].print_help()  # noqa: SLF001
                    return 0
                from fovea.config import get_recipe

                load_tasks()
                recipe_help(get_recipe(args.recipe))
                return 0
            train_recipe(args, rest)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "sample":
            cmd_sample(args)
        elif args.command == "explain":
            cmd_explain(args)
        elif args.command == "detect":
            cmd_detect(args)
        elif args.command == "search":
            cmd_search(args, rest)
        elif args.command == "sweep":
            cmd_sweep(args, rest)
        elif args.command == "demo":
            cmd_demo(args)
    except (FoveaError, backbones.BackboneError) as e:
        return _fail(str(e))
    except OSError as e:  # a full disk, a read-only or missing folder: say where
        where = f": {e.filename}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return _fail(f"{e.strerror}{where}. The last complete checkpoint is intact; free space, then --resume.")
        return _fail(f"cannot write or read{where} ({e.strerror or e})")
    except Interrupted as e:
        err.print(f"Stopped at step {e.step}. Resume with: fovea train --resume {e.run_dir}")
        return 128 + e.signum
    except KeyboardInterrupt:
        if args.command not in ("train", "demo", "search"):  # eval, sample...: they write no checkpoint
            err.print("Stopped.")
            return 128 + signal.SIGINT
        err.print("Interrupted before a checkpoint could be written; resume from the last one with --resume.")
        return 128 + signal.SIGINT
    finally:
        from fovea import distributed

        distributed.teardown()
    return 0
