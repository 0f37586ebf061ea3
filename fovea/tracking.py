"""Tracking: every scalar goes to ``metrics.jsonl`` and to W&B (online, offline or disabled).

W&B is the dashboard. Mode ``auto`` means online when the user is logged in (``WANDB_API_KEY`` or a
``wandb login`` entry in ~/.netrc), offline otherwise: the run is then written under
``runs/NAME/wandb/`` and the user is told once how to upload it with ``wandb sync``. A W&B that
fails to start or to log never stops training: metrics.jsonl is written regardless.

Metric names are namespaced (``train/...``, ``val/...``, ``eval/...``, ``perf/...``); the x-axis is
the run's own step, logged as ``global_step`` so a resumed run continues the same curves.

Each train, eval, sample, explain or detect is its own W&B run (``job_type`` says which), in the training
run's ``group`` (a recipe's seeds share one; a search's trials share the search's), tagged with the recipe
and its family. An evaluation records the training run's id in its config instead of writing into it.
Every checkpoint is logged as a model Artifact ``run-NAME-model`` (aliases ``latest``, and ``best`` on the
version written after the run's best network last changed); ``fetch_artifact`` downloads one back into a
run folder that ``fovea eval`` and ``fovea.load`` read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import netrc
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

Mode = Literal["auto", "online", "offline", "disabled"]
MODES = ("auto", "online", "offline", "disabled")
ARTIFACT_EVERY_S = 300.0  # the least time between two model artifact versions (FOVEA_ARTIFACT_EVERY_S)
ARTIFACT_MAX_MB = 1000.0  # larger checkpoints (replay buffers) are not logged as artifacts (FOVEA_ARTIFACT_MAX_MB)
_CONTEXT: dict[str, str] = {}  # group / job_type for the runs started inside ``context`` (a search's trials)


@contextlib.contextmanager
def context(**fields: str) -> Iterator[None]:
    """Inside it, every W&B run a Run starts takes these ``group`` and ``job_type`` (a search's trials)."""
    before = dict(_CONTEXT)
    _CONTEXT.update(fields)
    try:
        yield
    finally:
        _CONTEXT.clear()
        _CONTEXT.update(before)


def artifact_name(run_name: str) -> str:
    """The model Artifact of run ``run_name``: ``run-NAME-model``."""
    return f"run-{run_name}-model"


def seed_group(recipe: str, config: dict) -> str:
    """The W&B group of a training run: the recipe's name when its config is the recipe's own (any seed), else
    the recipe and a short hash of the config without its seed, so the seeds of one experiment share a group."""
    from fovea.config import get_recipe

    def unseeded(c: dict) -> str:
        return json.dumps({k: v for k, v in c.items() if k not in ("seed", "recipe")}, sort_keys=True, default=str)

    mine = unseeded(config)
    with contextlib.suppress(Exception):  # a recipe no longer registered: the hash still groups its seeds
        if unseeded(get_recipe(recipe).config.to_dict()) == mine:
            return recipe
    return f"{recipe}-{hashlib.sha1(mine.encode()).hexdigest()[:6]}"


def family(config: Any) -> str:
    """agents, vision or generative: the package of the config's class."""
    parts = type(config).__module__.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "fovea" else parts[0]


def public_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """``figures`` without local file paths (a summary on W&B is read on other machines)."""

    def local(v: Any) -> bool:
        if not isinstance(v, str) or "/" not in v and os.sep not in v:
            return False
        try:
            return Path(v).exists() or bool(Path(v).suffix)
        except (OSError, ValueError):
            return False

    return {k: v for k, v in figures.items() if not local(v)}


def logged_in() -> bool:
    """Whether W&B has credentials here (without contacting the server)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` becomes WANDB_MODE when set, else online when logged in, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if logged_in() else "offline"


def sweep_run_id() -> str | None:
    """The W&B run id a sweep agent started this process for (``wandb agent`` sets WANDB_SWEEP_ID and WANDB_RUN_ID),
    else None. Under an agent, that id must be the run's: the sweep reads its trial's metric from that W&B run."""
    run_id = os.environ.get("WANDB_RUN_ID", "").strip()
    return run_id if run_id and os.environ.get("WANDB_SWEEP_ID", "").strip() else None


def _to_image(img: Any) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) uint8 / float-in-[0, 1] pixels as an (H, W, C) uint8 array."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
    return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a


class Tracker:
    """Sends scalars, media, tables and checkpoints to metrics.jsonl and W&B. Algorithms hand them to the Run,
    which calls this.

    Args:
        run_dir: the run folder; metrics.jsonl, media/ and wandb/ go there.
        mode: auto, online, offline or disabled.
        project: the W&B project.
        name: the run's W&B display name.
        run_id: the W&B run id, kept across resumes so the dashboard shows one run.
        config: the run's config, shown in W&B.
        say: where the one-time notices go (the Run's console).
        job_type: train, eval, sample, explain, detect or search.
        group: the W&B group (a recipe's seeds, a search's trials).
        tags: W&B tags (the recipe and its family).
    """

    def __init__(self, run_dir: Path, *, mode: str, project: str, name: str, run_id: str, config: dict, say=print,
                 job_type: str = "train", group: str | None = None, tags: Sequence[str] = ()):  # fmt: skip
        self.run_dir, self.say, self.name = Path(run_dir), say, name
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._file = open(self.metrics_path, "a")  # noqa: SIM115  (closed in finish)
        self.mode = resolve_mode(mode)
        self._best_marker: str | None = None  # the run's best_* state at the last checkpoint
        self._pending: tuple | None = None  # the newest checkpoint not yet logged as an artifact
        self._logged_at, self._told_size = -math.inf, False
        self.wb = None
        if self.mode != "disabled":
            init = dict(project=project, name=name, id=run_id, config=config, job_type=job_type, group=group,
                        tags=[t[:64] for t in tags])  # fmt: skip
            self.wb = self._start_wandb(init, requested=mode)

    @classmethod
    def for_run(cls, run, *, mode: str, project: str, job_type: str | None = None) -> Tracker:
        """The tracker of a Run: a training run writes to its own W&B run (its id kept across resumes); an
        evaluation (``run.evaluating``: eval, sample, explain, detect) starts a new W&B run in the same group
        whose config names the training run and its model artifact, and, online, uses that artifact."""
        config = {"recipe": run.recipe, **run.config.to_dict()}
        job_type = job_type or _CONTEXT.get("job_type") or ("eval" if run.evaluating else "train")
        group = _CONTEXT.get("group") or run.meta.get("wandb_group") or seed_group(run.recipe, config)
        name, run_id = run.name, run.meta["wandb_id"]
        if run.evaluating:
            config.update(train_run=run.name, train_run_id=run_id, model_artifact=f"{artifact_name(run.name)}:latest")
            name, run_id = f"{run.name}-{job_type}", uuid.uuid4().hex[:12]
        tracker = cls(run.dir, mode=mode, project=project, name=name, run_id=run_id, config=config, say=run.say,
                      job_type=job_type, group=group, tags=(run.recipe, family(run.config), job_type))  # fmt: skip
        if run.evaluating and tracker.mode == "online" and tracker.wb is not None:
            with contextlib.suppress(Exception):  # a run trained offline has no artifact on the server
                tracker.wb.use_artifact(config["model_artifact"])
        return tracker

    def _start_wandb(self, init: dict, requested: str):
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a dependency
            self.say("W&B: wandb is not installed; metrics go to metrics.jsonl only.")
            return None
        # A server that cannot be reached fails the online start after init_timeout seconds (WANDB_INIT_TIMEOUT).
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))
        # System metrics (CPU, GPU, memory) sampled every x_stats_sampling_interval seconds (W&B's 15 s unless
        # WANDB_X_STATS_SAMPLING_INTERVAL says otherwise); the console (progress lines, notices) as output.log.
        settings = wandb.Settings(console="wrap", silent=True, init_timeout=timeout)
        auto_offline = self.mode == "offline" and requested == "auto" and not os.environ.get("WANDB_MODE")
        for mode in dict.fromkeys([self.mode, "offline"]):  # online first when asked; offline if that fails
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run = wandb.init(**init, dir=str(self.run_dir.resolve()), mode=mode, resume="allow",
                                     settings=settings, reinit="create_new", save_code=True)  # fmt: skip
                run.define_metric("global_step")
                run.define_metric("*", step_metric="global_step")
            except Exception as e:  # noqa: BLE001 - a broken tracker must not stop training
                self.say(f"W&B: could not start in {mode} mode ({type(e).__name__}: {str(e).splitlines()[0][:200]}).")
                with contextlib.suppress(Exception):
                    wandb.teardown()  # a half-started run would hold the run id against the offline retry
                continue
            if mode == "offline":
                why = "online mode failed, " if self.mode == "online" else "not logged in, " if auto_offline else ""
                self.say(f"W&B: {why}logging offline. Upload later with: wandb sync {sync_glob(self.run_dir)}")
            self.mode = mode
            return run
        self.say("W&B: tracking disabled for this run; metrics go to metrics.jsonl only.")
        self.mode = "disabled"
        return None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """One line of metrics.jsonl and one W&B row at ``step``."""
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        self._wandb_log({**metrics, "global_step": step})

    def log_image(self, key: str, image: Any, step: int, folder: str = "media", boxes: dict | None = None) -> Path:
        """Save ``image`` as PNG under ``run_dir/folder`` and log it to W&B as media; returns the path. ``boxes``
        (``{"predictions": {"box_data": [...], "class_labels": {...}}}``, pixel coordinates) are drawn by W&B
        as boxes that can be toggled and filtered by class and score."""
        out = self.run_dir / folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}_{step:08d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tmp-{out.name}")
        try:
            Image.fromarray(_to_image(image)).save(tmp, format="PNG")
            os.replace(tmp, out)
        except BaseException:  # a full disk: no half-written picture is left behind
            tmp.unlink(missing_ok=True)
            raise
        if self.wb is not None:
            import wandb

            self._wandb_log({key: wandb.Image(str(out), boxes=boxes), "global_step": step})
        return out

    def log_video(self, key: str, path: str | Path, step: int, fps: float | None = None) -> None:
        """Log an MP4 already in the run folder to W&B as a video (gymnasium's RecordVideo uploads nothing
        by itself: the file has to be logged)."""
        if self.wb is not None:
            import wandb

            self._wandb_log({key: wandb.Video(str(path), format="mp4"), "global_step": step})

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        """A W&B Table (sortable, filterable in the UI) of ``rows`` under ``columns`` at ``step``."""
        if self.wb is not None:
            import wandb

            self._wandb_log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows]),
                             "global_step": step})  # fmt: skip

    def log_confusion(self, key: str, confusion: Sequence[Sequence[int]], classes: Sequence[str], step: int) -> None:
        """A confusion matrix of counts (rows: true class, columns: predicted) as W&B's interactive chart."""
        if self.wb is None:
            return
        import wandb

        truth = [t for t, row in enumerate(confusion) for p, n in enumerate(row) for _ in range(int(n))]
        preds = [p for row in confusion for p, n in enumerate(row) for _ in range(int(n))]
        with contextlib.suppress(Exception):  # W&B refuses a matrix whose labels it cannot name: the PNG remains
            chart = wandb.plot.confusion_matrix(y_true=truth, preds=preds, class_names=[str(c) for c in classes],
                                                title=key)  # fmt: skip
            self._wandb_log({key: chart, "global_step": step})

    def log_checkpoint(self, path: Path, *, step: int, best_marker: str | None, metadata: dict | None = None) -> None:
        """Log the checkpoint folder ``path`` with the run's config.json as a new version of the model Artifact
        ``run-NAME-model`` (aliases ``latest``, ``step-N``, and ``best`` when ``best_marker``, the run's best_*
        state, changed since the last version). The files are copied into W&B's staging area (about 13 ms a MB on
        2 cores), so pruning the checkpoint later loses nothing; to keep that small, a checkpoint within
        ARTIFACT_EVERY_S seconds of the last version waits, and ``finish`` logs the newest one that waited."""
        if self.wb is None:
            return
        best = best_marker is not None and best_marker != self._best_marker
        self._pending = (path, step, best or bool(self._pending and self._pending[2]), metadata or {})
        self._best_marker = best_marker
        if time.monotonic() - self._logged_at >= float(os.environ.get("FOVEA_ARTIFACT_EVERY_S", ARTIFACT_EVERY_S)):
            self._log_pending()

    def _log_pending(self) -> None:
        """Log the checkpoint ``log_checkpoint`` last saw, if it has not been logged (and still exists)."""
        if self.wb is None or self._pending is None or not self._pending[0].is_dir():
            return
        import wandb

        path, step, best, metadata = self._pending
        self._pending, self._logged_at = None, time.monotonic()
        size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
        limit = float(os.environ.get("FOVEA_ARTIFACT_MAX_MB", ARTIFACT_MAX_MB))
        if size > limit:
            if not self._told_size:
                self.say(f"W&B: checkpoints of {size:.0f} MB (a replay buffer?) are not logged as artifacts, over "
                         f"FOVEA_ARTIFACT_MAX_MB={limit:g}; the run folder holds them.")  # fmt: skip
                self._told_size = True
            return
        try:
            art = wandb.Artifact(artifact_name(self.name), type="model", metadata={"step": step, **metadata})
            art.add_file(str(self.run_dir / "config.json"), name="config.json")
            art.add_dir(str(path), name=f"checkpoints/{path.name}")
            self.wb.log_artifact(art, aliases=["latest", f"step-{step}", *(["best"] if best else [])])
        except Exception as e:  # noqa: BLE001 - the checkpoint is on disk whatever W&B does
            self.say(f"W&B: could not log {path.name} as an artifact ({type(e).__name__}: {str(e)[:200]}).")

    def _wandb_log(self, row: dict) -> None:
        if self.wb is None:
            return
        try:
            self.wb.log(row)
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self.say(f"W&B: logging failed ({type(e).__name__}: {first}); training goes on and every metric still "
                     f"goes to {self.metrics_path}. Upload what W&B holds later with: wandb sync "
                     f"{sync_glob(self.run_dir)}.")  # fmt: skip
            self.wb = None

    def offset(self) -> int:
        """Bytes of metrics.jsonl written so far (stored in checkpoints so a resume can cut back to it)."""
        self._file.flush()
        return self._file.tell()

    def truncate(self, offset: int) -> None:
        """Cut metrics.jsonl back to ``offset`` bytes (a resume redoes what came after its checkpoint)."""
        self._file.close()
        if self.metrics_path.stat().st_size > offset:
            os.truncate(self.metrics_path, offset)
        self._file = open(self.metrics_path, "a")  # noqa: SIM115

    def summary(self, figures: dict[str, Any]) -> None:
        """The run's final figures as its W&B summary, local file paths left out."""
        if self.wb is not None:
            with contextlib.suppress(Exception):  # a failing tracker never stops the run
                self.wb.summary.update(public_figures(figures))

    def finish(self) -> None:
        """Log the newest checkpoint that waited, close metrics.jsonl and the W&B run."""
        self._file.close()
        self._log_pending()
        if self.wb is not None:
            with contextlib.suppress(Exception):
                self.wb.finish()
            self.wb = None


def wandb_boxes(pred: dict, classes: Sequence[str], truth: tuple | None = None) -> dict:
    """torchvision-style detections (``boxes`` xyxy in pixels, ``labels``, ``scores``) and, optionally, the true
    ``(boxes, labels)`` as W&B box data for ``log_image(..., boxes=)``: predictions and ground truth are layers
    the W&B viewer toggles, filters by class and (predictions) by score."""
    names = {i: str(c) for i, c in enumerate(classes)}

    def layer(boxes, labels, scores=None) -> dict:
        data = []
        for j, (b, k) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
            entry = {"position": {"minX": b[0], "minY": b[1], "maxX": b[2], "maxY": b[3]}, "domain": "pixel",
                     "class_id": int(k), "box_caption": names.get(int(k), str(k))}  # fmt: skip
            if scores is not None:
                entry["scores"] = {"score": float(scores[j])}
                entry["box_caption"] += f" {float(scores[j]):.2f}"
            data.append(entry)
        return {"box_data": data, "class_labels": names}

    out = {"predictions": layer(pred["boxes"], pred["labels"], pred["scores"])}
    if truth is not None:
        out["ground_truth"] = layer(*truth)
    return out


def sync_glob(run_dir: Path) -> str:
    """What ``wandb sync`` is given to upload every offline W&B run of a run folder (train, eval, sample...)."""
    return f"{os.path.relpath(Path(run_dir) / 'wandb')}/offline-run-*"


def fetch_artifact(ref: str, root: str | Path | None = None) -> Path:
    """Download the model Artifact ``ref`` (``ENTITY/PROJECT/run-NAME-model:ALIAS``, alias ``latest`` when none
    is given) into a run folder: ``root`` (default ``runs/run-NAME-model-VERSION``) holding config.json and
    checkpoints/step_N/, which ``fovea eval``, ``fovea sample`` and ``fovea.load`` read like any run folder.
    Needs W&B credentials (``wandb login``); raises RunError when the artifact cannot be fetched."""
    from fovea.errors import RunError

    ref = ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"
    try:
        import wandb

        art = wandb.Api().artifact(ref, type="model")
        folder = Path(root) if root is not None else Path("runs") / f"{art.name.split(':')[0]}-{art.version}"
        art.download(root=str(folder))
    except Exception as e:  # noqa: BLE001 - no network, no login, no such artifact: one line that says which
        raise RunError(
            f"cannot fetch W&B artifact {ref!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"check the name (ENTITY/PROJECT/run-NAME-model:latest) and `wandb login`"
        ) from None
    if not (folder / "config.json").is_file() or not list((folder / "checkpoints").glob("step_*")):
        raise RunError(f"W&B artifact {ref!r} is not a Fovea model: it has no config.json and checkpoints/step_N/")
    return folder
