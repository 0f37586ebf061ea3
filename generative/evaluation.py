"""Using a trained generative model: load the kept model of a run, evaluate it (``fovea eval``: the test NLL
where the model has one, Frechet distance and KID against held-out images, the class spread) and sample from
it (``fovea sample``: picture grids and interpolations)."""

from __future__ import annotations

from pathlib import Path

import torch

from fovea.errors import ConfigError
from fovea.generative.base import (
    GenConfig,
    GenerativeModel,
    build_model,
    grid_image,
    grid_labels,
    likelihood_figures,
    load_split,
    noise,
)
from fovea.run import Run
from fovea.vision import data as vdata


def load_trained(cfg: GenConfig, run: Run) -> tuple[GenerativeModel, vdata.ImageData]:
    """The best model of a finished (or interrupted) run, in eval mode, and its test split."""
    test = load_split(cfg, "test", run).to(run.device)
    model = build_model(cfg, test).to(run.device)
    run.track(best=model)
    if not run.restore():
        raise ConfigError(f"{run.dir} has no checkpoint yet; train it first (fovea train --resume {run.dir})")
    return model.eval(), test


@torch.no_grad()
def sample_many(model: GenerativeModel, n: int, generator: torch.Generator, chunk: int = 250) -> torch.Tensor:
    """``n`` samples in chunks; a conditional model gets the classes in turn (equal numbers of each)."""
    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    out = []
    for i in range(0, n, chunk):
        lab = labels[i : i + chunk].to(model.device) if labels is not None else None
        out.append(model.sample(min(chunk, n - i), generator=generator, labels=lab))
    return torch.cat(out)


def evaluate(cfg: GenConfig, run: Run, *, classifier: str | None = None, samples: int = 1000) -> dict:
    """``fovea eval``: score a trained run's kept model on the test split.

    Returns ``best_epoch``; for a model with an ``nll``, ``test/nll_nats``, ``test/bits_per_dim`` and
    ``test/nll_kind``; and, when a classifier's feature space is at hand (``classifier``, or a
    ``cnn-digits`` run found or trained beside the run for the digits, refused below 97% test accuracy), the
    quality of ``samples`` samples in it against the held-out images (val and test, never trained on), N a
    side (``samples/per_draw``: the samples, at most half the held-out images) over ``samples/draws`` draws:
    ``fid/test`` and ``kid/test`` (samples vs held-out images), ``fid/real_vs_real`` and ``kid/real_vs_real``
    (held-out vs other held-out images, the same N: the figure real data would get), each with its ``_std``
    over the draws; the class spread ``classes/*``; and the classifier's ``classifier`` (run folder),
    ``classifier/weights``, ``classifier/sha256`` and ``classifier/test_acc`` (see ``metrics``).
    """
    from fovea.generative import metrics

    torch.manual_seed(cfg.seed)  # the IWAE estimate's draws: the same figures on every evaluation
    model, test = load_trained(cfg, run)
    figures: dict = {"best_epoch": run.state.get("best_epoch") or run.step}
    if model.nll_kind:
        figures.update(likelihood_figures(model, test, "test"))
    features = metrics.FeatureSpace.for_run(cfg, run, classifier)
    if features is not None:
        fake = sample_many(model, samples, torch.Generator().manual_seed(cfg.seed + 12345))
        val = load_split(cfg, "val", run).to(run.device)
        held_out = torch.cat([val.images, test.images])
        figures.update(features.quality(fake, held_out, test.classes, seed=cfg.seed))
    return figures


# ----------------------------------------------------------------------------- sampling


# what `fovea sample -o` writes, by the file's suffix
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}  # fmt: skip


def sample_command(cfg: GenConfig, run: Run, *, n: int = 64, output: str | None = None, seed: int = 0,
                   temperature: float = 1.0, interpolate: bool = False, label: int | None = None) -> dict:  # fmt: skip
    """``fovea sample``: draw ``n`` samples from a trained run's kept model (``seed`` fixes them, ``label``
    picks a class of a conditional model) or, with ``interpolate``, decode ``max(1, n // 8)`` rows of 8 points on
    lines between random latent codes; write them as one picture grid (``output``, in the format its suffix names:
    PNG, JPEG, WebP, BMP or TIFF; default ``runs/NAME/samples/sample_seed{seed}.png``, or
    ``interpolation_seed{seed}.png``) and log the grid to W&B.

    Returns ``output`` (the PNG's path), ``images`` (how many were drawn), ``seed``, ``temperature``,
    ``interpolate`` and ``label``.
    """
    model, _ = load_trained(cfg, run)
    gen = torch.Generator().manual_seed(seed)
    if label is not None and not 0 <= label < model.num_classes:
        which = f"labels 0..{model.num_classes - 1}" if model.num_classes else "no labels (it is not class-conditional)"
        raise ConfigError(f"--label {label}: {run.recipe} takes {which}")
    if temperature < 0:
        raise ConfigError(f"--temperature {temperature} must be >= 0 (1: the model's distribution, 0: the mode)")
    if n < 1:
        raise ConfigError(f"-n {n} must be at least 1")
    with torch.no_grad():
        if interpolate:
            if model.latent_dim is None:
                raise ConfigError(f"--interpolate: {type(model).__name__} has no latent space (try the VAE, "
                                  "autoencoder or GAN)")  # fmt: skip
            rows, steps = max(1, n // 8), 8
            ends = noise((2, rows, model.latent_dim), gen, run.device)
            t = torch.linspace(0, 1, steps, device=run.device)[None, :, None]
            z = (ends[0][:, None] * (1 - t) + ends[1][:, None] * t).reshape(rows * steps, -1)
            labels = None
            if model.num_classes:
                labels = torch.full((rows * steps,), label or 0, device=run.device)
            images, nrow = model.decode(z, labels), steps
        else:
            labels = torch.full((n,), label, device=run.device) if label is not None else grid_labels(model, n)
            images, nrow = model.sample(n, generator=gen, temperature=temperature, labels=labels), None
    grid = grid_image(images, model.max_value, nrow=nrow)
    stem = "interpolation" if interpolate else "sample"
    path = Path(output) if output else run.dir / "samples" / f"{stem}_seed{seed}.png"
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"-o {path}: name a picture file ending in {', '.join(IMAGE_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    tmp = path.with_name(f".tmp-{path.name}")
    Image.fromarray(grid.squeeze(-1).numpy() if grid.shape[-1] == 1 else grid.numpy()).save(tmp, format=fmt)
    tmp.replace(path)
    run.log_image("samples/interpolation" if interpolate else "samples/grid", grid, folder="samples")
    return {"output": str(path), "images": len(images), "seed": seed, "temperature": temperature,
            "interpolate": interpolate, "label": label}  # fmt: skip

