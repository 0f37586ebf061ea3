"""Sample quality in a classifier's feature space: the Frechet distance (FID's formula, with the digits
classifier of ``fovea train cnn-digits`` in place of Inception), the kernel distance (KID: the unbiased
squared MMD with a cubic polynomial kernel, Binkowski et al. 2018) and how the classifier spreads samples
over the classes (a collapsed generator puts most samples in a few classes).

The Frechet distance is that between Gaussians fitted to two feature sets,
``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``; estimated from N images it is biased
upwards by an amount that depends on N (strongly when N is below the feature dimension, 512 here), so
two figures are comparable only at the same N on both sides. The protocol (``FeatureSpace.quality``):
each of ``draws`` draws splits the held-out real pool into two disjoint halves A and B of N images and
takes N samples; the score compares the samples with A, the reference (real-vs-real) compares B with A.
Both figures are reported as the mean and standard deviation over the draws, for the Frechet distance
and KID alike. KID is unbiased (about 0 for two sets from one distribution), the Frechet distance is not:
read it against real-vs-real at the same N.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from fovea import checkpoint
from fovea.config import from_dict, get_recipe
from fovea.errors import ConfigError, FoveaError
from fovea.run import Run, read_run
from fovea.vision import data as vdata

FEATURE_RECIPE = "cnn-digits"
MIN_TEST_ACC = 0.97  # a scoring classifier below this is refused (cnn-digits reaches about 99%)
DRAWS = 10  # draws of (samples, real half A, real half B) per evaluation


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` (N, F) and ``b`` (M, F), in float64.

    The cross term ``tr((Sa^1/2 Sb Sa^1/2)^1/2)`` is the nuclear norm of ``Xa Xb^T / sqrt((N-1)(M-1))`` for the
    centred features X (the same eigenvalues), an N x M problem when the sets are smaller than F.
    """
    a, b = a.double().cpu(), b.double().cpu()
    xa, xb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    tr_a, tr_b = xa.square().sum() / na, xb.square().sum() / nb
    if min(len(a), len(b)) <= a.shape[1]:
        cross = torch.linalg.svdvals(xa @ xb.T).sum() / (na * nb) ** 0.5
    else:
        vals, vecs = torch.linalg.eigh(xa.T @ xa / na)
        root = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
        cross = torch.linalg.eigvalsh(root @ (xb.T @ xb / nb) @ root).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + tr_a + tr_b - 2 * cross)


def kernel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """KID of feature sets ``a`` (N, F) and ``b`` (M, F): the unbiased estimate of the squared MMD with the
    kernel ``k(x, y) = (x.y / F + 1)^3`` (torchmetrics' ``poly_mmd``), in float64. About 0, and as often
    negative as positive, for two sets from one distribution."""
    a, b = a.double().cpu(), b.double().cpu()
    n, m, f = len(a), len(b), a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / f + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def compare(fake: torch.Tensor, real: torch.Tensor, *, draws: int = DRAWS, seed: int = 0) -> dict:
    """The protocol on features: ``fake`` (S, F) sample features against ``real`` (R, F) held-out features.

    N = min(S, R // 2) images a side. Each draw permutes ``real`` into halves A (the first N) and B (the next N)
    and picks N of the samples (all of them when S = N); it scores samples vs A and B vs A. The permutations come
    in torchmetrics' order (real, then fake), so its KID over ``draws`` subsets of N, with the global RNG seeded
    ``seed``, is ours exactly (tests/test_fid.py). Returns the mean
    and standard deviation (population, as torchmetrics' KID) over the draws: ``fid/test``, ``fid/test_std``,
    ``fid/real_vs_real``, ``fid/real_vs_real_std``, the same for ``kid/``, and ``samples/per_draw`` (N),
    ``samples/draws`` and ``samples/real_pool`` (R).
    """
    n = min(len(fake), len(real) // 2)
    if n < 2 or draws < 1:
        raise ConfigError(f"Frechet distance and KID need at least 2 samples, 4 held-out images (2 a side) and one "
                          f"draw; got {len(fake)} samples, {len(real)} held-out images, {draws} draws")  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    fake, real = fake.double().cpu(), real.double().cpu()
    scores: dict[str, list[float]] = {k: [] for k in ("fid/test", "fid/real_vs_real", "kid/test", "kid/real_vs_real")}
    for _ in range(draws):
        perm = torch.randperm(len(real), generator=gen)
        a, b = real[perm[:n]], real[perm[n : 2 * n]]
        s = fake[torch.randperm(len(fake), generator=gen)[:n]]
        for name, fn in (("fid", frechet_distance), ("kid", kernel_distance)):
            scores[f"{name}/test"].append(fn(s, a))
            scores[f"{name}/real_vs_real"].append(fn(b, a))
    out: dict = {}
    for k, v in scores.items():
        t = torch.tensor(v, dtype=torch.float64)
        out.update({k: t.mean().item(), f"{k}_std": t.std(unbiased=False).item()})
    out.update({"samples/per_draw": n, "samples/draws": draws, "samples/real_pool": len(real)})
    return out


class FeatureSpace:
    """A trained classifier's penultimate features and predictions.

    Args:
        model: a ``vision.classify.Classifier`` (uint8 images in, logits out; ``features`` gives features).
        source: the run folder it came from.
        info: what identifies it in every result: ``classifier`` (the run folder), ``classifier/weights`` (the
            checkpoint file loaded, an absolute path), ``classifier/sha256`` (that file's hash) and
            ``classifier/test_acc`` (from its summary.json).
    """

    def __init__(self, model: torch.nn.Module, source: Path, info: dict | None = None):
        self.model, self.source = model.eval(), source
        self.info = {"classifier": str(source), **(info or {})}

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """(N, F) features of uint8 images."""
        return torch.cat([self.model.features(x) for x in images.split(batch_size)])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return torch.cat([self.model(x).argmax(1) for x in images.split(batch_size)])

    def quality(self, fake: torch.Tensor, real: torch.Tensor, classes: Sequence[str], *, draws: int = DRAWS,
                seed: int = 0) -> dict:  # fmt: skip
        """Samples ``fake`` against held-out real images ``real`` (uint8, never trained on): the figures of
        ``compare``, ``samples/scored`` and the class spread of all samples (``classes/min_fraction``,
        ``classes/max_fraction``, ``classes/fraction_C``), with the classifier's ``info``."""
        out = compare(self.features(fake), self.features(real), draws=draws, seed=seed)
        counts = torch.bincount(self.predict(fake).cpu(), minlength=len(classes)).double()
        frac = counts / counts.sum()
        out.update({"samples/scored": len(fake), "classes/min_fraction": frac.min().item(),
                    "classes/max_fraction": frac.max().item()})  # fmt: skip
        out.update({f"classes/fraction_{c}": v.item() for c, v in zip(classes, frac, strict=True)})
        out.update(self.info)
        return out

    @classmethod
    def load(cls, run_dir: str | Path, device: torch.device, shape: tuple, max_value: int, *,
             which: str | None = None) -> FeatureSpace:  # fmt: skip
        """The classifier of a ``cnn-digits``-style run, checked to take images like the generator's and to
        reach ``MIN_TEST_ACC`` on its test split (read from its summary.json); ``which`` says how it was chosen
        (for the messages; default: given as --classifier)."""
        from fovea.vision import classify

        which = which or f"--classifier {run_dir}"
        doc = read_run(run_dir)
        recipe = get_recipe(doc["recipe"])
        if not isinstance(recipe.config, classify.ClassifierConfig):
            raise ConfigError(f"{which} is a {doc['recipe']} run, not a classifier "
                              f"(train one with `fovea train {FEATURE_RECIPE}`)")  # fmt: skip
        ccfg = from_dict(type(recipe.config), doc["config"])
        data = vdata.load(ccfg.dataset, "test", data_dir=ccfg.data_dir or None)
        if data.shape != tuple(shape) or data.max_value != max_value:
            raise ConfigError(f"{which} classifies {ccfg.dataset} images {data.shape} in "
                              f"0..{data.max_value}; the samples are {tuple(shape)} in 0..{max_value}")  # fmt: skip
        model = classify.build(ccfg, data.shape, len(data.classes), data.max_value, pretrained=False).to(device)
        crun = Run.open(run_dir, doc["recipe"], ccfg, device=str(device))
        crun.track(best=model)  # the weights of the best validation accuracy, which its summary reports
        ckpt = crun.latest_checkpoint()
        if ckpt is None:
            raise ConfigError(f"{which} has no checkpoint; train it first")
        crun.restore(ckpt, fallback={"best": "model"})
        acc = classifier_accuracy(Path(run_dir), crun.step, which)
        weights = (ckpt / checkpoint.TENSORS).resolve()
        info = {"classifier/weights": str(weights), "classifier/sha256": sha256(weights), "classifier/test_acc": acc}
        return cls(model, Path(run_dir).resolve(), info)

    @classmethod
    def for_run(cls, cfg, run: Run, classifier: str | None = None) -> FeatureSpace | None:
        """The classifier given, else the newest ``cnn-digits`` run beside ``run`` (trained now, once, when
        there is none); either is refused below ``MIN_TEST_ACC``. Data sets other than digits need
        ``classifier``: None is returned without one."""
        data = vdata.load(cfg.dataset, "test", data_dir=getattr(cfg, "data_dir", "") or None,
                          cache_dir=run.dir / "data")  # fmt: skip
        if classifier:
            return cls.load(classifier, run.device, data.shape, data.max_value)
        if cfg.dataset != "digits":
            run.say(f"No feature space for {cfg.dataset}: pass --classifier runs/NAME (a classifier of these images) "
                    f"for Frechet distances and class spread.")  # fmt: skip
            return None
        found = newest_classifier(run.dir.parent)
        if found is not None:
            which = f"the newest {FEATURE_RECIPE} run beside {run.dir}, {found},"
        else:
            found = train_feature_classifier(run.dir.parent, run)
            which = f"the {FEATURE_RECIPE} run trained now for Frechet distances, {found},"
        return cls.load(found, run.device, data.shape, data.max_value, which=which)


def classifier_accuracy(run_dir: Path, step: int, which: str) -> float:
    """The classifier run's ``test/acc`` from its summary.json, checked to describe the checkpoint's weights (the
    same epoch) and to reach ``MIN_TEST_ACC``; a ConfigError saying what to do otherwise."""
    redo = (f"pass --classifier RUN_DIR of a classifier that reaches {MIN_TEST_ACC:.0%} on its test split, or "
            f"train one: fovea train {FEATURE_RECIPE} (about 99%)")  # fmt: skip
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        acc = float(summary["test/acc"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{which} has no test accuracy in {run_dir / 'summary.json'} (unfinished?); finish it "
                          f"with `fovea train --resume {run_dir}`, or {redo}") from None  # fmt: skip
    if summary.get("epochs", step) != step:
        raise ConfigError(f"{which}: its summary.json is of epoch {summary['epochs']} but its checkpoint of epoch "
                          f"{step}; finish it with `fovea train --resume {run_dir}`, or {redo}")  # fmt: skip
    if not acc >= MIN_TEST_ACC:
        raise ConfigError(f"{which} has test accuracy {acc:.1%}, below the {MIN_TEST_ACC:.0%} a classifier needs "
                          f"to score samples; {redo}")  # fmt: skip
    return acc


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
