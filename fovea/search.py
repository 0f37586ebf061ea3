"""Hyperparameter search the way the notes teach it (CS231n 6.6): random search, coarse to fine.

A coarse round samples every parameter at random over its whole range (log-uniform for learning rates
and regularisation strengths: Bergstra and Bengio 2012 show random beats grid search when only a few
parameters matter), trains each trial for a few epochs and scores it on the validation split; a fine
round then samples again in a range narrowed around the best trial. Every trial is an ordinary run,
under ``runs/SEARCH/trial-NN/`` with its own config, metrics, checkpoints and W&B run, so any trial can
be evaluated, explained or resumed like any other.

    fovea search softmax-digits --param lr=log:1e-4:1e-1 --param reg_strength=log:1e-6:1e-2 --trials 8 --epochs 5
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fovea.config import Config, apply_overrides
from fovea.errors import ConfigError, FoveaError, UsageError

KINDS = {
    "log": "FIELD=log:LO:HI      log-uniform between LO and HI (learning rates, regularisation)",
    "logint": "FIELD=logint:LO:HI   log-uniform integers (widths, batch sizes)",
    "uniform": "FIELD=uniform:LO:HI  uniform between LO and HI (dropout, momentum)",
    "int": "FIELD=int:LO:HI      uniform integers from LO to HI",
    "choice": "FIELD=choice:A|B|C   one of the listed values",
}


@dataclass(frozen=True)
class Param:
    """One searched field: ``field`` (as on the command line, e.g. ``lr`` or ``backbone.depth``), its kind
    and its range (``lo``, ``hi``) or ``choices``."""

    field: str
    kind: str
    lo: float = 0.0
    hi: float = 0.0
    choices: tuple[str, ...] = ()

    @staticmethod
    def parse(spec: str) -> Param:
        """``lr=log:1e-4:1e-1`` -> Param; a bad spec raises UsageError listing the forms."""
        field, _, rest = spec.partition("=")
        kind, _, arg = rest.partition(":")
        field = field.strip().lstrip("-").replace("-", "_")
        forms = "\n  ".join(KINDS.values())
        where = f"--param {spec!r}"
        if not field or kind not in KINDS or not arg:
            raise UsageError(f"{where} is not a search range; write one of:\n  {forms}")
        if kind == "choice":
            choices = tuple(c for c in arg.split("|") if c)
            if len(choices) < 2:
                raise UsageError(f"{where}: choice needs at least two values, e.g. {field}=choice:sgd|adam")
            return Param(field, kind, choices=choices)
        try:
            lo, hi = (float(x) for x in arg.split(":"))
        except ValueError:
            raise UsageError(f"{where}: {kind} needs two numbers LO:HI, e.g. {field}={kind}:1e-4:1e-1") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UsageError(f"{where}: needs LO < HI (got {lo:g} and {hi:g})")
        if kind in ("log", "logint") and lo <= 0:
            raise UsageError(f"{where}: a log range needs LO > 0 (got {lo:g}); use uniform:{lo:g}:{hi:g} instead")
        return Param(field, kind, lo, hi)

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.choices)
        if self.kind in ("log", "logint"):
            v = math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))
        else:
            v = rng.uniform(self.lo, self.hi)
        if self.kind in ("int", "logint"):
            return max(math.ceil(self.lo), min(math.floor(self.hi), round(v)))
        return min(self.hi, max(self.lo, float(f"{v:.3g}")))  # 3 significant digits, kept inside the range

    def narrowed(self, best: Any, shrink: float = 0.25) -> Param:
        """The next round's range: ``shrink`` of this range's width (in log space for log kinds), centred on
        ``best`` and kept inside this range. Choices stay as they are."""
        if self.kind == "choice":
            return self
        log = self.kind in ("log", "logint")
        f = math.log if log else (lambda x: x)
        inv = math.exp if log else (lambda x: x)
        lo, hi, b = f(self.lo), f(self.hi), f(float(best))
        half = (hi - lo) * shrink / 2
        new_lo, new_hi = max(lo, b - half), min(hi, b + half)
        return Param(self.field, self.kind, inv(new_lo), inv(new_hi))

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.field} in {{{', '.join(self.choices)}}}"
        return f"{self.field} {self.kind} [{self.lo:.3g}, {self.hi:.3g}]"


def maximise(metric: str) -> bool:
    """Accuracies and returns go up; losses, NLLs and distances go down."""
    return not any(w in metric for w in ("loss", "nll", "fid", "kid", "error", "bits"))


def _resume(search_dir: Path, spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The finished trials of the search in ``search_dir`` (by name) when it is this same search, {} for a new
    one; a folder that holds something else raises UsageError."""
    spec_path = search_dir / "search.json"
    if not search_dir.exists() or (not any(search_dir.iterdir())):
        search_dir.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec, indent=2) + "\n")
        return {}
    try:
        same = json.loads(spec_path.read_text()) == json.loads(json.dumps(spec))
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        raise UsageError(
            f"{search_dir} already exists and holds another search (or none); pick another --name, or give the "
            f"same recipe, --param, --trials, --rounds, --rank-by and fields to resume it"
        )
    done = {}
    with contextlib.suppress(FileNotFoundError), open(search_dir / "trials.jsonl") as fh:
        for line in fh:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill: that trial runs again
                row = json.loads(line)
                done[row["trial"]] = row
    return done


def search(recipe, base: Config, params: list[Param], *, trials: int, rounds: int, metric: str, seed: int,
           search_dir: Path, run_options: dict[str, Any], say=print) -> dict[str, Any]:  # fmt: skip
    """Run ``rounds`` rounds of ``trials`` random trials each (the first coarse, each next one in a quarter of
    the previous range around the best so far) and return the table of trials and the best. A trial that
    diverges is recorded as failed; any other error stops the search with a one-line message.

    Rerun with the same arguments, a stopped search resumes: finished trials (``trials.jsonl``) are skipped, the
    one that was stopped resumes from its checkpoint. Every trial's W&B run is in the group named after the
    search (job_type search); at the end a W&B run of the search itself holds the table of trials."""
    from fovea.run import Interrupted

    spec = {"recipe": recipe.name, "params": [dataclasses.asdict(p) for p in params], "trials": trials,
            "rounds": rounds, "metric": metric, "seed": seed, "config": base.to_dict()}  # fmt: skip
    done = _resume(search_dir, spec)
    if done:
        say(f"Resuming {search_dir}: {len(done)} finished trial(s) skipped.")
    rng = random.Random(seed)
    sign = 1.0 if maximise(metric) else -1.0
    table: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    log_path = search_dir / "trials.jsonl"
    for r in range(rounds):
        if r > 0 and best is not None:
            params = [p.narrowed(best["params"][p.field]) for p in params]
        stage = "coarse" if r == 0 else "fine"
        say(f"Round {r + 1} of {rounds} ({stage}): {'; '.join(p.describe() for p in params)}")
        for _ in range(trials):
            values = {p.field: p.sample(rng) for p in params}
            name = f"trial-{len(table):02d}"
            row: dict[str, Any] = done.get(name) or {"trial": name, "round": r + 1, "params": values}
            if name not in done:
                try:
                    row = _trial(recipe, base, row, metric, search_dir, run_options)
                except Interrupted:
                    say(f"Search stopped during {name}; rerun the same command to resume it (finished trials are "
                        f"kept, {name} goes on from its checkpoint).")  # fmt: skip
                    raise
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            table.append(row)
            if row["metric"] is not None and (best is None or sign * row["metric"] > sign * best["metric"]):
                best = row
    if best is None:
        raise ConfigError(f"every trial of the search failed (see {log_path}); narrow the ranges, e.g. lower lr")
    _log_table(search_dir, spec, table, run_options)
    return {"metric": metric, "best": best, "trials": table, "log": str(log_path)}


def _trial(recipe, base: Config, row: dict[str, Any], metric: str, search_dir: Path,
           run_options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Train one trial (resuming its run folder when a stopped search left one) and fill in its ``metric``."""
    from fovea import tracking
    from fovea.errors import RunError
    from fovea.run import Run

    name, overrides = row["trial"], [a for f, v in row["params"].items() for a in (f"--{f}", str(v))]
    try:
        cfg = apply_overrides(base, overrides)
    except ConfigError as e:
        raise UsageError(f"trial {name} with {' '.join(overrides)}: {e} (narrow that --param range)") from None
    with tracking.context(group=search_dir.name, job_type="search"):
        if (search_dir / name / "config.json").exists():  # stopped during this trial: go on from its checkpoint
            run = Run.resume(search_dir / name, recipe.name, cfg, **run_options)
        else:
            run = Run.create(recipe.name, cfg, name=name, runs_dir=search_dir, **run_options)
        try:
            with run:
                figures = recipe.task.train(cfg, run)
                run.finish(figures)
            if metric not in figures:
                known = ", ".join(k for k, v in figures.items() if isinstance(v, int | float))
                raise UsageError(f"--rank-by {metric!r} is not among the figures {recipe.name} reports: {known}")
            row["metric"] = float(figures[metric])
        except RunError as e:  # a diverged trial is a result of a coarse search, not a failure of it
            row["metric"], row["error"] = None, str(e).splitlines()[0][:200]
        except (FoveaError, ValueError) as e:  # a value the model cannot take (e.g. a resnet depth): say which
            if run.untouched():
                shutil.rmtree(run.dir, ignore_errors=True)
            if isinstance(e, UsageError):
                raise
            raise UsageError(f"trial {name} with {' '.join(overrides)}: {e}") from None
    row["run"] = str(run.dir)
    return row


def _log_table(search_dir: Path, spec: dict[str, Any], table: list[dict], run_options: dict[str, Any]) -> None:
    """A W&B run of the search (job_type search, in its trials' group): one row per trial, and the ranked
    figure per trial as a curve."""
    from fovea import tracking

    fields = [p["field"] for p in spec["params"]]
    columns = ["trial", "round", *fields, spec["metric"], "error"]
    rows = [[t["trial"], t["round"], *(t["params"][f] for f in fields), t["metric"], t.get("error", "")]
            for t in table]  # fmt: skip
    tracker = tracking.Tracker(search_dir, mode=run_options.get("wandb", "auto"),
                               project=run_options.get("project", "fovea"), name=search_dir.name,
                               run_id=_search_id(search_dir), config=spec, job_type="search",
                               group=search_dir.name, tags=(spec["recipe"], "search"))  # fmt: skip
    try:
        for i, t in enumerate(table):
            if t["metric"] is not None:
                tracker.log({f"search/{spec['metric']}": t["metric"]}, step=i)
        tracker.log_table("search/trials", columns, rows, step=len(table))
    finally:
        tracker.finish()


def _search_id(search_dir: Path) -> str:
    """The search's W&B run id, kept in search_dir/wandb_id so a resumed search updates the same run."""
    path = search_dir / "wandb_id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
