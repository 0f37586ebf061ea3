"""Fovea as a library: train a recipe, load what a run learned, run a job on a run folder, list what exists.

    import fovea
    result = fovea.train("ppo-cartpole", total_steps=20_000)   # the run folder, its figures, the trained model
    result.figures["eval/mean_return"]
    agent = fovea.load(result.run_dir)                         # any family; one obvious method each
    agent.predict(obs)

The command line is a thin layer over these functions: ``fovea train`` calls ``prepare`` and ``fit`` as ``train``
does, and ``fovea eval | sample | explain | detect`` call ``evaluate`` and ``act``. Importing this module imports
no torch: every function imports what it needs when it is called.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import shutil
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from fovea.errors import FoveaError, UsageError

TASK_PACKAGES = ("fovea.vision", "fovea.agents", "fovea.generative")  # packages that register recipes
ACTIONS = {"evaluate": "has no evaluation", "sample": "is not a generative model: it has nothing to sample",
           "explain": "has nothing to explain (explanations are for classifiers)",
           "detect": "is not a detector (fovea detect is for detect-digits, ...)"}  # fmt: skip


def load_tasks() -> None:
    """Import the task packages, which register their recipes."""
    for pkg in TASK_PACKAGES:
        importlib.import_module(pkg)


def recipes() -> dict[str, str]:
    """Every recipe's name and its one-line description (what ``fovea recipes`` lists)."""
    from fovea import config

    load_tasks()
    return {name: r.description for name, r in config.recipes().items()}


def backbones() -> dict[str, str]:
    """Every registered backbone's name and its one-line summary (what ``fovea backbones`` lists)."""
    from fovea import backbones as registry

    return {name: registry.entry(name).summary for name in registry.names()}


def config(recipe: str, **overrides: Any):
    """The validated config of ``recipe`` with ``overrides`` applied, e.g. ``config("cnn-digits", lr=3e-3,
    backbone="resnet")``; a bad name or value raises ``ConfigError`` naming the field."""
    from fovea.config import get_recipe

    load_tasks()
    return with_values(get_recipe(recipe).config, overrides)


def with_values(cfg, values: dict[str, Any]):
    """``cfg`` with fields set from Python values, then validated once (as the command line's overrides are).

    ``values`` maps a field to its value (``lr=1e-3``, ``hidden=(64, 64)``); a field holding a backbone takes
    its name (``backbone="resnet"``, starting from that backbone's defaults) or a dict of name and options
    (``backbone={"name": "resnet", "depth": 8}``); a nested config takes a dict of its fields; dotted keys reach
    inside either (``**{"backbone.depth": 8}``). Strings are read as the command line reads them."""
    from fovea import config as fc

    paths: list[tuple[list[str], Any]] = []
    for key, value in values.items():
        head, *rest = key.split(".")
        names = [f.name for f in dataclasses.fields(cfg)]
        if head not in names:
            raise fc.ConfigError(f"{type(cfg).__name__} has no field {head!r}; {fc.suggest(head, names)}")
        current = getattr(cfg, head)
        if isinstance(value, dict) and not rest and isinstance(current, fc.Config):
            spec = dict(value)
            if isinstance(current, fc.BackboneSpec):
                paths.append(([head], spec.pop("name", current.name)))
            paths.extend(([head, k], v) for k, v in spec.items())
        elif isinstance(value, fc.BackboneSpec) and not rest:
            paths.append(([head], value.name))
            paths.extend(([head, k], v) for k, v in value.options.items())
        else:
            paths.append(([head, *rest], value))
    token = fc._DEFER_VALIDATE.set(True)  # noqa: SLF001  (the checks that span fields run once, on the result)
    try:
        for path, value in paths:
            cfg = fc._set_path(cfg, path, value)  # noqa: SLF001
    finally:
        fc._DEFER_VALIDATE.reset(token)  # noqa: SLF001
    fc._validate_all(cfg)  # noqa: SLF001
    return cfg


@dataclasses.dataclass
class Result:
    """What ``train`` returns: the run folder, its figures (``summary.json``) and, loaded when first asked for,
    ``model``: the trained network ready to use (``fovea.load(run_dir)``)."""

    run_dir: Path
    figures: dict[str, Any]
    device: str = "auto"

    @cached_property
    def model(self):
        return load(self.run_dir, device=self.device)


def train(recipe: str | None = None, *, resume: str | Path | None = None, name: str | None = None,
          runs_dir: str | Path | None = None, wandb: str = "auto", device: str = "auto", project: str = "fovea",
          keep_checkpoints: int = 3, on_nonfinite: str = "stop", **overrides: Any) -> Result:  # fmt: skip
    """Train ``recipe`` into ``runs_dir/name`` (default ``runs/<recipe>-<date>-<time>``), or continue the run in
    ``resume``, with ``overrides`` of its config fields (``lr=1e-3``, ``epochs=5``; see ``with_values``).

    The same validation, run folder, checkpoints and W&B run as ``fovea train``. ``wandb``: auto (online when
    logged in, offline otherwise), online, offline or disabled. A bad recipe, field or value raises
    ``ConfigError`` naming it, before anything is written. Returns a ``Result``.
    """
    rec, cfg = prepare(recipe, resume=resume, name=name, runs_dir=runs_dir)
    cfg = with_values(cfg, overrides)
    return fit(rec, cfg, resume=resume, name=name, runs_dir=runs_dir, wandb=wandb, device=device, project=project,
               keep_checkpoints=keep_checkpoints, on_nonfinite=on_nonfinite)  # fmt: skip


def prepare(recipe: str | None, *, resume: str | Path | None = None, name: str | None = None,
            runs_dir: str | Path | None = None):  # fmt: skip
    """The recipe and the config to start from: the recipe's own, or the one the run in ``resume`` was trained
    with. Refuses a recipe given with ``resume``, or a name or runs folder (they name a new run)."""
    from fovea.config import from_dict, get_recipe
    from fovea.run import read_run

    load_tasks()
    if resume:
        if recipe:
            raise UsageError(f"give either a recipe or --resume RUN_DIR, not both (got {recipe!r})")
        if name or runs_dir:
            raise UsageError("--name and --runs-dir name a new run; --resume RUN_DIR continues the one in RUN_DIR")
        doc = read_run(resume)
        rec = get_recipe(doc["recipe"])
        return rec, from_dict(type(rec.config), doc["config"])
    if not recipe:
        raise UsageError("name a recipe to train, e.g. `fovea train cnn-digits` (`fovea recipes` lists them)")
    rec = get_recipe(recipe)
    return rec, rec.config


def fit(recipe, cfg, *, resume: str | Path | None = None, name: str | None = None,
        runs_dir: str | Path | None = None, wandb: str = "auto", device: str = "auto", project: str = "fovea",
        keep_checkpoints: int = 3, on_nonfinite: str = "stop") -> Result:  # fmt: skip
    """Train ``cfg`` (of ``recipe``) in a new run, or in the run in ``resume``; under torchrun every process
    trains and rank 0 writes. A run that fails before its first checkpoint or metric leaves no folder."""
    from fovea import distributed
    from fovea.run import Run

    if distributed.launched() and not recipe.task.distributed:
        raise UsageError(f"{recipe.name} does not train under torchrun: generative, classifier and detector recipes do "
                         f"(agents scale with --num-envs on one process); train it without torchrun")  # fmt: skip
    dev = distributed.setup(device)  # under torchrun: join the process group, take this rank's device
    opts = dict(device=dev, wandb=wandb, project=project, keep_checkpoints=keep_checkpoints, nonfinite=on_nonfinite)
    runs_dir = runs_dir or "runs"
    if resume:
        run = Run.resume(resume, recipe.name, cfg, **opts)
    elif distributed.active():  # rank 0 creates the run (its default name has the time in it); the others join it
        run = Run.create(recipe.name, cfg, name=name, runs_dir=runs_dir, **opts) if distributed.is_main() else None
        name = distributed.broadcast(run.name if run else None)
        run = run or Run.create(recipe.name, cfg, name=name, runs_dir=runs_dir, **opts)
    else:
        run = Run.create(recipe.name, cfg, name=name, runs_dir=runs_dir, **opts)
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
    return Result(run.dir, figures, str(run.device))


def load(run_dir: str | Path, *, network: str | None = None, device: str | None = None):
    """The trained model in ``run_dir``, ready to use: an ``Agent`` (``predict``, ``evaluate``), a ``Generator``
    (``sample``, ``nll``), a ``Classifier`` (``predict``, ``predict_proba``) or a ``Detector`` (``predict``); see
    fovea.models. ``network``: ``final`` (the last weights) or ``best`` (those kept by validation); default: the
    one the run's figures describe (agents: final; the others: best where one is kept). ``device``: default auto.
    ``run_dir`` may also be a W&B model artifact, ``ENTITY/PROJECT/run-NAME-model[:ALIAS]`` (``latest`` when no
    alias is given), which is downloaded into a run folder first (``fovea.tracking.fetch_artifact``).
    """
    from fovea import models

    if isinstance(run_dir, str) and not Path(run_dir).exists() and run_dir.count("/") == 2:
        from fovea.tracking import fetch_artifact

        run_dir = fetch_artifact(run_dir)
    recipe, cfg, run = open_run(run_dir, device or "auto")
    return models.load(recipe, cfg, run, network)


def open_run(run_dir: str | Path, device: str = "auto", action: str | None = None):
    """The recipe, config and read-only ``Run`` of ``run_dir``; with ``action`` (evaluate, sample, explain or
    detect), refused with a clear message when the recipe's task cannot do it."""
    from fovea.config import from_dict, get_recipe
    from fovea.run import Run, read_run

    load_tasks()
    doc = read_run(run_dir)
    recipe = get_recipe(doc["recipe"])
    if action is not None and getattr(recipe.task, action) is None:
        raise UsageError(f"recipe {recipe.name!r} {ACTIONS[action]}")
    cfg = from_dict(type(recipe.config), doc["config"])
    return recipe, cfg, Run.open(run_dir, recipe.name, cfg, device=device)


def evaluate(run_dir: str | Path, *, device: str = "auto", wandb: str = "auto", project: str = "fovea",
             **options: Any) -> dict:  # fmt: skip
    """``fovea eval``: score the run in ``run_dir`` with its task's ``evaluate`` and ``options`` (agents:
    ``episodes``, ``network``, ``step``, ``video``, ``saliency``; generative models: ``classifier``, ``samples``),
    record the figures in W&B and in ``eval.json`` (``eval-step_N.json`` for ``step`` N, ``eval-best.json`` for the
    best network: an earlier network's score never replaces the final one's), and return them with ``run`` and
    ``step``."""
    recipe, cfg, run = open_run(run_dir, device, "evaluate")
    accepted = inspect.signature(recipe.task.evaluate).parameters
    unknown = [f"--{k}" for k in options if k not in accepted]
    if unknown:
        raise UsageError(f"{' and '.join(unknown)}: recipe {recipe.name!r} evaluates without such options")
    run.attach_tracker(wandb, project)
    with run:
        figures = recipe.task.evaluate(cfg, run, **options)
        figures = {"run": str(run.dir), "step": run.units, **figures}
        step, network = options.get("step"), options.get("network")
        run.finish(figures, f"eval-step_{step}.json" if step is not None else
                   "eval-best.json" if network == "best" else "eval.json")  # fmt: skip
    return figures


def act(action: str, run_dir: str | Path, *, device: str = "auto", wandb: str = "auto", project: str = "fovea",
        **options: Any) -> dict:  # fmt: skip
    """``fovea sample | explain | detect``: open ``run_dir`` read-only and call its task's ``action`` with
    ``options`` and the run's tracker attached; returns its figures with ``run`` and ``step``."""
    recipe, cfg, run = open_run(run_dir, device, action)
    run.attach_tracker(wandb, project, job_type=action)  # its own W&B run (job_type sample, explain or detect)
    with run:
        figures = getattr(recipe.task, action)(cfg, run, **options)
    return {"run": str(run.dir), "step": run.units, **figures}


def search(recipe: str, params: list[str], *, config=None, trials: int = 8, rounds: int = 2, rank_by: str = "val/acc",
           seed: int = 0, name: str | None = None, runs_dir: str | Path | None = None, device: str = "auto",
           wandb: str = "auto", project: str = "fovea", keep_checkpoints: int = 3, on_nonfinite: str = "stop",
           say=print, **overrides: Any) -> dict:  # fmt: skip
    """``fovea search``: random search over ``params`` (``"lr=log:1e-4:1e-1"``, see fovea.search.Param) from
    ``config`` (default: the recipe's) with ``overrides``, ``rounds`` rounds of ``trials`` trials, ranked by the
    figure ``rank_by``, in ``runs_dir/name`` (a stopped search there resumes). Every field and range is checked
    before any training. Returns fovea.search.search's table of trials and best, with ``search`` (the folder) and
    ``fields`` (the searched fields)."""
    import random

    from fovea import search as searching
    from fovea.config import apply_overrides, get_recipe

    if not recipe:
        raise UsageError("name a recipe to search, e.g. `fovea search softmax-digits --param lr=log:1e-4:1e-1`")
    if not params:
        raise UsageError("give at least one --param FIELD=KIND:RANGE, e.g. --param lr=log:1e-4:1e-1")
    for flag, v in (("trials", trials), ("rounds", rounds)):
        if v < 1:
            raise UsageError(f"--{flag} {v} must be at least 1")
    load_tasks()
    rec = get_recipe(recipe)
    base = with_values(config or rec.config, overrides)
    parsed = [searching.Param.parse(spec) for spec in params]
    for p in parsed:  # a field that does not exist, or a value it cannot take, fails here, before any training
        apply_overrides(base, [f"--{p.field}", str(p.sample(random.Random(0)))])
    name = name or f"search-{rec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", name):
        raise UsageError(f"--name {name!r} is not a valid search name: use letters, digits, '.', '_' and '-'")
    search_dir = Path(runs_dir or "runs") / name  # (an existing one is resumed, when it is this same search)
    options = dict(device=device, wandb=wandb, project=project, keep_checkpoints=keep_checkpoints,
                   nonfinite=on_nonfinite)  # fmt: skip
    result = searching.search(rec, base, parsed, trials=trials, rounds=rounds, metric=rank_by, seed=seed,
                              search_dir=search_dir, run_options=options, say=say)  # fmt: skip
    return {"search": search_dir, "fields": [p.field for p in parsed], **result}
