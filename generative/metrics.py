"""Sample quality in a classifier's feature space: the Frechet distance (FID's formula, with the digits
classifier of ``fovea train cnn-digits`` in place of Inception) and how the classifier spreads samples
over the classes (a collapsed generator puts most samples in a few classes).

The distance between two image sets is that between Gaussians fitted to their features,
``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``. It has no absolute scale, so the
distance between two real splits (val against test) is reported beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fovea.config import from_dict, get_recipe
from fovea.errors import ConfigError, FoveaError
from fovea.run import Run, read_run
from fovea.vision import data as vdata

FEATURE_RECIPE = "cnn-digits"


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` (N, F) and ``b`` (M, F)."""
    a, b = a.double().cpu(), b.double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root @ cov_b @ root).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


class FeatureSpace:
    """A trained classifier's penultimate features and predictions.

    Args:
        model: a ``vision.classify.Classifier`` (uint8 images in, logits out; ``backbone`` gives features).
        source: the run folder it came from (reported with the figures).
    """

    def __init__(self, model: torch.nn.Module, source: Path):
        self.model, self.source = model.eval(), source

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """(N, F) features of uint8 images."""
        m = self.model
        return torch.cat([m.backbone(x.float() / m.max_value - 0.5) for x in images.split(batch_size)])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return torch.cat([self.model(x).argmax(1) for x in images.split(batch_size)])

    def quality(self, fake: torch.Tensor, test: vdata.ImageData, val: vdata.ImageData) -> dict:
        """Frechet distances (samples to test; val to test for scale) and the class spread of the samples."""
        f_fake, f_test, f_val = self.features(fake), self.features(test.images), self.features(val.images)
        counts = torch.bincount(self.predict(fake).cpu(), minlength=len(test.classes)).double()
        frac = counts / counts.sum()
        out = {"fid/test": frechet_distance(f_fake, f_test), "fid/real_vs_real": frechet_distance(f_val, f_test),
               "samples/scored": len(fake), "classes/min_fraction": frac.min().item(),
               "classes/max_fraction": frac.max().item()}  # fmt: skip
        out.update({f"classes/fraction_{c}": v.item() for c, v in zip(test.classes, frac, strict=True)})
        out["classifier"] = str(self.source)
        return out

    @classmethod
    def load(cls, run_dir: str | Path, device: torch.device, shape: tuple, max_value: int) -> FeatureSpace:
        """The classifier of a ``cnn-digits``-style run, checked to take images like the generator's."""
        from fovea.vision import classify

        doc = read_run(run_dir)
        recipe = get_recipe(doc["recipe"])
        if not isinstance(recipe.config, classify.ClassifierConfig):
            raise ConfigError(f"--classifier {run_dir} is a {doc['recipe']} run, not a classifier "
                              f"(train one with `fovea train {FEATURE_RECIPE}`)")  # fmt: skip
        ccfg = from_dict(type(recipe.config), doc["config"])
        data = vdata.load(ccfg.dataset, "test", data_dir=ccfg.data_dir or None)
        if data.shape != tuple(shape) or data.max_value != max_value:
            raise ConfigError(f"--classifier {run_dir} classifies {ccfg.dataset} images {data.shape} in "
                              f"0..{data.max_value}; the samples are {tuple(shape)} in 0..{max_value}")  # fmt: skip
        model = classify.build(ccfg, data.shape, len(data.classes), data.max_value, pretrained=False).to(device)
        crun = Run.open(run_dir, doc["recipe"], ccfg, device=str(device))
        crun.track(best=model)  # the weights of the best validation accuracy, which its eval reports
        if not crun.restore(fallback={"best": "model"}):
            raise ConfigError(f"--classifier {run_dir} has no checkpoint; train it first")
        return cls(model, Path(run_dir))

    @classmethod
    def for_run(cls, cfg, run: Run, classifier: str | None = None) -> FeatureSpace | None:
        """The classifier given, else the newest ``cnn-digits`` run beside ``run`` (trained now, once, when
        there is none). Data sets other than digits need ``classifier``: None is returned without one."""
        data = vdata.load(cfg.dataset, "test", data_dir=getattr(cfg, "data_dir", "") or None,
                          cache_dir=run.dir / "data")  # fmt: skip
        if classifier:
            return cls.load(classifier, run.device, data.shape, data.max_value)
        if cfg.dataset != "digits":
            run.say(f"No feature space for {cfg.dataset}: pass --classifier runs/NAME (a classifier of these images) "
                    f"for Frechet distances and class spread.")  # fmt: skip
            return None
        found = newest_classifier(run.dir.parent)
        if found is None:
            found = train_feature_classifier(run.dir.parent, run)
        return cls.load(found, run.device, data.shape, data.max_value)


def newest_classifier(runs_dir: Path) -> Path | None:
    """The newest finished ``cnn-digits`` run on digits in ``runs_dir``."""
    found = []
    for cfg_file in runs_dir.glob("*/config.json"):
        try:
            doc = read_run(cfg_file.parent)
        except FoveaError:  # a broken neighbour is not ours to report
            continue
        if doc["recipe"] == FEATURE_RECIPE and doc["config"].get("dataset") == "digits" and \
                (cfg_file.parent / "summary.json").exists():  # fmt: skip
            found.append(cfg_file.parent)
    return max(found, key=lambda p: (p / "summary.json").stat().st_mtime) if found else None


def train_feature_classifier(runs_dir: Path, run: Run) -> Path:
    """Train the ``cnn-digits`` recipe into a new run in ``runs_dir`` (about 20 s on a CPU)."""
    recipe = get_recipe(FEATURE_RECIPE)
    run.say(f"No {FEATURE_RECIPE} run in {runs_dir} for Frechet distances: training one (seed 0, about 20 s).")
    crun = Run.create(recipe.name, recipe.config, runs_dir=runs_dir, wandb="disabled", device=str(run.device))
    with crun:
        crun.finish(recipe.task.train(recipe.config, crun))
    return crun.dir
