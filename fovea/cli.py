"""The ``fovea`` command: recipes, backbones, train, eval, sample, explain, detect, search, sweep, demo.

Parsing and printing only: the work is done by fovea.api (and fovea.search, fovea.sweep). Every command that
computes figures prints a readable table, then, as its last line, the same figures as one JSON object. A user's
mistake gets one line naming the problem and the fix, and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fovea import api
from fovea.api import load_tasks, open_run  # noqa: F401  (tests import them from here)
from fovea.errors import FoveaError, UsageError

EXPLANATIONS = ("filters", "saliency", "occlusion", "tsne", "neighbours")  # vision.explain.METHODS, kept here so
# that `fovea --help` needs no torch import (a test checks the two agree)
WANDB_MODES = ("auto", "online", "offline", "disabled")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake like every other one (one ``error:`` line, exit 2) instead of printing
    its usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (`{self.prog} --help` lists the options)")


def run_options() -> argparse.ArgumentParser:
    """The options of a command that trains runs (train, search, demo)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--name", help="run folder name under --runs-dir (default: <recipe>-<date>-<time>)")
    p.add_argument("--runs-dir", help="where run folders live (default: runs)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--wandb", default="auto", choices=WANDB_MODES,
                   help="W&B mode; auto: online when logged in, offline otherwise")  # fmt: skip
    p.add_argument("--project", default="fovea", help="W&B project (default: fovea)")
    p.add_argument("--keep-checkpoints", type=int, default=3, help="how many recent checkpoints to keep (default: 3)")
    p.add_argument("--on-nonfinite", default="stop", choices=["stop", "skip"],
                   help="a NaN or infinite loss or gradient: stop the run, keeping the last good checkpoint (default), "
                   "or skip that update (one device read per update)")  # fmt: skip
    return p


def job_options(wandb: str = "auto") -> argparse.ArgumentParser:
    """The options of a command on a trained run's folder (eval, sample, explain, detect)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("run_dir", help="the run folder, e.g. runs/NAME")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--wandb", default=wandb, choices=WANDB_MODES,
                   help=f"W&B mode for what it logs (default: {wandb})")  # fmt: skip
    p.add_argument("--project", default="fovea", help="W&B project (default: fovea)")
    return p


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("-h", "--help", action="store_true", help="show the recipe's fields (with a recipe) or this help")


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=int, help="agents: episodes to play (default: the config's eval_episodes)")
    p.add_argument("--network", choices=["final", "best"],
                   help="agents: score the final network (default) or the best of the periodic evaluations; either "
                        "plays fresh games, seeded apart from every game of training")  # fmt: skip
    p.add_argument("--step", type=int, metavar="N",
                   help="agents: score the network of the checkpoint at agent step N (a folder "
                        "RUN_DIR/checkpoints/step_N; default: the latest) instead of the final one")  # fmt: skip
    p.add_argument("--video", action="store_true", help="agents: record one episode to runs/NAME/videos/ and W&B")
    p.add_argument("--saliency", action="store_true", help="agents: the video shows gradient saliency (pixels only)")
    p.add_argument("--classifier", metavar="RUN_DIR",
                   help="generative: the classifier run whose features score samples (default: the newest "
                        "cnn-digits run beside RUN, trained once when there is none)")  # fmt: skip
    p.add_argument("--samples", type=int, help="generative: samples scored (default: 1000)")


def _sample_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("-o", "--output", help="PNG to write (default: runs/NAME/samples/sample_seedS.png)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same samples (default: 0)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="1: the model's distribution; lower: more typical samples (0: the most likely)")  # fmt: skip
    p.add_argument("--interpolate", action="store_true", help="rows of images between two random latent codes")
    p.add_argument("--label", type=int, help="class-conditional models: samples of this class")


def _explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--what", required=True, choices=EXPLANATIONS,
                   help="filters: first-layer weights; saliency: |d score / d pixel|; occlusion: drop in p(true "
                        "class) under a sliding patch; tsne: 2-D map of the last-layer features; neighbours: nearest "
                        "training images in feature space")  # fmt: skip
    p.add_argument("-n", type=int, help="images explained (default 8; tsne: points, default 2000; filters: all)")
    p.add_argument("-o", "--output", help="PNG to write (default: runs/NAME/explain/WHAT.png)")
    p.add_argument("--seed", type=int, default=0, help="which test images are picked (default: 0)")


def _detect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...), resized for the model")
    p.add_argument("-o", "--output", metavar="OUT_DIR",
                   help="folder for the pictures and detections.json (default: runs/NAME/detections/)")  # fmt: skip
    p.add_argument("--threshold", type=float, default=0.5, help="boxes scored below this are not drawn (default: 0.5)")


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=[], metavar="FIELD=KIND:RANGE",
                   help="a searched field, e.g. lr=log:1e-4:1e-1 (repeat for each)")  # fmt: skip
    p.add_argument("--trials", type=int, default=8, help="trials per round (default: 8)")
    p.add_argument("--rounds", type=int, default=2, help="rounds: the first coarse, the rest finer (default: 2)")
    p.add_argument("--rank-by", default="val/acc", metavar="FIGURE",
                   help="the figure trials are ranked by (default: val/acc; losses are minimised)")  # fmt: skip
    p.add_argument("--search-seed", type=int, default=0, help="seeds the sampling of the trials (default: 0)")


def _sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=[], metavar="FIELD=KIND:RANGE",
                   help="a swept field, e.g. lr=log:1e-5:1e-3 (repeat for each)")  # fmt: skip
    p.add_argument("--method", default="random", help="random (default), grid (choices and int ranges) or bayes")
    p.add_argument("--metric", metavar="FIGURE", help="the figure to optimise (default: the recipe's, e.g. val/acc)")
    p.add_argument("--goal", help="maximize or minimize (default: minimize losses, maximize the rest)")
    p.add_argument("--project", default="fovea", help="W&B project of the sweep and its trials (default: fovea)")
    p.add_argument("--name", help="the sweep's name on W&B (default: RECIPE-METHOD)")
    p.add_argument("-o", "--output", default="sweep.yaml", help="the configuration to write (default: sweep.yaml)")
    p.add_argument("--device", help="every trial's --device (default: auto)")


# ----------------------------------------------------------------------------- the commands


def cmd_recipes(args: argparse.Namespace, rest: list[str]) -> None:
    from fovea.config import recipes

    load_tasks()
    table = Table(title="Recipes (fovea train RECIPE)", header_style="bold")
    for col in ("recipe", "config", "description"):
        table.add_column(col)
    for name, r in recipes().items():
        table.add_row(name, type(r.config).__name__, r.description)
    out.print(table)


def cmd_backbones(args: argparse.Namespace, rest: list[str]) -> None:
    from fovea import backbones
    from fovea.config import BackboneSpec

    table = Table(title="Backbones (--backbone NAME --backbone.OPTION VALUE)", header_style="bold")
    for col in ("name", "input", "options", "description"):
        table.add_column(col)
    for name in backbones.names():
        e = backbones.entry(name)
        table.add_row(name, e.kind, ", ".join(BackboneSpec(name=name).option_types()), e.summary)
    out.print(table)


def recipe_help(recipe) -> None:
    """``fovea train RECIPE --help``: the recipe's fields, their values and their docs."""
    import dataclasses

    from fovea.config import field_docs

    cfg = recipe.config
    out.print(f"[bold]fovea train {recipe.name}[/bold] [--name NAME] [--device DEV] [--wandb MODE] "
              f"[--field VALUE ...]\n")  # fmt: skip
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


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> dict | None:
    """``fovea train``: the recipe's fields with --help, else train and print the figures."""
    if args.help:
        if not args.recipe:
            args.parser.print_help()
            return None
        from fovea.config import get_recipe

        load_tasks()
        recipe_help(get_recipe(args.recipe))
        return None
    return train(args, overrides)


def train(args: argparse.Namespace, overrides: list[str]) -> dict:
    """Train ``args.recipe`` (or continue ``args.resume``) with ``overrides`` (``--field VALUE`` words); print the
    figures (rank 0 under torchrun) and return them with ``run``."""
    from fovea import distributed
    from fovea.config import apply_overrides

    resume = getattr(args, "resume", None)
    recipe, cfg = api.prepare(args.recipe, resume=resume, name=args.name, runs_dir=args.runs_dir)
    result = api.fit(recipe, apply_overrides(cfg, overrides), resume=resume, name=args.name, runs_dir=args.runs_dir,
                     wandb=args.wandb, device=args.device, project=args.project,
                     keep_checkpoints=args.keep_checkpoints, on_nonfinite=args.on_nonfinite)  # fmt: skip
    figures = {"run": str(result.run_dir), **result.figures}
    if distributed.is_main():
        print_figures(f"{recipe.name}: {result.run_dir}", figures)
    return figures


def _at_least_1(**given: int | None) -> None:
    for flag, v in given.items():
        if v is not None and v < 1:
            raise UsageError(f"{'-' if len(flag) == 1 else '--'}{flag} {v} must be at least 1")


def _job(args: argparse.Namespace) -> dict:
    return dict(device=args.device, wandb=args.wandb, project=args.project)


def run_job(action: str, run_dir: str | Path, job: dict, **options: Any) -> dict:
    """``api.evaluate`` (action ``eval``) or ``api.act`` on ``run_dir``; prints the figures and returns them."""
    if action == "eval":
        figures = api.evaluate(run_dir, **job, **options)
    else:
        figures = api.act(action, run_dir, **job, **options)
    print_figures(f"{action} {figures['run']}", figures)
    return figures


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> dict:
    _at_least_1(episodes=args.episodes, samples=args.samples, step=args.step)
    given = {"episodes": args.episodes, "network": args.network, "video": args.video, "saliency": args.saliency,
             "classifier": args.classifier, "samples": args.samples, "step": args.step}  # fmt: skip
    return run_job("eval", args.run_dir, _job(args), **{k: v for k, v in given.items() if v})


def cmd_sample(args: argparse.Namespace, rest: list[str]) -> dict:
    return run_job("sample", args.run_dir, _job(args), n=args.n, output=args.output, seed=args.seed,
                temperature=args.temperature, interpolate=args.interpolate, label=args.label)  # fmt: skip


def cmd_explain(args: argparse.Namespace, rest: list[str]) -> dict:
    _at_least_1(n=args.n)
    return run_job("explain", args.run_dir, _job(args), what=args.what, output=args.output, n=args.n, seed=args.seed)


def cmd_detect(args: argparse.Namespace, rest: list[str]) -> dict:
    if not 0 <= args.threshold < 1:
        raise UsageError(f"--threshold {args.threshold} must be in [0, 1)")
    return run_job("detect", args.run_dir, _job(args), images=args.images, output=args.output,
                threshold=args.threshold)  # fmt: skip


def cmd_demo(args: argparse.Namespace, rest: list[str]) -> None:
    """``fovea demo``: a classifier, a generator, a detector and an agent on embedded data (fovea.demo)."""
    from fovea import demo

    demo.run(args)


def cmd_search(args: argparse.Namespace, overrides: list[str]) -> dict:
    """``fovea search``: the table of trials, the best, then one JSON line."""
    from fovea.config import apply_overrides, get_recipe

    base = None
    if args.recipe and args.param and min(args.trials, args.rounds) >= 1:  # (else api.search says what is missing)
        load_tasks()
        base = apply_overrides(get_recipe(args.recipe).config, overrides)  # the --field VALUE words
    result = api.search(args.recipe, args.param, config=base, trials=args.trials, rounds=args.rounds,
                        rank_by=args.rank_by, seed=args.search_seed, name=args.name, runs_dir=args.runs_dir,
                        device=args.device, wandb=args.wandb, project=args.project,
                        keep_checkpoints=args.keep_checkpoints, on_nonfinite=args.on_nonfinite,
                        say=err.print)  # fmt: skip
    search_dir, params = result["search"], result["fields"]
    table = Table(title=f"search {args.recipe}: {search_dir} (ranked by {args.rank_by})", header_style="bold")
    for col in ("trial", "round", *params, args.rank_by):
        table.add_column(col, justify="right")
    for row in result["trials"]:
        shown = "failed: " + row["error"][:40] if row["metric"] is None else f"{row['metric']:.4f}"
        mark = " *" if row is result["best"] else ""
        values = (row["params"][f] for f in params)
        table.add_row(row["trial"] + mark, str(row["round"]), *(f"{v:.3g}" if isinstance(v, float) else str(v)
                                                                for v in values), shown)  # fmt: skip
    out.print(table)
    best = result["best"]
    out.print(f"best: {best['trial']} {args.rank_by} {best['metric']:.4f} with "
              + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in best["params"].items()))  # fmt: skip
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


# ----------------------------------------------------------------------------- the table and main


@dataclass(frozen=True)
class Command:
    """One ``fovea`` command: its handler ``run(args, rest)``, its help line, its own options, the shared option
    groups it takes (``run``: training options; ``job``: a run folder's), and whether its first free word is a
    recipe (the other free words then set config fields)."""

    run: Callable[[argparse.Namespace, list[str]], Any]
    help: str
    options: Callable[[argparse.ArgumentParser], None] | None = None
    shared: str | None = None
    recipe: bool = False
    parser: dict = field(default_factory=dict)  # usage, description, add_help for argparse


# fmt: off
COMMANDS = {
    "recipes": Command(cmd_recipes, "list every recipe with a one-line description"),
    "backbones": Command(cmd_backbones, "list the registered backbones and their options"),
    "train": Command(cmd_train, "train a recipe: fovea train RECIPE [--field value ...]", _train_options, "run", True,
                     {"usage": "fovea train RECIPE [--name NAME] [run options] [--field VALUE ...]  |  fovea train "
                               "--resume RUN_DIR", "add_help": False}),
    "eval": Command(cmd_eval, "evaluate a run's latest checkpoint: fovea eval runs/NAME", _eval_options, "job"),
    "sample": Command(cmd_sample, "a PNG grid of a generative model's samples: fovea sample runs/NAME -n 64",
                      _sample_options, "job"),
    "explain": Command(cmd_explain, "a picture of what a classifier learned: fovea explain runs/NAME --what saliency",
                       _explain_options, "job"),
    "detect": Command(cmd_detect, "draw a detector's boxes on image files: fovea detect runs/NAME a.png -o out/",
                      _detect_options, "job-quiet"),
    "search": Command(cmd_search, "random hyperparameter search, coarse to fine: fovea search RECIPE --param "
                      "lr=log:1e-4:1e-1 --trials 8", _search_options, "run", True, {
        "usage": "fovea search RECIPE --param FIELD=KIND:RANGE [--param ...] [--trials N] [--rounds R] [--rank-by "
                 "FIGURE] [--name NAME] [run options] [--field VALUE ...]",
        "description": "Random search over the --param ranges (log:LO:HI, logint:LO:HI, uniform:LO:HI, int:LO:HI, "
                       "choice:A|B|C): a coarse round, then rounds narrowed around the best trial. Give a few --epochs "
                       "per trial. Each trial is a run in runs/NAME/trial-NN/."}),
    "sweep": Command(cmd_sweep, "a W&B sweep whose trials run on every machine with `wandb agent`: fovea sweep RECIPE "
                     "--param lr=log:1e-5:1e-3 --method bayes", _sweep_options, None, True, {
        "usage": "fovea sweep RECIPE --param FIELD=KIND:RANGE [--param ...] [--method random|grid|bayes] [--metric "
                 "FIGURE] [--goal maximize|minimize] [--project P] [--name NAME] [-o sweep.yaml] [--device DEV] "
                 "[--field VALUE ...]",
        "description": "Write a W&B sweep configuration whose trials are `fovea train RECIPE [--field VALUE ...]` "
                       "with the --param values (log:LO:HI, logint:LO:HI, uniform:LO:HI, int:LO:HI, choice:A|B|C), "
                       "then print the commands that create it and start agents."}),
    "demo": Command(cmd_demo, "about 90 s on embedded data: a digits CNN, a digits VAE and its samples, a digits "
                    "detector, then a DQN agent on Catch pixels", shared="run"),
}
# fmt: on


def parser() -> argparse.ArgumentParser:
    """The ``fovea`` parser: one subparser per entry of ``COMMANDS``, with the shared option groups as parents."""
    shared = {"run": run_options(), "job": job_options(), "job-quiet": job_options(wandb="disabled")}
    p = _Parser(prog="fovea", description="Learning from pixels: train, evaluate and compare models.",
                allow_abbrev=False)  # fmt: skip
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, c in COMMANDS.items():
        parents = [shared[c.shared]] if c.shared else []
        s = sub.add_parser(name, help=c.help, parents=parents, allow_abbrev=False, **c.parser)
        if c.options:
            c.options(s)
        s.set_defaults(parser=s)
    return p


def _fail(message: str) -> int:
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: rank 0 says it once
        err.print(f"[bold red]error:[/bold red] {message}")
    return 2


def main(argv: list[str] | None = None) -> int:
    """``fovea``: parse ``argv`` (default: the command line), run the command; returns the exit status (0; 2 for a
    user's mistake, printed as one line; 128 + the signal when stopped by one)."""
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    try:
        args, rest = p.parse_known_args(argv)
    except UsageError as e:
        return _fail(str(e))
    if args.command is None:
        p.print_help()
        return 0
    command = COMMANDS[args.command]
    if command.recipe:  # the recipe comes first; the other non-option words set fields
        args.recipe = rest.pop(0) if rest and not rest[0].startswith("-") else None
    elif rest:
        return _fail(f"unexpected arguments for `fovea {args.command}`: {' '.join(rest)}")
    try:
        command.run(args, rest)
    except FoveaError as e:
        return _fail(str(e))
    except OSError as e:  # a full disk, a read-only or missing folder: say where
        where = f": {e.filename}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return _fail(f"{e.strerror}{where}. The last complete checkpoint is intact; free space, then --resume.")
        return _fail(f"cannot write or read{where} ({e.strerror or e})")
    except Exception as e:  # (their modules import torch: imported here, `fovea train --help` needs none)
        from fovea.backbones import BackboneError
        from fovea.run import Interrupted

        if isinstance(e, BackboneError):
            return _fail(str(e))
        if not isinstance(e, Interrupted):
            raise
        err.print(f"Stopped at step {e.step}. Resume with: fovea train --resume {e.run_dir}")
        return 128 + e.signum
    except KeyboardInterrupt:
        if args.command not in ("train", "demo", "search"):  # eval, sample...: they write no checkpoint
            err.print("Stopped.")
            return 128 + signal.SIGINT
        err.print("Interrupted before a checkpoint could be written; resume from the last one with --resume.")
        return 128 + signal.SIGINT
    finally:
        if "fovea.distributed" in sys.modules:  # (a command that never imported it joined no process group)
            sys.modules["fovea.distributed"].teardown()
    return 0
