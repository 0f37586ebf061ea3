"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically, never unpickled.

A checkpoint is a folder ``step_000000123/`` holding ``tensors.safetensors`` and ``state.json``. It
is written under a temporary name and renamed into place, so a crash at any moment leaves either
the previous complete checkpoint or the new complete one, never half of one (the rename of a
folder is atomic on POSIX). ``state.json`` is a JSON skeleton of the saved state in which every
tensor is a ``{"__tensor__": key}`` reference into the safetensors file; numpy arrays, tuples and
dicts with non-string keys (optimizer states) are tagged so they load back exactly as saved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fovea.errors import CheckpointError

TENSORS, STATE = "tensors.safetensors", "state.json"
FORMAT = "fovea-checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], seen: dict[int, str]) -> Any:
    """JSON skeleton of ``obj``; its tensors go into ``tensors`` under generated keys."""
    if isinstance(obj, torch.Tensor | np.ndarray):
        is_np = isinstance(obj, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(obj)) if is_np else obj.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen and t.numel() > 0:  # safetensors refuses shared storage
            t = t.clone()
        key = f"t{len(tensors)}"
        seen[t.untyped_storage().data_ptr()] = key
        tensors[key] = t
        return {"__tensor__": key, "numpy": True} if is_np else {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, tensors, seen) for k, v in obj.items()}
        return {"__items__": [[_flatten(k, tensors, seen), _flatten(v, tensors, seen)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors, seen) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors, seen) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}; give tensors, arrays, numbers, strings, lists or dicts")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            t = tensors[obj["__tensor__"]]
            return t.numpy() if obj.get("numpy") else t
        if "__items__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: str | Path, state: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
    """Write ``state`` (nested dicts of tensors, arrays and JSON values) to the folder ``path``, atomically.

    ``meta`` (e.g. the model's name) is stored beside it and checked by ``load(expect=...)``.
    An existing checkpoint at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _flatten(state, tensors, {})
        save_file(tensors, tmp / TENSORS)
        with open(tmp / STATE, "w") as f:
            json.dump({"format": FORMAT, "meta": meta or {}, "state": skeleton}, f)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / TENSORS, "rb") as f:
            os.fsync(f.fileno())
        if path.exists():  # replace: move the old one aside first, drop it once the new one is in place
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _describe_foreign(file: Path) -> str:
    head = file.read_bytes()[:4] if file.is_file() else b""
    if head[:1] == b"\x80" or head[:2] == b"PK":
        return "it is a pickle / torch.save file, which Fovea never loads because unpickling can run code"
    return "it is not a safetensors file (corrupt or truncated?)"


def load(path: str | Path, expect: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint folder written by ``save``; returns ``(state, meta)``.

    Never unpickles. A missing, truncated, corrupt or foreign checkpoint, or one whose ``meta``
    disagrees with ``expect`` (another model), raises ``CheckpointError`` naming the path.
    """
    path = Path(path)
    tfile, sfile = path / TENSORS, path / STATE
    if not path.is_dir() or not sfile.is_file() or not tfile.is_file():
        raise CheckpointError(f"{path} is not a Fovea checkpoint: expected a folder holding {TENSORS} and {STATE}")
    try:
        doc = json.loads(sfile.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{sfile} is corrupt or truncated ({e}); resume from an earlier checkpoint") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{sfile} is not a {FORMAT} file")
    try:
        tensors = load_file(tfile)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {tfile}: {_describe_foreign(tfile)} ({e})") from None
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{sfile} is not a {FORMAT} file (its meta is not a mapping)")
    for k, v in (expect or {}).items():
        if meta.get(k) != v:
            raise CheckpointError(f"{path} belongs to {k}={meta.get(k)!r}, not {k}={v!r}")
    try:
        return _unflatten(doc["state"], tensors), meta
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{sfile} refers to tensors that {tfile} does not hold ({e})") from None


def load_tensors(source: str | Path) -> dict[str, torch.Tensor]:
    """Every named weight in ``source``: a run folder (its latest checkpoint), a checkpoint folder or a
    .safetensors file; a checkpoint's objects are flattened to ``object.key`` names (``model.backbone.0.weight``)."""
    source = Path(source)
    if source.is_file():
        if source.suffix != ".safetensors":
            raise CheckpointError(
                f"{source}: give a run folder, a checkpoint folder or a .safetensors file "
                "(pickle files such as .pt/.pth are never loaded: unpickling can run code)"
            )
        try:
            return load_file(source)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {source}: {_describe_foreign(source)} ({e})") from None
    if (source / "config.json").is_file():  # a run folder: its latest checkpoint
        found = list_checkpoints(source / "checkpoints")
        if not found:
            raise CheckpointError(f"{source} has no checkpoint yet")
        source = found[-1]
    state, _ = load(source)
    objects = state.get("objects") if isinstance(state, dict) else None
    flat: dict[str, torch.Tensor] = {}
    for obj, sd in (objects or {}).items():
        if isinstance(sd, dict):
            flat.update({f"{obj}.{k}": v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)})
    return flat


def step_of(path: Path) -> int | None:
    """The step of a checkpoint folder named ``step_<n>``, or None for any other name."""
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder`` (temporary ones are skipped), oldest step first.

    A checkpoint that was being replaced when the process died is found under its ``.old-`` name and
    moved back into place.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for old in folder.glob(".old-step_*"):  # a crash while replacing a checkpoint: put the old one back
        final = folder / old.name[len(".old-") :].rsplit("-", 1)[0]
        if not final.exists() and (old / STATE).is_file():
            os.rename(old, final)
    found = [p for p in folder.iterdir() if p.is_dir() and step_of(p) is not None and (p / STATE).is_file()
             and (p / TENSORS).is_file()]  # fmt: skip
    return sorted(found, key=lambda p: step_of(p))  # type: ignore[arg-type, return-value]


def prune(folder: str | Path, keep_last: int, keep: tuple[Path, ...] = ()) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (and those in ``keep``), and stale temporaries."""
    folder = Path(folder)
    for p in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        if p not in keep:  # renamed first, so a kill during the deletion leaves no half checkpoint under its name
            gone = p.with_name(f".del-{p.name}-{os.getpid()}")
            os.rename(p, gone)
            shutil.rmtree(gone, ignore_errors=True)
    for p in [*folder.glob(".tmp-*"), *folder.glob(".old-*"), *folder.glob(".del-*")] if folder.is_dir() else []:
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
