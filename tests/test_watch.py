"""Watching agents: MP4 encoding, gradient saliency, and `fovea eval --video --saliency` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from wandb_reader import history

from fovea.agents.watch import saliency_map
from fovea.cli import main
from fovea.media import overlay_heatmap, write_mp4


def _decode(path: Path) -> tuple[tuple[int, int], list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return (h, w), [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_write_mp4_round_trip(tmp_path):
    frames = [np.full((33, 47, 3), (40 * i, 200, 30), np.uint8) for i in range(5)]  # odd sides get padded
    path = write_mp4(frames, tmp_path / "v.mp4", fps=10)
    assert path.read_bytes()[4:8] == b"ftyp"  # an MP4 container
    size, decoded = _decode(path)
    assert size == (34, 48) and len(decoded) == 5
    for i, f in enumerate(
        decoded
    ):  # lossy (and colour is subsampled at the padded edge), but each frame keeps its colour
        assert np.abs(f[8:24, 8:38].astype(int).mean((0, 1)) - (40 * i, 200, 30)).max() < 8
    assert not list(tmp_path.glob(".tmp-*"))


def test_saliency_marks_the_pixels_the_score_reads():
    def score(x, starts, action):
        return action * x[1, 3, 2] - x[0, 0, 0] ** 2  # reads two pixels of a (2, 6, 4) stack

    obs = np.zeros((2, 6, 4), np.uint8)
    obs[0, 0, 0] = 3
    heat = saliency_map(score, obs, np.ones(1, bool), 5, torch.device("cpu"))
    expected = np.zeros((6, 4), np.float32)
    expected[3, 2], expected[0, 0] = 5, 6  # max over the stacked frames of |d score / d pixel|
    np.testing.assert_allclose(heat, expected)
    frame = overlay_heatmap(np.zeros((60, 40, 3), np.uint8), heat, blur=0)
    assert frame[35, 25, 0] > 100 and frame[5, 35, 0] == 0  # red where the map is hot, untouched elsewhere


def test_eval_records_video_and_saliency_into_the_run_and_wandb(in_tmp, capsys):
    argv = ["train", "dqn-catch", "--name", "c", "--total-steps", "600", "--learning-starts", "100",
            "--eval-every", "0", "--eval-episodes", "2"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", "runs/c", "--video", "--saliency", "--episodes", "4"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["eval/episodes"] == 4 and figures["network"] == "final" and figures["trained_steps"] == 600
    size, frames = _decode(Path(figures["video"]))
    assert figures["video/steps"] == 9 and len(frames) == 10  # a Catch episode: 9 moves, 10 screens
    assert size == (320, 160)  # the 10x5 board, upscaled 32x
    assert any((f[..., 0].astype(int) - f[..., 2] > 60).any() for f in frames)  # saliency drawn in red
    assert Path(figures["saliency_image"]).is_file()
    rows = [r for f in (in_tmp / "runs/c/wandb").glob("offline-run-*/run-*.wandb") for r in history(f)]
    videos = [r for r in rows if r.get("eval/saliency_video/_type") == "video-file"]
    assert videos and videos[0]["eval/saliency_video/path"].endswith(".mp4") and videos[0]["global_step"] == 600


def test_eval_refuses_saliency_on_state_vectors_and_bad_episodes(in_tmp, capsys):
    argv = ["train", "a2c-cartpole", "--name", "cp", "--wandb", "disabled", "--total-steps", "200",
            "--eval-episodes", "1"]  # fmt: skip
    assert main(argv) == 0
    assert main(["eval", "runs/cp", "--saliency"]) == 2
    assert "--saliency needs pixel observations; cartpole's are a state vector" in capsys.readouterr().err
    assert main(["eval", "runs/cp", "--episodes", "0"]) == 2
    assert "--episodes 0 must be at least 1" in capsys.readouterr().err
    assert main(["eval", "runs/cp", "--video", "--episodes", "2", "--wandb", "disabled"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(figures["video"]).stat().st_size > 1000 and figures["eval/episodes"] == 2


@pytest.mark.slow
def test_demo_trains_a_classifier_a_gan_a_detector_and_an_agent_and_leaves_pictures_and_a_video(in_tmp, capsys):
    assert main(["demo", "--name", "d"]) == 0
    err = capsys.readouterr().err
    figures = json.loads((in_tmp / "runs/d-agent/summary.json").read_text())
    assert figures["eval/mean_return"] >= 0.8  # dqn-catch: at least 90% of the balls caught
    assert json.loads((in_tmp / "runs/d/summary.json").read_text())["test/acc"] > 0.95
    assert json.loads((in_tmp / "runs/d-gan/summary.json").read_text())["epochs"] == 40
    grid = in_tmp / "runs/d-gan/samples/demo_grid.png"
    assert grid.exists() and f"sample grid    {grid.relative_to(in_tmp)}" in err
    detections = json.loads((in_tmp / "runs/d-detector/eval.json").read_text())
    assert detections["test/map_50"] > 0.5
    assert Path(in_tmp / detections["detections_png"]).exists() and "detections     runs/d-detector/eval/" in err
    videos = list((in_tmp / "runs/d-agent/videos").glob("play-*.mp4"))
    assert len(videos) == 1 and f"agent video    {videos[0].relative_to(in_tmp)}" in err
    assert "wandb sync runs/d-agent/wandb/offline-run-" in err


def test_evaluations_during_training_film_atari_by_default_and_never_stop_training(monkeypatch):
    from fovea.agents import evaluation, watch
    from fovea.config import get_recipe

    assert evaluation.films(get_recipe("dqn-pong").config)  # (fovea.agents, imported above, registered them)
    assert not evaluation.films(get_recipe("dqn-catch").config)
    assert not evaluation.films(get_recipe("dqn-cartpole").config)
    said = []

    class Run:
        config = get_recipe("dqn-catch").config

        def say(self, message: str) -> None:
            said.append(message)

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(watch, "record", broken)
    monkeypatch.setattr(evaluation, "_play", lambda *a, **k: np.ones(2))
    evaluation._FILM[:] = [(Run(), 200)]
    assert evaluation.play(Run.config, lambda obs, starts: obs, 2, seed=0).tolist() == [1.0, 1.0]
    assert said == ["step 200: no evaluation video (RuntimeError: no display); training goes on"]
    assert not evaluation._FILM  # one video per evaluation
