"""Hyperparameter sweeps over many machines with W&B sweeps: ``fovea sweep`` writes the sweep configuration.

``fovea search`` runs its trials one after another in one process. A W&B sweep hands them out instead: W&B's
controller picks each next point (random, grid, or Bayesian optimisation of a metric), and every machine that runs
``wandb agent`` takes trials, each one an ordinary ``fovea train`` run started as

    python -m fovea train RECIPE [fixed overrides] --lr=0.00042 --backbone.depth=8

(the agent passes the sampled values as ``--field=value``, which ``apply_overrides`` reads). The trial's run folder
is ``runs/RECIPE-<W&B run id>/`` and its final figures go to the W&B summary, where the controller reads the metric.

    fovea sweep softmax-digits --param lr=log:1e-4:1e-1 --param reg_strength=log:1e-6:1e-2 --method bayes --epochs 5
    wandb sweep sweep.yaml                        # registers the sweep; prints its id
    wandb agent ENTITY/fovea/SWEEP_ID             # on every machine, as many as you like
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from fovea.config import Config, apply_overrides
from fovea.errors import ConfigError, UsageError
from fovea.search import Param, maximise

METHODS = ("random", "grid", "bayes")
GOALS = ("maximize", "minimize")
MARKER = "# Written by `fovea sweep`"  # the first line of a file this module may overwrite
GRID_INTS = 100  # an int range on a grid becomes the list of its integers, up to this many
# The figure each family's train() returns that a sweep optimises, by the module of the recipe's config (the longest
# prefix wins): validation figures, so the test split stays out of model selection. None: no default (a GAN's
# losses do not rank models; name a figure with --metric).
DEFAULT_METRICS: dict[str, str | None] = {
    "fovea.agents": "eval/mean_return",
    "fovea.generative": "val/loss",
    "fovea.generative.gan": None,
    "fovea.vision": "val/acc",
    "fovea.vision.detect": "val/map",
}


def default_metric(config: Config) -> str | None:
    """The figure a sweep of ``config``'s recipe optimises unless told otherwise (see ``DEFAULT_METRICS``)."""
    module = type(config).__module__
    for prefix in sorted(DEFAULT_METRICS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return DEFAULT_METRICS[prefix]
    return None


def _native(choice: str) -> Any:
    """A listed value as W&B should show it: an int or a (finite) float where it reads as one, else the string."""
    for cast in (int, float):
        try:
            v = cast(choice)
        except ValueError:
            continue
        if math.isfinite(v):
            return v
    return choice


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def distribution(p: Param, method: str) -> dict[str, Any]:
    """``p`` as a W&B sweep parameter: choice -> values, log -> log_uniform_values, logint -> q_log_uniform_values
    (q 1), uniform -> uniform, int -> int_uniform (on a grid: the list of its integers)."""
    if p.kind == "choice":
        return {"values": [_native(c) for c in p.choices]}
    where = f"--param {p.field}={p.kind}:{p.lo:g}:{p.hi:g}"
    if p.kind == "int":
        lo, hi = math.ceil(p.lo), math.floor(p.hi)
        if lo > hi:
            raise UsageError(f"{where}: there is no integer between {p.lo:g} and {p.hi:g}")
        if method != "grid":
            return {"distribution": "int_uniform", "min": lo, "max": hi}
        if hi - lo + 1 > GRID_INTS:
            example = f"--param {p.field}=choice:{lo}|{(lo + hi) // 2}|{hi}"
            raise UsageError(f"{where}: a grid would try all {hi - lo + 1} integers; list the ones to try, e.g. "
                             f"{example}, or use --method random or bayes")  # fmt: skip
        return {"values": list(range(lo, hi + 1))}
    if method == "grid":
        log = p.kind in ("log", "logint")
        mid = math.sqrt(p.lo * p.hi) if log else (p.lo + p.hi) / 2
        raise UsageError(f"--method grid tries every combination of listed values, but {where} is a range; list the "
                         f"values to try, e.g. --param {p.field}=choice:{p.lo:.3g}|{mid:.3g}|{p.hi:.3g}, or use "
                         f"--method random or bayes")  # fmt: skip
    if p.kind == "log":
        return {"distribution": "log_uniform_values", "min": p.lo, "max": p.hi}
    if p.kind == "logint":
        return {"distribution": "q_log_uniform_values", "min": _number(p.lo), "max": _number(p.hi), "q": 1}
    return {"distribution": "uniform", "min": p.lo, "max": p.hi}


def _probes(p: Param, dist: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Values a W&B agent may pass for ``p`` (its ``dist``): every listed value as the agent writes it, or the ends
    of the range; then, for a continuous range, a fractional value inside it (which an integer field refuses)."""
    if "values" in dist:
        return [str(v) for v in dist["values"]], []
    if p.kind == "int":
        return [dist["min"], dist["max"]], []
    if p.kind == "logint":  # q_log_uniform_values yields round(x) as a float, e.g. 37.0
        return [float(round(p.lo)), float(round(p.hi))], []
    inside = math.exp(math.log(p.lo) + 0.37 * math.log(p.hi / p.lo)) if p.kind == "log" else p.lo + 0.37 * (p.hi - p.lo)
    return [p.lo, p.hi], [inside]


def check_params(base: Config, params: list[Param], method: str) -> dict[str, dict[str, Any]]:
    """The W&B parameters of ``params``; every ``--field=value`` an agent may pass must be taken by ``base``, else a
    UsageError naming the param."""
    parameters = {}
    for p in params:
        dist = distribution(p, method)
        ends, inside = _probes(p, dist)
        for values, hint in ((ends, ""), (inside, f" (a {p.kind} range gives fractional values; an integer field "
                                                  f"takes int:LO:HI or logint:LO:HI)")):  # fmt: skip
            for v in values:
                try:
                    apply_overrides(base, [f"--{p.field}={v}"])
                except ConfigError as e:
                    raise UsageError(f"--param {p.field}: {e}{hint}") from None
        parameters[p.field] = dist
    return parameters


def _keys(overrides: list[str]) -> set[str]:
    """The field names set by command-line overrides (``--field value`` or ``--field=value``)."""
    keys = set()
    for tok in overrides:
        if tok.startswith("--") and len(tok) > 2:
            try:
                float(tok)
            except ValueError:
                keys.add(tok[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def build(recipe, specs: list[str], overrides: list[str], *, method: str = "random", metric: str | None = None,
          goal: str | None = None, project: str = "fovea", name: str | None = None,
          train_args: list[str] = ()) -> dict[str, Any]:  # fmt: skip
    """The W&B sweep configuration for ``recipe``, checked before anything is written.

    Args:
        recipe: a registered recipe.
        specs: the ``--param`` specs (``lr=log:1e-5:1e-3``, see ``fovea.search.KINDS``).
        overrides: fixed field overrides every trial gets (``--epochs 5``).
        method: random, grid or bayes.
        metric: the figure to optimise (default: the recipe's, see ``default_metric``); bayes needs one.
        goal: maximize or minimize (default: from the metric's name, ``fovea.search.maximise``).
        project: the W&B project of the sweep and its trials.
        name: the sweep's name on W&B (default ``RECIPE-METHOD``).
        train_args: ``fovea train`` run options every trial gets (``--device cuda``).
    """
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not a sweep method; use random, grid (every combination of "
                         f"listed values) or bayes (Bayesian optimisation of --metric)")  # fmt: skip
    if goal is not None and goal not in GOALS:
        raise UsageError(f"--goal {goal!r}: use maximize or minimize")
    if not specs:
        raise UsageError("give at least one --param FIELD=KIND:RANGE, e.g. --param lr=log:1e-5:1e-3")
    params = [Param.parse(s) for s in specs]
    fields = [p.field for p in params]
    twice = sorted({f for f in fields if fields.count(f) > 1})
    if twice:
        raise UsageError(f"--param {twice[0]} is given more than once; give each field one range")
    fixed = sorted(_keys(overrides) & set(fields))
    if fixed:
        raise UsageError(f"--{fixed[0]} is both fixed and swept; drop the fixed --{fixed[0]} or its --param")
    base = apply_overrides(recipe.config, overrides)
    parameters = check_params(base, params, method)
    metric = metric or default_metric(recipe.config)
    if method == "bayes" and not metric:
        raise UsageError(f"--method bayes optimises a metric, and {recipe.name} has no default; name one of the "
                         f"figures `fovea train {recipe.name}` prints with --metric FIGURE")  # fmt: skip
    if goal and not metric:
        raise UsageError(f"--goal {goal} needs a --metric to {goal}: {recipe.name} has no default one")
    config: dict[str, Any] = {
        "program": "fovea",  # shown on W&B; the command below is what runs
        "name": name or f"{recipe.name}-{method}",
        "description": f"fovea train {recipe.name} {' '.join([*overrides, *train_args])}".strip(),
        "project": project,
        "method": method,
    }
    if metric:
        config["metric"] = {"name": metric, "goal": goal or ("maximize" if maximise(metric) else "minimize")}
    config["parameters"] = parameters
    # ${env} is /usr/bin/env and ${interpreter} is `python` from the agent's PATH: run `wandb agent` where fovea is
    # installed. ${args} are the sampled values as --field=value.
    config["command"] = ["${env}", "${interpreter}", "-m", "fovea", "train", recipe.name, *overrides, *train_args,
                         "${args}"]  # fmt: skip
    return config


def agent_path(project: str) -> str:
    """What ``wandb agent`` is given: ENTITY/PROJECT/SWEEP_ID (``wandb sweep`` prints it filled in)."""
    return f"{os.environ.get('WANDB_ENTITY') or 'ENTITY'}/{project}/SWEEP_ID"


def write(config: dict[str, Any], path: str | Path) -> Path:
    """Write ``config`` as YAML (what ``wandb sweep`` reads) to ``path``, atomically. A file that ``fovea sweep``
    did not write is never overwritten."""
    import yaml  # a dependency of wandb

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"-o {path} is a folder; give a file name, e.g. -o {path / 'sweep.yaml'}")
    if path.exists():
        with open(path, errors="replace") as fh:
            if not fh.readline().startswith(MARKER):
                raise UsageError(f"{path} exists and was not written by fovea sweep; pick another -o or move it")
    head = (f"{MARKER}. Create the sweep with `wandb sweep {path}`, then on every machine run\n"
            f"# `wandb agent {agent_path(config['project'])}` (the line `wandb sweep` prints).\n")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(head + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1000))
    os.replace(tmp, path)
    return path
