"""Watching an agent: one full episode rendered to MP4, optionally with gradient saliency overlaid.

Saliency (the notes, chapter 12: saliency maps) is |d score / d pixel| for the action the agent takes,
its maximum over the stacked frames, drawn in red over the screen: where a small change in the
input would most change the agent's preference for that action.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from PIL import Image

from fovea.agents.base import AgentConfig
from fovea.agents.evaluation import VIDEO, Policy
from fovea.envs import vector
from fovea.errors import UsageError
from fovea.media import overlay_heatmap, upscale, write_mp4
from fovea.run import Run

Score = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (obs, starts, action) -> that action's score


def render_env(cfg: AgentConfig, seed: int) -> tuple[gym.Env, float]:
    """A single env of ``cfg`` that renders RGB frames, with the frame rate of real time."""
    if cfg.atari:
        from fovea.envs.atari import make_eval_env

        env = make_eval_env(cfg.env, seed=seed, sticky=cfg.sticky, fire_on_life_loss=cfg.fire_on_life_loss)
        return env, 15.0  # 60 Hz / frame skip 4
    env = vector.make_single(cfg.env, seed=seed, render_mode="rgb_array")
    return env, float(env.metadata.get("render_fps", 30))


def saliency_map(score: Score, obs: np.ndarray, starts: np.ndarray, action: int, device: torch.device) -> np.ndarray:
    """|d score(action) / d obs|, its maximum over the channel (stacked-frame) axis: an (H, W) map."""
    x = torch.as_tensor(obs, device=device).float().requires_grad_(True)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN has no backward pass for an RNN in eval mode
        (grad,) = torch.autograd.grad(score(x, torch.as_tensor(starts, device=device), action), x)
    return grad.abs().amax(0).cpu().numpy()


def record(cfg: AgentConfig, run: Run, policy: Policy, *, step: int, score: Score | None = None,
           seed: int | None = None, max_steps: int = 27_000) -> dict:  # fmt: skip
    """Play one full episode, write it to ``runs/NAME/videos/`` as MP4 and log it to W&B at ``step``
    (the agent steps the network was trained for).

    With ``score`` each frame carries the gradient saliency of the chosen action, and the frame of
    strongest saliency is also saved as a PNG.
    """
    if score is not None and not vector.describe(cfg.env).image:
        raise UsageError(f"--saliency needs pixel observations; {cfg.env}'s are a state vector (try --video alone)")
    seed = cfg.seed + VIDEO if seed is None else seed
    env, fps = render_env(cfg, seed)
    obs, _ = env.reset(seed=seed)
    starts = np.ones(1, bool)
    frames, total, peak = [], 0.0, (-1.0, None)
    try:
        for _ in range(max_steps):
            frame = upscale(env.render())
            action = int(policy(np.asarray(obs)[None], starts)[0])
            if score is not None:  # where the agent looked to choose this action
                heat = saliency_map(score, np.asarray(obs), starts, action, run.device)
                frame = overlay_heatmap(frame, heat)
                if heat.max() > peak[0]:
                    peak = (float(heat.max()), frame)
            frames.append(frame)
            starts = np.zeros(1, bool)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        frames.append(upscale(env.render()))
    finally:
        env.close()
    name = f"{'saliency' if score is not None else 'play'}-step{step:09d}.mp4"
    path = write_mp4(frames, run.dir / "videos" / name, fps=fps)
    run.log_video("eval/saliency_video" if score is not None else "eval/video", path, step=step)
    figures = {"video": str(path), "video/return": total, "video/steps": len(frames) - 1}
    if peak[1] is not None:
        png = run.log_image("eval/saliency", peak[1], step=step)
        if png is None:  # no tracker: save it beside the video
            png = path.with_suffix(".png")
            Image.fromarray(peak[1]).save(png)
        figures["saliency_image"] = str(png)
    return figures
