"""A Run owns the life of a training run: seeds, device, run folder, progress, metrics, checkpoints, resume.

    with Run.create("cnn-digits", config) as run:
        model = ...; optimizer = ...
        run.track(model=model, optimizer=optimizer)   # what a checkpoint holds
        run.restore()                                 # continue a resumed run where it stopped
        for epoch in run.loop(config.epochs, unit="epoch", show="val/acc"):
            ...                                       # one epoch
            run.log({"train/loss": loss, "val/acc": acc})

``run.loop`` saves a checkpoint every ``config.checkpoint_every`` steps, at the end, and when
SIGINT or SIGTERM arrives (then raises ``Interrupted``). A checkpoint holds every tracked object's
``state_dict()``, ``run.state`` (a dict of JSON values), the step, every RNG's state and the length
of metrics.jsonl, so a resumed run continues exactly where the checkpoint left it.
Algorithms never call wandb, print progress or write files directly: they go through the Run.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fovea import checkpoint, distributed
from fovea.config import Config
from fovea.errors import CheckpointError, RunError
from fovea.tracking import MODES, Tracker, sweep_run_id

NONFINITE = ("stop", "skip")  # what --on-nonfinite does with a NaN or infinite loss or gradient
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
console = Console(stderr=True, highlight=False, soft_wrap=True)


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint was written."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU for ``auto``; otherwise the device named, if this machine has it."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise RunError(f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {requested}: CUDA is not available on this machine; use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RunError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError(f"--device {requested}: MPS is not available on this machine; use --device cpu (or auto)")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _fresh_name(runs_dir: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... when a run of that name exists (two starts in one second)."""
    name, n = base, 1
    while (runs_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def read_run(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run folder, checked to be one."""
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise RunError(f"{path} is not a run folder: it has no config.json (runs live in runs/NAME)")
    try:
        doc = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{cfg} is corrupt ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("recipe"), str) or not isinstance(doc.get("config"), dict):
        raise RunError(f"{cfg} is not a Fovea run config (it needs 'recipe' and 'config')")
    return doc


class Run:
    """One training run (or, with ``evaluate=True``, read-only access to one for evaluation). Make one with
    ``Run.create`` (a new run), ``Run.resume`` (continue one) or ``Run.open`` (read one); the constructor takes
    the arguments of all three.

    Args:
        recipe: the recipe name the config came from (recorded in config.json).
        config: the validated config; its ``seed`` seeds every RNG and its ``checkpoint_every``
            (in loop steps) sets the checkpoint schedule.
        name: the run folder is ``runs_dir/name``; default ``<recipe>-<date>-<time>``.
        runs_dir: where run folders live.
        device: auto, cpu, cuda, cuda:N or mps.
        wandb: auto, online, offline or disabled.
        project: the W&B project.
        keep_checkpoints: how many recent checkpoints to keep.
        resume: continue the run in ``run_dir`` (which must exist) instead of creating one.
        run_dir: an explicit run folder (used by resume and evaluation).
        evaluate: open an existing run for evaluation: no tracker, no new folder.
    """

    def __init__(self, recipe: str, config: Config, *, name: str | None = None, runs_dir: str | Path = "runs",
                 device: str = "auto", wandb: str = "auto", project: str = "fovea", keep_checkpoints: int = 3,
                 nonfinite: str = "stop",
                 resume: bool = False, run_dir: str | Path | None = None, evaluate: bool = False):  # fmt: skip
        if wandb not in MODES:
            raise RunError(f"--wandb {wandb!r} is not a mode; use one of {', '.join(MODES)}")
        if keep_checkpoints < 1:
            raise RunError(f"--keep-checkpoints {keep_checkpoints} must be at least 1")
        if nonfinite not in NONFINITE:
            raise RunError(f"--on-nonfinite {nonfinite!r}: use stop (end the run, keeping the last good checkpoint) "
                           f"or skip (leave such updates out)")  # fmt: skip
        self.nonfinite = nonfinite
        self.recipe, self.config = recipe, config
        self.device = pick_device(device)
        self.main = distributed.is_main()  # under torchrun only rank 0 writes; the other ranks train alongside
        self.keep_checkpoints = keep_checkpoints
        self.evaluating, self.resuming = evaluate, resume
        self.step = 0
        self.per_step = 1  # what one loop step counts in the run's unit (agent steps: num_envs x n_steps), see loop
        self.state: dict[str, Any] = {}
        self._objects: dict[str, Any] = {}
        self._optional: set[str] = set()  # tracked objects an older checkpoint may lack
        self._tracking: dict | None = None  # how to start the tracker, once there is something to track
        self._loaded: set[str] = set()  # what the last restore loaded
        self._stop: int | None = None
        self._progress: Progress | None = None
        self._show: str | None = None
        self.tracker: Tracker | None = None
        if run_dir is not None:
            self.dir = Path(run_dir)
            self.name = self.dir.name
            self.meta = read_run(self.dir)
            self.meta.setdefault("config_class", type(config).__qualname__)
            self.meta.setdefault("wandb_id", uuid.uuid4().hex[:12])
        else:
            trial = sweep_run_id()  # under `wandb agent`: this run is the sweep's trial, named and tracked by its id
            stamp = re.sub(r"[^A-Za-z0-9._-]", "-", trial)[:64] if trial else f"{datetime.now():%Y%m%d-%H%M%S}"
            self.name = name or _fresh_name(Path(runs_dir), f"{recipe}-{stamp}")
            if not _NAME.match(self.name):
                raise RunError(f"--name {self.name!r} is not a valid run name: use letters, digits, '.', '_' and '-'")
            self.dir = Path(runs_dir) / self.name
            if self.main and (self.dir / "config.json").exists():
                raise RunError(f"{self.dir} already exists; resume it with `fovea train --resume {self.dir}` "
                               f"or pick another --name")  # fmt: skip
            self.meta = {
                "recipe": recipe,
                "config_class": type(config).__qualname__,
                "config": config.to_dict(),
                "wandb_id": trial or uuid.uuid4().hex[:12],
                "created": datetime.now().isoformat(timespec="seconds"),
            }
            if trial:
                self.meta["wandb_sweep"] = os.environ["WANDB_SWEEP_ID"].strip()
        self.ckpt_dir = self.dir / "checkpoints"
        if evaluate:
            return
        if run_dir is not None and not resume:
            raise RunError("run_dir is for resume or evaluation")
        seed_everything(getattr(config, "seed", 0))
        if not self.main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        self._tracking = dict(mode=wandb, project=project)
        if not resume:  # a resume records its config, and starts W&B, once restore() has shown the checkpoint fits
            _write_json(self.dir / "config.json", self.meta)
            self._start_tracker()

    @classmethod
    def create(cls, recipe: str, config: Config, *, name: str | None = None, runs_dir: str | Path = "runs",
               **options: Any) -> Run:  # fmt: skip
        """A new run in ``runs_dir/name`` (default name ``<recipe>-<date>-<time>``): its folder and config.json are
        written and its tracker started. ``options``: device, wandb, project, keep_checkpoints, nonfinite."""
        return cls(recipe, config, name=name, runs_dir=runs_dir, **options)

    @classmethod
    def resume(cls, run_dir: str | Path, recipe: str, config: Config, **options: Any) -> Run:
        """The run in ``run_dir``, to continue training: ``restore()`` loads its latest checkpoint, then records
        ``config`` (which may carry new overrides) and starts the tracker. ``options`` as for ``create``."""
        return cls(recipe, config, run_dir=run_dir, resume=True, **options)

    @classmethod
    def open(cls, run_dir: str | Path, recipe: str, config: Config, *, device: str = "auto") -> Run:
        """Read-only access to the run in ``run_dir`` (evaluation, sampling, loading a model): no new folder, no
        seeding, no tracker until ``attach_tracker``."""
        return cls(recipe, config, run_dir=run_dir, device=device, evaluate=True)

    def _start_tracker(self) -> None:
        """Start W&B and metrics.jsonl: a new run at once, a resume once its checkpoint has loaded, an evaluation
        when it first logs (so a mistake that stops either one leaves the run folder as it was)."""
        if self.tracker is None and self.main and self._tracking is not None:
            self.tracker = Tracker.for_run(self, **self._tracking)

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> Run:
        self._handlers = {}
        if not self.evaluating and hasattr(signal, "SIGTERM"):
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: no signal handling
                self._handlers = {}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._stop_progress()
        if self.tracker is not None:
            self.tracker.finish()

    def _on_signal(self, signum: int, frame) -> None:
        if self._stop is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._stop = signum
        self.say(f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping "
                 f"(Ctrl-C again to stop at once).")  # fmt: skip

    def say(self, message: str) -> None:
        """A notice for the user (stderr), above the progress bar (rank 0's only, under torchrun)."""
        if not self.main:
            return
        (self._progress.console if self._progress else console).print(message, markup=False)

    # ------------------------------------------------------------------ state and checkpoints
    def track(self, **objects: Any) -> None:
        """Objects whose ``state_dict()`` a checkpoint holds (models, optimizers, schedulers, generators...)."""
        for k, obj in objects.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")) and not isinstance(
                obj, torch.Generator
            ):
                raise TypeError(f"run.track({k}=...) needs state_dict()/load_state_dict() or a torch.Generator")
            self._objects[k] = obj

    def track_optional(self, **objects: Any) -> None:
        """Like ``track``, for objects a checkpoint may lack (one written before they were tracked, or by a run
        that could not save them): a restore leaves those as they are, and ``restored(name)`` tells."""
        self.track(**objects)
        self._optional.update(objects)

    def restored(self, name: str) -> bool:
        """Whether the last ``restore`` loaded the tracked object ``name`` from a checkpoint."""
        return name in self._loaded

    def _gather(self) -> dict[str, Any]:
        objs = {
            k: (o.get_state() if isinstance(o, torch.Generator) else o.state_dict()) for k, o in self._objects.items()
        }
        offset = self.tracker.offset() if self.tracker else 0
        return {"objects": objs, "state": self.state, "step": self.step, "per_step": self.per_step, "rng": rng_state(),
                "metrics_offset": offset}  # fmt: skip

    @property
    def units(self) -> int:
        """The step in the run's unit: agent steps for an agent (loop steps x ``per_step``), else loop steps."""
        return self.step * self.per_step

    def save(self) -> Path:
        """Write a checkpoint of the current step (atomically) and keep the newest ``keep_checkpoints``
        (rank 0 writes it under torchrun; the others hold the same weights)."""
        path = self.ckpt_dir / f"step_{self.units:09d}"
        if not self.main:
            return path
        checkpoint.save(path, self._gather(), meta={"recipe": self.recipe, "config_class": self.meta["config_class"],
                                                     "step": self.units})  # fmt: skip
        checkpoint.prune(self.ckpt_dir, self.keep_checkpoints, keep=tuple(self._pinned()))
        if self.tracker is not None:  # a model Artifact (aliases latest, and best when the best network changed)
            best = {k: v for k, v in self.state.items() if k.startswith("best")} if "best" in self._objects else None
            self.tracker.log_checkpoint(path, step=self.units, best_marker=None if best is None else repr(best),
                                        metadata={"recipe": self.recipe})  # fmt: skip
        return path

    def _pinned(self) -> list[Path]:
        best = self.state.get("best_checkpoint")
        return [self.ckpt_dir / best] if best else []

    def skip_step(self, loss: torch.Tensor, parameters) -> bool:
        """With ``--on-nonfinite skip``: True when ``loss`` or a gradient of ``parameters`` is NaN or infinite, after
        a notice naming the step and the loss (the first three times, then every tenfold); the caller leaves that
        update out and counts none of it. It reads the device once per update, so only in skip mode; with ``stop``
        (the default) it is always False, and a non-finite loss ends the run when it is logged."""
        if self.nonfinite != "skip":
            return False
        finite = torch.isfinite(loss.detach()).all()
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            finite = finite & torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if bool(finite):
            return False
        n = self.state["skipped_updates"] = self.state.get("skipped_updates", 0) + 1
        if n <= 3 or math.log10(n).is_integer():
            what = f"loss = {float(loss.detach().float().reshape(-1)[0])}"
            if math.isfinite(float(loss.detach().float().reshape(-1)[0])):
                what += " with a non-finite gradient"
            self.say(f"step {self.step}: {what}; this update was skipped ({n} so far; --on-nonfinite stop ends the "
                     f"run instead)")  # fmt: skip
        return True

    def latest_checkpoint(self) -> Path | None:
        found = checkpoint.list_checkpoints(self.ckpt_dir)
        return found[-1] if found else None

    def restore(self, path: str | Path | None = None, fallback: dict[str, str] | None = None) -> bool:
        """Load the latest checkpoint (or ``path``) into the tracked objects; False when there is none.

        A resumed run also gets back its RNG states, ``run.state``, the step, and metrics.jsonl cut back
        to what it held at that checkpoint (lines after it are logged again as the run redoes them). A
        checkpoint that cannot be read is reported and the next older one is tried. ``fallback`` maps a
        tracked name to the one an older checkpoint holds instead (``{"best": "model"}``).
        """
        candidates = [Path(path)] if path else checkpoint.list_checkpoints(self.ckpt_dir)[::-1]
        if not candidates:
            if self.resuming:  # killed before its first checkpoint: start over
                self._commit_resume(0)
            return False
        errors: list[CheckpointError] = []
        for p in candidates:
            try:
                offset = self._load(p, fallback or {})
            except CheckpointError as e:
                errors.append(e)
                self.say(f"Cannot resume from {p.name}: {e}")
                continue
            if self.resuming:
                self._commit_resume(offset)
                self.say(f"Resumed {self.dir} from {p.name} (step {self.units}).")
            return True
        raise errors[0]

    def _load(self, path: Path, fallback: dict[str, str]) -> int:
        """Load one checkpoint into the tracked objects; returns its metrics.jsonl offset."""
        state, _ = checkpoint.load(path, expect={"config_class": self.meta["config_class"]})
        objs = state.get("objects") if isinstance(state, dict) else None
        if not isinstance(objs, dict):
            raise CheckpointError(f"{path} is malformed: it holds no objects")
        objs = {**{k: objs[v] for k, v in fallback.items() if k not in objs and v in objs}, **objs}
        missing = sorted(set(self._objects) - set(objs) - self._optional)
        if missing:
            raise CheckpointError(f"{path} holds no {', '.join(missing)}: it was written by another model")
        loaded = set()
        for k, obj in self._objects.items():
            if k not in objs:  # an optional object this checkpoint does not hold
                continue
            loaded.add(k)
            try:
                if isinstance(obj, torch.Generator):
                    obj.set_state(objs[k])
                else:
                    obj.load_state_dict(objs[k])
            except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise CheckpointError(
                    f"{path}: its {k} does not fit this model ({first}); was it written by another model or config?"
                ) from None
        try:
            step, run_state, offset = int(state["step"]), dict(state.get("state") or {}), int(state["metrics_offset"])
            per_step = int(state.get("per_step", 1))  # (older checkpoints named loop steps)
            if not self.evaluating:
                set_rng_state(state["rng"])
                if not self.main:  # rank 0's RNG states: give this rank its own noise again
                    seed_everything(getattr(self.config, "seed", 0) + 7919 * distributed.rank() + int(state["step"]))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{path} is malformed ({type(e).__name__}: {e})") from None
        self.step, self.per_step, self.state, self._loaded = step, per_step, run_state, loaded
        return offset

    def _commit_resume(self, offset: int) -> None:
        """Once a resume is known to work: cut metrics.jsonl back to the checkpoint and record the config."""
        if not self.main:
            return
        self._start_tracker()
        self.tracker.truncate(offset)
        self.meta["config"] = self.config.to_dict()  # the values this session runs with (overrides included)
        _write_json(self.dir / "config.json", self.meta)

    def untouched(self) -> bool:
        """True while the run has written no checkpoint and no metrics (nothing to lose by removing it)."""
        metrics = self.dir / "metrics.jsonl"
        return not checkpoint.list_checkpoints(self.ckpt_dir) and (not metrics.exists() or metrics.stat().st_size == 0)

    # ------------------------------------------------------------------ the loop
    def loop(self, total: int, *, unit: str = "step", show: str | None = None, per_step: int = 1) -> Iterator[int]:
        """Yield steps ``run.step + 1 .. total`` (1-based); after each, checkpoint when due or asked to stop.

        Args:
            total: the last step (epochs, vector steps, rollouts, ...).
            unit: what the run counts in (the progress bar, checkpoint names, `fovea eval`'s step).
            show: the metric the progress bar shows (the figure that matters, e.g. ``val/acc``).
            per_step: how many ``unit`` one loop step is: an agent's loop step is ``num_envs`` (x ``n_steps``)
                agent steps, so the bar, the checkpoints (``step_<agent steps>``) and the metrics all count agent
                steps.
        """
        self.per_step = per_step
        every = max(1, int(getattr(self.config, "checkpoint_every", 0) or total * per_step) // per_step)
        self._show = show
        self._start_tracker()  # (a resume starts it in restore(); a train function that never restores, here)
        if self.step >= total:
            self.say(f"{self.dir} is at step {self.units} of {total * per_step}; nothing to train (raise the total "
                     f"to go on)")  # fmt: skip
        self._start_progress(total, unit)
        for s in range(self.step + 1, total + 1):
            self.step = s
            yield s
            if self._progress is not None:
                self._progress.update(self._task, completed=s * per_step)
            if distributed.active() and distributed.any_rank(self._stop is not None):  # all ranks stop at one step
                self._stop = self._stop or signal.SIGTERM
            if self._stop is not None:
                path = self.save()
                self._stop_progress()
                self.say(f"Checkpoint saved: {path}. Resume with: fovea train --resume {self.dir}")
                raise Interrupted(self._stop, self.units, self.dir)
            if s % every == 0 and s < total:
                self.save()
        self.save()
        self._stop_progress()

    def stop_loop(self) -> Path:
        """End a ``loop`` before its total (early stopping): checkpoint this step, close the progress bar,
        then ``break``. A resumed run goes on from here."""
        path = self.save()
        self._stop_progress()
        return path

    def _start_progress(self, total: int, unit: str) -> None:
        if not self.main:
            return
        self._progress = Progress(TextColumn(f"[bold]{self.name}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(),
                                  TextColumn("{task.fields[figure]}"), console=console, transient=False)  # fmt: skip
        self._task = self._progress.add_task(self.name, total=total * self.per_step, completed=self.units, figure="")
        self._progress.start()

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # ------------------------------------------------------------------ tracking
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Scalars to metrics.jsonl and W&B at ``step`` (default: the current step). Tensors are read here,
        so algorithms can hand over device tensors and sync only when logging."""
        values = {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        step = self.step if step is None else step
        self._start_tracker()
        if self.tracker is not None:
            self.tracker.log(values, step)
        diverged = [k for k, v in values.items() if "loss" in k and not math.isfinite(v)]
        if diverged:  # stop before a checkpoint of broken weights replaces a good one
            last = self.latest_checkpoint()
            raise RunError(
                f"{diverged[0]} = {values[diverged[0]]} at step {step}: training diverged and was stopped. The last "
                f"good checkpoint is {last or 'none (none was written yet)'}; try a lower learning rate in a new run."
            )
        if self._progress is not None and self._show in values:
            self._progress.update(self._task, figure=f"{self._show} {values[self._show]:.4g}")

    def log_image(self, key: str, image: Any, folder: str = "media", step: int | None = None,
                  boxes: dict | None = None) -> Path | None:  # fmt: skip
        """An image (PNG in the run folder, W&B media, with ``boxes`` as W&B box data) at ``step`` (default: the
        current step)."""
        step = self.step if step is None else step
        self._start_tracker()
        return self.tracker.log_image(key, image, step, folder, boxes) if self.tracker else None

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        """A W&B Table of ``rows`` under ``columns`` (per-class figures, trials) at ``step``."""
        self._start_tracker()
        if self.tracker is not None:
            self.tracker.log_table(key, columns, rows, self.step if step is None else step)

    def log_confusion(self, key: str, confusion: list[list[int]], classes: list[str], step: int | None = None) -> None:
        """A confusion matrix of counts (rows: true class) as W&B's confusion-matrix chart at ``step``."""
        self._start_tracker()
        if self.tracker is not None:
            self.tracker.log_confusion(key, confusion, classes, self.step if step is None else step)

    def log_video(self, key: str, path: str | Path, step: int | None = None) -> None:
        """An MP4 in the run folder, logged to W&B as a video at ``step`` (default: the current step)."""
        self._start_tracker()
        if self.tracker is not None:
            self.tracker.log_video(key, path, self.step if step is None else step)

    def attach_tracker(self, wandb: str = "auto", project: str = "fovea", job_type: str = "eval") -> None:
        """For evaluation: log figures and media into a W&B run of its own (``job_type`` eval, sample, explain or
        detect; the training run's group, its id in the config), never into the training run; with ``wandb``
        disabled, PNGs and videos still land in the run folder. W&B starts when the evaluation first logs."""
        self._tracking = dict(mode=wandb, project=project, job_type=job_type)

    def finish(self, figures: dict[str, Any], file: str | None = None) -> None:
        """Record the final figures (W&B summary and ``runs/NAME/summary.json``; an evaluation's in ``file``, default
        ``eval.json``)."""
        if not self.main:
            return
        self._start_tracker()
        if self.tracker is not None:
            self.tracker.summary(figures)
        _write_json(self.dir / (file or ("eval.json" if self.evaluating else "summary.json")), figures)
