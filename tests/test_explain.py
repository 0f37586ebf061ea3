"""fovea explain: first-layer filters, saliency, occlusion, t-SNE and nearest neighbours of a trained classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CNN
from PIL import Image
from wandb_reader import history

from fovea import cli
from fovea.cli import main, open_run
from fovea.errors import UsageError
from fovea.run import Run
from fovea.vision import classify
from fovea.vision import data as vdata
from fovea.vision import explain as ex


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def explain(run_dir: Path, what: str, *extra: str, wandb: str = "disabled") -> list[str]:
    return ["explain", str(run_dir), "--what", what, "--wandb", wandb, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny cnn-digits trained for 4 epochs (about 90% test accuracy) and one left untrained (learning rate 1e-9)."""
    base = tmp_path_factory.mktemp("explain")
    options = {"cnn": ["--epochs", "4", "--lr", "1e-2"], "untrained": ["--epochs", "1", "--lr", "1e-9"]}
    for name, extra in options.items():
        argv = ["train", "cnn-digits", "--runs-dir", str(base), "--name", name, "--wandb", "disabled", *extra]
        assert main([*argv, *TINY_CNN]) == 0
    return {"cnn": base / "cnn", "untrained": base / "untrained"}


@pytest.fixture(scope="module")
def trained(runs):
    """The trained classifier, restored as ``fovea explain`` restores it, and the test split."""
    _, cfg, run = open_run(runs["cnn"], "cpu", "explain")
    test = vdata.load("digits", "test")
    return classify.load_trained(cfg, run, test), test


EXPECTED = {"filters": {"filters/count": 8, "filters/height": 3, "filters/width": 3, "filters/channels": 1},
            "saliency": {"saliency/images": 8}, "occlusion": {"occlusion/images": 8, "occlusion/patch": 2,
                                                              "occlusion/stride": 1},
            "neighbours": {"neighbours/queries": 8, "neighbours/k": 8}}  # fmt: skip


@pytest.mark.parametrize("what", list(EXPECTED))
def test_each_explanation_writes_its_picture_and_figures(runs, what, capsys):
    assert main(explain(runs["cnn"], what)) == 0
    figures = last_json(capsys.readouterr().out)
    png = runs["cnn"] / "explain" / f"{what}.png"
    assert figures["png"] == str(png) and figures["step"] == 4 and figures["what"] == what
    assert EXPECTED[what].items() <= figures.items()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.width >= 250 and img.height >= 150
    assert Path(figures["logged_png"]).is_file()  # the tracker's copy, in runs/NAME/media/ even with W&B disabled
    assert Path(figures["logged_png"]).parent == runs["cnn"] / "media"
    if what == "neighbours":
        assert figures["neighbours/same_label"] >= 0.6  # features of a trained net put like with like
    if what == "saliency":
        assert 0 < figures["saliency/on_lit"] < 1 and 0 < figures["saliency/lit_share"] < 1


def test_explain_logs_to_wandb_offline_and_writes_the_output_path(runs, tmp_path, capsys):
    out = tmp_path / "pictures" / "saliency.png"
    assert main(explain(runs["cnn"], "saliency", "-n", "4", "-o", str(out), wandb="offline")) == 0
    figures = last_json(capsys.readouterr().out)
    assert figures["png"] == str(out) and figures["saliency/images"] == 4
    with Image.open(out) as img:
        assert img.size == Image.open(figures["logged_png"]).size
    rows = [r for f in runs["cnn"].glob("wandb/offline-run-*/run-*.wandb") for r in history(f)]
    logged = [r for r in rows if "explain/saliency/_type" in r]
    assert logged and logged[0]["explain/saliency/_type"] == "image-file" and logged[0]["global_step"] == 4


def test_saliency_is_the_gradient_of_the_predicted_score(trained):
    model, test = trained
    images = test.images[:4]
    maps, pred = ex.saliency_maps(model, images)
    assert maps.shape == (4, 8, 8) and torch.equal(pred, model(images).argmax(1))
    x, eps = images[:1].float(), 0.05
    for y, xx in [divmod(int(maps[0].argmax()), 8), (2, 5)]:  # the most salient pixel and another
        up, down = x.clone(), x.clone()
        up[0, 0, y, xx] += eps
        down[0, 0, y, xx] -= eps
        with torch.no_grad():
            slope = (model(up)[0, pred[0]] - model(down)[0, pred[0]]) / (2 * eps)
        assert maps[0, y, xx].item() == pytest.approx(abs(slope.item()), rel=0.02, abs=1e-4)


def test_occlusion_map_is_the_drop_in_probability_under_each_patch(trained):
    model, test = trained
    images, labels = test.images[:3], test.labels[:3]
    grid = ex.occlusion_maps(model, images, labels, patch=2, stride=1, fill=0.0)
    assert grid.shape == (3, 7, 7)
    with torch.no_grad():
        p = model(images).softmax(1)[torch.arange(3), labels]
        hidden = images.clone()
        hidden[:, :, 3:5, 2:4] = 0
        q = model(hidden).softmax(1)[torch.arange(3), labels]
    assert grid[:, 3, 2] == pytest.approx((p - q).tolist(), abs=1e-5)
    corners = [(i, y, x) for i in range(3) for y in range(7) for x in range(7)]
    blank = [(i, y, x) for i, y, x in corners if images[i, :, y : y + 2, x : x + 2].max() == 0]
    assert blank, "digits have blank corners"
    assert all(abs(grid[i, y, x].item()) < 1e-5 for i, y, x in blank)  # hiding nothing changes nothing


def test_tsne_separates_the_classes_of_a_trained_net_better(runs, capsys):
    silhouette = {}
    for name in ("cnn", "untrained"):
        assert main(explain(runs[name], "tsne", "-n", "200")) == 0  # of 447 test images: t-SNE takes seconds
        figures = last_json(capsys.readouterr().out)
        assert figures["tsne/images"] == 200 and Path(figures["png"]).is_file()
        silhouette[name] = figures["tsne/silhouette"]
    assert silhouette["cnn"] > silhouette["untrained"] + 0.1, silhouette  # about 0.40 against 0.18


def test_filters_of_an_mlp_are_images_of_its_input(in_tmp, capsys):
    argv = ["train", "cnn-digits", "--name", "mlp", "--wandb", "disabled", "--epochs", "1", "--backbone", "mlp"]
    assert main([*argv, "--backbone.hidden", "16"]) == 0
    assert main(explain(Path("runs/mlp"), "filters")) == 0
    figures = last_json(capsys.readouterr().out)
    assert (figures["filters/count"], figures["filters/height"], figures["filters/width"]) == (16, 8, 8)
    with Image.open(in_tmp / "runs/mlp/explain/filters.png") as img:
        assert img.width >= 4 * 72 and img.height >= 4 * 72  # 4 x 4 tiles, 8x8 weights drawn 9x


class Votes(torch.nn.Module):
    """Like a kNN or a linear model on HOG features: scores that do not flow back to the pixels."""

    def __init__(self, weights: bool):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10) if weights else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.detach().float().flatten(1)
        return self.linear(flat) if self.linear is not None else torch.nn.functional.one_hot(flat.argmax(1) % 10)

    def filters(self) -> None:
        return None


@pytest.mark.parametrize("weights", [False, True])
def test_saliency_and_filters_refuse_a_model_that_has_none(weights):
    images = vdata.load("digits", "test").images[:2]
    with pytest.raises(UsageError, match="saliency needs a model differentiable in its pixels.*--what occlusion"):
        ex.saliency_maps(Votes(weights), images)
    with pytest.raises(UsageError, match="no first-layer weights"):
        ex.show_filters(Votes(weights), None, None, 0)


@pytest.mark.parametrize(("channels", "colour"), [(3, True), (4, False)])
def test_filters_of_colour_images_are_drawn_in_colour(channels, colour):
    class Colour(Votes):
        def filters(self) -> torch.Tensor:
            return torch.randn(6, channels, 5, 5, generator=torch.Generator().manual_seed(0))

    picture, figures = ex.show_filters(Colour(False), None, None, 0)
    assert figures["filters/count"] == 6 and figures["filters/channels"] == channels
    rgb = np.asarray(picture).astype(int)
    assert (np.ptp(rgb, axis=2) > 30).any() == colour  # RGB for 3 channels; grey (their mean) otherwise


def test_bad_input_gets_one_line_and_exit_code_2(in_tmp, capsys):
    with Run.create("cnn-digits", classify.ClassifierConfig(epochs=1), name="empty", wandb="disabled"):
        pass  # a run folder with no checkpoint
    vae = in_tmp / "runs" / "vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"recipe": "vae-digits", "config": {}}))
    cases = {("runs/empty", "saliency"): "has no checkpoint yet; train it first",
             ("runs/empty", "saliency", "-n", "0"): "-n 0 must be at least 1",
             ("runs/vae", "filters"): "recipe 'vae-digits' has nothing to explain"}  # fmt: skip
    for (run_dir, what, *extra), message in cases.items():
        assert main(explain(Path(run_dir), what, *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(explain(Path("runs/empty"), "gradcam")) == 2  # argparse's own refusal, in the same one line
    err = capsys.readouterr().err
    assert "invalid choice: 'gradcam'" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(UsageError, match="nothing to explain"):
        open_run("runs/vae", "cpu", "explain")


def test_the_command_line_offers_every_explanation():
    assert tuple(ex.METHODS) == cli.EXPLANATIONS
