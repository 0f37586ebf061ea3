"""k-nearest neighbours on raw pixels, with k chosen by cross-validation: sections 2.3-2.5 of the notes (CS231n).

Nearest neighbour memorises the training images and labels and predicts the label of the most similar one
(2.3); kNN takes the majority vote of the k closest, under the L1 or L2 distance (2.4). k and the metric are
hyperparameters, chosen on data held out from training: here k-fold cross-validation on the training split,
CS231n's recipe for small data (2.5). The test split is touched once, at the end.

The search is brute force, in blocks of queries x stored images: L2 by the expansion ||q||^2 - 2 q.p + ||p||^2
as one GEMM, L1 by ``torch.cdist``, then ``topk``. For integer pixels every distance is exact (float32 while
every integer met stays below 2^24, float64 beyond), so equal distances are real ties. Ties are broken the
same way every time: among equal distances the stored image that comes first is nearer, and a tied vote goes
to the smallest label. scikit-learn's brute-force ``KNeighborsClassifier`` takes the smallest label too, but
keeps whichever of equally distant images its heap happens to hold (it can change with the thread count); on
the digits test split the two agree on every prediction but where the k-th and (k+1)-th nearest are tied,
and exactly once the ties are broken by index for both (tests/test_knn.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

import torch
from torch import nn

from fovea.config import Config, param, register_recipe, register_task
from fovea.errors import ConfigError
from fovea.run import Run
from fovea.vision import data as vdata
from fovea.vision.classify import evaluate_split, report, restore_model
from fovea.vision.explain import explainer

MIN_SHARE = 1e-6
"""A class with no votes scores log(MIN_SHARE) (about -13.8), not -inf, so the log-loss of the votes is finite."""


@dataclass(kw_only=True)
class KNNConfig(Config):
    """k-nearest neighbours on raw pixels; k chosen by k-fold cross-validation on the training split."""

    dataset: str = "digits"
    """Registered dataset (`digits` is embedded: scikit-learn's 8x8 handwritten digits)."""
    data_dir: str = ""
    """Where downloaded data sets live (CIFAR-10...); empty: $FOVEA_DATA, else ./data."""
    metric: Literal["l2", "l1"] = "l2"
    """Distance between images: l2 (Euclidean) or l1 (Manhattan), over the pixel values."""
    k: int = param(0, ge=0)
    """Neighbours that vote; 0: the best of --k-choices by cross-validation on the training split."""
    k_choices: tuple[int, ...] = (1, 3, 5, 8, 10, 12, 15, 20, 50, 100)
    """The k tried by cross-validation (CS231n's list); ties in accuracy go to the smallest k."""
    folds: int = param(5, ge=2)
    """Cross-validation folds: consecutive blocks of the training split (scikit-learn's KFold, no shuffling)."""
    train_limit: int = param(0, ge=0)
    """Keep only the first N training images (CS231n's CIFAR-10 kNN keeps 5,000); 0: all of them."""
    query_batch: int = param(1024, ge=1)
    """Query images per distance block: memory is bounded by query_batch x point_batch distances."""
    point_batch: int = param(2048, ge=1)
    """Stored images per distance block."""
    seed: int = 0
    """Seeds every RNG (kNN itself draws no random numbers: folds are consecutive blocks)."""

    def validate(self) -> None:
        vdata.check_dataset_field(self)
        if not self.k_choices or min(self.k_choices) < 1:
            raise ConfigError(
                f"KNNConfig.k_choices = {self.k_choices!r} is not allowed: give one or more k >= 1, e.g. 1,3,5,10"
            )
        if self.train_limit and self.train_limit < 2:
            raise ConfigError(f"KNNConfig.train_limit = {self.train_limit} is not allowed: keep at least 2 images")


class KNN(nn.Module):
    """Stored uint8 images and labels; ``forward`` gives the log of each class's share of the k votes.

    The images are buffers, so a checkpoint holds them and ``fovea eval`` needs nothing else; loading a
    checkpoint resizes them to the stored count (a model built with no images can take any checkpoint).

    Args:
        images: (N, C, H, W) integer pixels in 0..max_value.
        labels: (N,) int64 class indices.
        num_classes: number of classes.
        max_value: the largest pixel value (16 for digits, 255 for 8-bit images).
        k: neighbours that vote.
        metric: ``l2`` or ``l1``.
        query_batch, point_batch: queries and stored images per distance block.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, max_value: int, k: int = 1,
                 metric: str = "l2", query_batch: int = 1024, point_batch: int = 2048):  # fmt: skip
        super().__init__()
        self.register_buffer("images", images.to(torch.uint8))
        self.register_buffer("labels", labels.long())
        self.num_classes, self.max_value, self.k, self.metric = num_classes, int(max_value), int(k), metric
        self.query_batch, self.point_batch = query_batch, point_batch
        self.register_load_state_dict_pre_hook(_resize_buffers)

    def get_extra_state(self) -> dict:
        return {"k": self.k}  # chosen by cross-validation, so the config alone does not say it

    def set_extra_state(self, state: dict) -> None:
        self.k = int(state["k"])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """kNN's feature space: the flattened pixels (B, C*H*W) as floats."""
        return images.flatten(1).float()

    def filters(self) -> None:
        """kNN has no learned filters."""
        return None

    def _dtype(self) -> torch.dtype:
        """float32 while every integer met in computing a distance stays below 2^24 (so it is exact) and matmuls
        are full float32 (not TF32), else float64."""
        dims = self.images[0].numel()
        largest = 2 * dims * self.max_value**2 if self.metric == "l2" else dims * self.max_value
        tf32 = self.images.is_cuda and torch.get_float32_matmul_precision() != "highest"
        return torch.float32 if largest < 2**24 and not tf32 else torch.float64

    def _block(self, points: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Stored images (P, C, H, W) as the matrix that ``_ranks`` compares queries with: the flat pixels for L1,
        [-2 p, ||p||^2] (P, D + 1) for L2."""
        points = points.flatten(1).to(dtype)
        return points if self.metric == "l1" else torch.cat([-2 * points, points.square().sum(1, keepdim=True)], 1)

    def _ranks(self, queries: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """(Q, P) integer-valued figures that order a block's stored images as the distance to each query does:
        the L1 distance, or for L2 [q, 1] . [-2 p, ||p||^2], the squared distance less ||q||^2 (the same for every
        stored image of a query), in one GEMM."""
        queries = queries.flatten(1).to(block.dtype)
        if self.metric == "l1":
            return torch.cdist(queries, block, p=1)
        return torch.cat([queries, queries.new_ones(len(queries), 1)], 1) @ block.T

    def _nearest(self, queries: torch.Tensor, block: torch.Tensor, first: int, k: int) -> torch.Tensor:
        """The ``k`` nearest to each query of a block of stored images (``block``, numbered from ``first``), as
        float64 keys n * rank + index: exact integers (below 2^53) that order by distance, then by index."""
        n, ranks = len(self.labels), self._ranks(queries, block)  # (Q, P)
        p = ranks.shape[1]
        if p <= k:
            cols = torch.arange(p, device=ranks.device).expand_as(ranks)
        else:
            top = ranks.topk(k + 1, dim=1, largest=False)  # (Q, k + 1), nearest first
            cols = top.indices[:, :k]
            # Where the k-th and (k+1)-th are tied, topk kept any of the tied: in those rows take every stored
            # image at most as far as the k-th (few), order them by rank then column, and keep the first k.
            tied = (top.values[:, k - 1] == top.values[:, k]).nonzero().squeeze(1)
            if len(tied):
                cols = cols.index_put((tied,), first_k_by_rank(ranks[tied], top.values[tied, k - 1 : k], k))
            ranks = ranks.gather(1, cols)
        return torch.add((cols + first).double(), ranks.double(), alpha=n)

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)  # exact distances need full precision
    @torch.autocast("cuda", enabled=False)
    def kneighbors(self, images: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` stored images nearest to each query, nearest first; equal distances in stored order.

        Queries go in blocks of ``query_batch``, stored images in blocks of ``point_batch``, so memory is
        bounded for any number of either. On MPS (no float64) the search runs on the CPU.

        Args:
            images: (B, C, H, W) uint8 queries with the stored images' shape; float pixels in 0..max_value (an
                occlusion explanation's) are rounded to whole values.
            k: neighbours per query (default ``self.k``).

        Returns:
            distances (B, k) float32 (L2: Euclidean, not squared) and indices (B, k) int64 into the stored images.
        """
        k, n, shape = self.k if k is None else k, len(self.labels), tuple(self.images.shape[1:])
        if tuple(images.shape[1:]) != shape:
            raise ValueError(f"kNN images must be (B, {', '.join(map(str, shape))}); got {tuple(images.shape)}")
        if images.is_floating_point():  # whole pixel values keep the distances exact integers
            images = images.detach().round().clamp(0, self.max_value).to(torch.uint8)
        if not 1 <= k <= n:
            raise ValueError(f"k = {k} needs 1 <= k <= {n}, the number of stored images")
        dims = self.images[0].numel()
        m = 3 * n * dims * self.max_value ** (2 if self.metric == "l2" else 1)
        if m >= 2**53:
            raise ConfigError(f"{n} stored images of {dims} pixels up to {self.max_value} are too many for exact "
                              f"distances; store fewer with --train-limit (at most about {n * 2**53 // m:,})")
        dtype, out = self._dtype(), images.device
        if not len(images):
            return torch.zeros(0, k, device=out), torch.zeros(0, k, dtype=torch.int64, device=out)
        device = torch.device("cpu") if self.images.device.type == "mps" else self.images.device
        stored, queries = self.images.to(device), images.to(device)
        best = torch.empty(len(queries), 0, dtype=torch.float64, device=device)  # (B, <=k) keys found so far
        for p0 in range(0, n, self.point_batch):
            points = stored[p0 : p0 + self.point_batch]
            block = self._block(points, dtype)
            found = [self._nearest(queries[q0 : q0 + self.query_batch], block, p0, k)
                     for q0 in range(0, len(queries), self.query_batch)]  # fmt: skip
            best = torch.cat([best, torch.cat(found)], 1)
            best = best.topk(min(k, best.shape[1]), dim=1, largest=False, sorted=True).values
        keys = best.long()
        ranks, indices = keys.div(n, rounding_mode="floor"), keys.remainder(n)
        if self.metric == "l2":
            ranks = (ranks + queries.flatten(1).double().square().sum(1, keepdim=True).long()).sqrt()
        return ranks.float().to(out), indices.to(out)

    def votes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) vote counts of neighbours ``indices`` (B, k)."""
        counts = torch.zeros(len(indices), self.num_classes, device=indices.device)
        return counts.scatter_add_(1, self.labels[indices], torch.ones_like(indices, dtype=counts.dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) log vote shares; argmax is the majority vote, a tie going to the smallest label."""
        _, indices = self.kneighbors(images)
        return (self.votes(indices) / self.k).clamp(min=MIN_SHARE).log()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices (B,) for uint8 images (B, C, H, W)."""
        return self(images).argmax(1)


def first_k_by_rank(ranks: torch.Tensor, kth: torch.Tensor, k: int) -> torch.Tensor:
    """Columns (T, k) of the ``k`` smallest ``ranks`` (T, P) per row, equal ranks in column order, given each
    row's k-th smallest value ``kth`` (T, 1): only the entries at most ``kth`` (k and the ties) are sorted."""
    rows, cols = (ranks <= kth).nonzero(as_tuple=True)  # row-major: columns ascending within a row
    r = ranks[rows, cols].double()
    order = torch.argsort(rows.double() * (r.max() - r.min() + 1) + (r - r.min()), stable=True)
    rows, cols = rows[order], cols[order]
    start = torch.searchsorted(rows, torch.arange(len(ranks), device=rows.device))  # each row's first entry
    return cols[start[:, None] + torch.arange(k, device=rows.device)]


def _resize_buffers(module: KNN, state_dict: dict, prefix: str, *args) -> None:
    """Before a checkpoint loads: give the stored images and labels the checkpoint's sizes."""
    for name in ("images", "labels"):
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and value.shape != getattr(module, name).shape:
            old = getattr(module, name)
            setattr(module, name, torch.empty(value.shape, dtype=old.dtype, device=old.device))


@dataclass(frozen=True)
class CrossValidation:
    """Accuracy of each k (ascending) on each fold; k is chosen by the mean over the folds."""

    per_fold: dict[int, list[float]]

    @property
    def mean(self) -> dict[int, float]:
        return {k: sum(accs) / len(accs) for k, accs in self.per_fold.items()}

    @property
    def best_k(self) -> int:
        """The k of the best mean accuracy; the smallest such k on a tie (as GridSearchCV picks)."""
        mean = self.mean
        return max(mean, key=lambda k: (mean[k], -k))


def fold_bounds(n: int, folds: int) -> list[tuple[int, int]]:
    """(start, stop) of ``folds`` consecutive blocks of ``n`` images, the first n % folds one longer (KFold's)."""
    ends = list(accumulate(n // folds + (i < n % folds) for i in range(folds)))
    return list(zip([0, *ends[:-1]], ends, strict=True))


def cross_validate(train: vdata.ImageData, metric: str, k_choices: tuple[int, ...], folds: int,
                   query_batch: int = 4096, point_batch: int = 2048) -> CrossValidation:  # fmt: skip
    """Accuracy of each k in ``k_choices`` on each of ``folds`` held-out blocks of ``train``.

    Each fold's distances are computed once: one search for the max(k_choices) nearest neighbours, read
    for every smaller k from its first k (they come nearest first).
    """
    n, ks = len(train), sorted(set(k_choices))
    if folds > n:
        raise ConfigError(f"KNNConfig.folds = {folds} is not allowed: the training split holds only {n} images")
    bounds = fold_bounds(n, folds)
    stored = n - max(stop - start for start, stop in bounds)
    if ks[-1] > stored:
        raise ConfigError(
            f"KNNConfig.k_choices = {tuple(k_choices)} is not allowed: with {folds} folds of {n} training images "
            f"each fold stores {stored}, so k can be at most {stored} (pass smaller --k-choices or more images)"
        )
    per_fold: dict[int, list[float]] = {k: [] for k in ks}
    device = train.labels.device
    for start, stop in bounds:
        rest = torch.cat([torch.arange(start, device=device), torch.arange(stop, n, device=device)])
        knn = KNN(train.images[rest], train.labels[rest], len(train.classes), train.max_value, ks[-1], metric,
                  query_batch, point_batch)  # fmt: skip
        _, indices = knn.kneighbors(train.images[start:stop])  # (F, max k), nearest first
        truth = train.labels[start:stop]
        for k in ks:
            per_fold[k].append((knn.votes(indices[:, :k]).argmax(1) == truth).sum().item() / len(truth))
    return CrossValidation(per_fold)


def first(data: vdata.ImageData, limit: int) -> vdata.ImageData:
    """The first ``limit`` images of ``data`` (all of them for 0)."""
    if not limit or limit >= len(data):
        return data
    return vdata.ImageData(data.images[:limit], data.labels[:limit], data.max_value, data.classes)


def fit(cfg: KNNConfig, train: vdata.ImageData, device: torch.device | str = "cpu"
        ) -> tuple[KNN, CrossValidation | None]:  # fmt: skip
    """The kNN of ``cfg`` over ``train`` (its first ``train_limit`` images) on ``device``, and the
    cross-validation that chose k (None when ``cfg.k`` is given)."""
    train = first(train, cfg.train_limit).to(device)
    cv = None
    if cfg.k:
        if cfg.k > len(train):
            raise ConfigError(f"KNNConfig.k = {cfg.k} is not allowed: the training split holds only {len(train)} "
                              f"images; use k <= {len(train)}")  # fmt: skip
        k = cfg.k
    else:
        cv = cross_validate(train, cfg.metric, cfg.k_choices, cfg.folds, cfg.query_batch, cfg.point_batch)
        k = cv.best_k
    knn = KNN(train.images, train.labels, len(train.classes), train.max_value, k, cfg.metric, cfg.query_batch,
              cfg.point_batch)  # fmt: skip
    return knn, cv


def cv_table(cv: CrossValidation, metric: str) -> str:
    """The cross-validation results as a plain-text table: k, mean accuracy, and each fold's."""
    lines = [f"{len(next(iter(cv.per_fold.values())))}-fold cross-validation ({metric}) on the training split:",
             f"{'k':>5}  {'mean acc':>8}  folds"]  # fmt: skip
    for k, mean in cv.mean.items():
        folds = " ".join(f"{a:.3f}" for a in cv.per_fold[k])
        lines.append(f"{k:>5}  {mean:>8.4f}  {folds}{'   <- chosen' if k == cv.best_k else ''}")
    return "\n".join(lines)


def _splits(cfg: KNNConfig, device: torch.device, names: tuple[str, ...] = vdata.SPLITS) -> dict:
    return {s: vdata.load(cfg.dataset, s, data_dir=cfg.data_dir or None).to(device) for s in names}


def train(cfg: KNNConfig, run: Run) -> dict:
    """Fit the kNN of ``cfg``: store the training images and choose k by cross-validation on them (unless
    ``cfg.k`` gives it), then score it on val and test. The checkpoint holds the images, labels and k.

    Returns the summary figures {k, train_images, val/acc, val/loss, test/acc, test/loss}, and when k was
    cross-validated cv/acc (of the chosen k) and cv/acc_kK for every k tried.
    """
    splits = _splits(cfg, run.device)
    knn, cv = fit(cfg, splits["train"], run.device)
    run.track(model=knn)
    run.restore()  # a resumed run: the same (deterministic) model, and its step and metrics put back
    figures: dict = {"k": knn.k, "train_images": len(knn.labels)}
    if cv is not None:
        figures["cv/acc"] = cv.mean[knn.k]
        figures.update({f"cv/acc_k{k}": acc for k, acc in cv.mean.items()})
    for s in ("val", "test"):
        res = evaluate_split(knn, splits[s])
        figures.update({f"{s}/acc": res["acc"], f"{s}/loss": res["loss"]})
    for _ in run.loop(1, unit="fit", show="val/acc"):  # one step: it writes the checkpoint `fovea eval` reads
        if cv is not None:
            run.say(cv_table(cv, cfg.metric))
            for k, acc in cv.mean.items():  # W&B draws cv/acc against global_step = k
                run.log({"cv/acc": acc, "cv/k": k}, step=k)
        run.log({"k": knn.k, "val/acc": figures["val/acc"]})
    return figures


def evaluate(cfg: KNNConfig, run: Run) -> dict:
    """``fovea eval`` for a kNN: the model in ``run``'s checkpoint scored on the test split by
    ``classify.report``.

    Returns {k, test/acc, test/loss, test/acc_class_CLASS per class, confusion_png, confusion}.
    """
    test = _splits(cfg, run.device, ("test",))["test"]
    knn = load_trained(cfg, run, test)
    return {"k": knn.k, **report(run, knn, test)}


def load_trained(cfg: KNNConfig, run: Run, data: vdata.ImageData) -> KNN:
    """The kNN in ``run``'s latest checkpoint (its images, labels and k) on ``run.device``; ``data`` gives the
    image shape and classes."""
    empty = torch.empty(0, *data.shape, dtype=torch.uint8)
    knn = KNN(empty, torch.empty(0, dtype=torch.int64), len(data.classes), data.max_value, 1, cfg.metric,
              cfg.query_batch, cfg.point_batch).to(run.device)  # fmt: skip
    return restore_model(run, knn)


register_task(KNNConfig, train, evaluate, explain=explainer(load_trained))
register_recipe(
    "knn-digits", KNNConfig(), "kNN (L2) on the embedded 8x8 digits, k by 5-fold cross-validation: k=1, ~95% test"
)
register_recipe(
    "knn-cifar10",
    KNNConfig(dataset="cifar10", train_limit=5000),
    "kNN (L2) on 5,000 CIFAR-10 training images (CS231n's assignment 1), k by 5-fold cross-validation: ~28% test",
)
