"""Media written into run folders: MP4 videos (H.264, playable in browsers and W&B) and heat-map overlays.

The encoder is the static ffmpeg that the ``imageio-ffmpeg`` wheel ships, so nothing needs installing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def upscale(frame: np.ndarray, min_side: int = 160) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole factor until the short side is at least ``min_side``
    (a 10x5 Catch board becomes visible; an Atari screen is left as it is)."""
    factor = -(-min_side // min(frame.shape[:2]))
    return frame if factor <= 1 else frame.repeat(factor, 0).repeat(factor, 1)


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: float = 15.0) -> Path:
    """Encode (H, W, 3) uint8 frames as H.264 MP4 at ``path`` (written to a temporary name, then renamed)."""
    import imageio_ffmpeg

    if not len(frames):
        raise ValueError("write_mp4 needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2  # yuv420p needs even sides
    tmp = path.with_name(f".tmp-{path.name}")
    writer = imageio_ffmpeg.write_frames(str(tmp), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, quality=None, output_params=["-crf", "23"])  # fmt: skip
    writer.send(None)
    try:
        for f in frames:
            if f.shape[:2] != (h, w) or f.dtype != np.uint8:
                raise ValueError(f"every frame must be ({h}, {w}, 3) uint8 like the first; got {f.shape} {f.dtype}")
            padded = np.zeros((H, W, 3), np.uint8)
            padded[:h, :w] = f[..., :3]
            writer.send(padded)
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def overlay_heatmap(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.7, blur: float = 2.0) -> np.ndarray:
    """``frame`` (H, W, 3) uint8 with ``heat`` (h, w, values >= 0) resized over it in red, strongest where
    ``heat`` peaks (normalised by its 99th percentile, so one hot pixel does not wash the rest out)."""
    h = np.asarray(heat, np.float32)
    scale = float(np.percentile(h, 99)) or float(h.max()) or 1.0
    img = Image.fromarray(np.clip(h / scale * 255, 0, 255).astype(np.uint8))
    img = img.resize((frame.shape[1], frame.shape[0]), Image.BILINEAR)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    m = (np.asarray(img, np.float32) / 255.0)[..., None] * alpha
    red = np.array([255.0, 32.0, 32.0], np.float32)
    return (frame[..., :3].astype(np.float32) * (1 - m) + red * m).astype(np.uint8)
