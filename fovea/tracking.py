"""Tracking: every scalar goes to ``metrics.jsonl`` and to W&B (online, offline or disabled).

W&B is the dashboard. Mode ``auto`` means online when the user is logged in (``WANDB_API_KEY`` or a
``wandb login`` entry in ~/.netrc), offline otherwise: the run is then written under
``runs/NAME/wandb/`` and the user is told once how to upload it with ``wandb sync``. A W&B that
fails to start or to log never stops training: metrics.jsonl is written regardless.

Metric names are namespaced (``train/...``, ``val/...``, ``eval/...``, ``perf/...``); the x-axis is
the run's own step, logged as ``global_step`` so a resumed run continues the same curves.
"""

from __future__ import annotations

import contextlib
import json
import math
import netrc
import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

Mode = Literal["auto", "online", "offline", "disabled"]
MODES = ("auto", "online", "offline", "disabled")


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
    """Sends scalars and media to metrics.jsonl and W&B. Algorithms hand figures to the Run, which calls this.

    Args:
        run_dir: the run folder; metrics.jsonl, media/ and wandb/ go there.
        mode: auto, online, offline or disabled.
        project: the W&B project.
        name: the run's name (also its W&B display name).
        run_id: the W&B run id, kept across resumes so the dashboard shows one run.
        config: the run's config, shown in W&B.
        say: where the one-time notices go (the Run's console).
    """

    def __init__(self, run_dir: Path, *, mode: str, project: str, name: str, run_id: str, config: dict, say=print):
        self.run_dir, self.say = Path(run_dir), say
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._file = open(self.metrics_path, "a")  # noqa: SIM115  (closed in finish)
        self.mode = resolve_mode(mode)
        self.wb = None
        if self.mode != "disabled":
            self.wb = self._start_wandb(project, name, run_id, config, requested=mode)

    def _start_wandb(self, project: str, name: str, run_id: str, config: dict, requested: str):
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a dependency
            self.say("W&B: wandb is not installed; metrics go to metrics.jsonl only.")
            return None
        # A server that cannot be reached fails the online start after init_timeout seconds (WANDB_INIT_TIMEOUT).
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))
        settings = wandb.Settings(console="off", x_disable_stats=True, silent=True, init_timeout=timeout)
        auto_offline = self.mode == "offline" and requested == "auto" and not os.environ.get("WANDB_MODE")
        for mode in dict.fromkeys([self.mode, "offline"]):  # online first when asked; offline if that fails
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run = wandb.init(project=project, name=name, id=run_id, dir=str(self.run_dir.resolve()), mode=mode,
                                     config=config, resume="allow", settings=settings, reinit="create_new")  # fmt: skip
                run.define_metric("global_step")
                run.define_metric("*", step_metric="global_step")
            except Exception as e:  # noqa: BLE001 - a broken tracker must not stop training
                self.say(f"W&B: could not start in {mode} mode ({type(e).__name__}: {str(e).splitlines()[0][:200]}).")
                with contextlib.suppress(Exception):
                    wandb.teardown()  # a half-started run would hold the run id against the offline retry
                continue
            if mode == "offline":
                sync_dir = os.path.relpath(run.settings.sync_dir) if run.settings.sync_dir else self.run_dir / "wandb"
                why = "online mode failed, " if self.mode == "online" else "not logged in, " if auto_offline else ""
                self.say(f"W&B: {why}logging offline. Upload later with: wandb sync {sync_dir}")
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

    def log_image(self, key: str, image: Any, step: int, folder: str = "media") -> Path:
        """Save ``image`` as PNG under ``run_dir/folder`` and log it to W&B as media; returns the path."""
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

            self._wandb_log({key: wandb.Image(str(out)), "global_step": step})
        return out

    def log_video(self, key: str, path: str | Path, step: int, fps: float | None = None) -> None:
        """Log an MP4 already in the run folder to W&B as a video (gymnasium's RecordVideo uploads nothing
        by itself: the file has to be logged)."""
        if self.wb is not None:
            import wandb

            self._wandb_log({key: wandb.Video(str(path), format="mp4"), "global_step": step})

    def _wandb_log(self, row: dict) -> None:
        if self.wb is None:
            return
        try:
            self.wb.log(row)
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [""])[0][:200]
            where = getattr(getattr(self.wb, "settings", None), "sync_dir", None)
            later = f" Upload what W&B holds later with: wandb sync {os.path.relpath(where)}." if where else ""
            self.say(f"W&B: logging failed ({type(e).__name__}: {first}); training goes on and every metric still "
                     f"goes to {self.metrics_path}.{later}")  # fmt: skip
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
        if self.wb is not None:
            with contextlib.suppress(Exception):  # a failing tracker never stops the run
                self.wb.summary.update(figures)

    def finish(self) -> None:
        self._file.close()
        if self.wb is not None:
            with contextlib.suppress(Exception):
                self.wb.finish()
            self.wb = None
