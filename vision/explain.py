"""What a trained classifier learned, in pictures (the notes, chapter 12: visualising and understanding).

``fovea explain runs/NAME --what WHAT`` draws one of:

- ``filters``: the first layer's weights as images (what the layer matches; Krizhevsky et al. 2012, fig. 3);
- ``saliency``: |d score of the predicted class / d pixel| (Simonyan, Vedaldi & Zisserman 2014);
- ``occlusion``: the drop in the true class's probability as a patch hides each part (Zeiler & Fergus 2014);
- ``tsne``: t-SNE of the last-layer features of the test images (van der Maaten & Hinton 2008);
- ``neighbours``: the training images nearest to test images in the space of those features.

Any model keeping the classifier protocol works: ``model(images) -> (B, K)`` scores on pixels (uint8, or float
0..max_value), ``model.features(images) -> (B, D)`` and ``model.filters() -> (K, C, h, w) | None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fovea.errors import UsageError
from fovea.media import overlay_heatmap
from fovea.run import Run
from fovea.vision import data as vdata
from fovea.vision.plots import load_font, to_rgb

TILE = 96  # pixels on a tile's long side: an 8x8 digit is drawn 12x
PER_ROW = 8  # images side by side before a picture wraps
NEIGHBOURS = 8  # training images shown per query
POOL = 10_000  # at most this many training images are searched for neighbours
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


# ----------------------------------------------------------------------------- drawing


def upscale(images: np.ndarray, size: int = TILE) -> np.ndarray:
    """(N, H, W, 3) uint8 tiles enlarged by the whole factor that brings the long side to about ``size``."""
    f = max(1, math.ceil(size / max(images.shape[1:3])))
    return images.repeat(f, 1).repeat(f, 2)


def heat_rgb(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps >= 0 as (N, H, W, 3) uint8 in 'hot' colours (black, red, yellow, white), each map scaled
    to its own maximum."""
    m = np.clip(maps, 0, None) / np.maximum(maps.reshape(len(maps), -1).max(1), 1e-12)[:, None, None]
    rgb = np.stack([m * 3, m * 3 - 1, m * 3 - 2], -1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def sheet(rows: list[list[np.ndarray]], title: str, *, row_labels: list[str] | None = None,
          captions: list[list[str]] | None = None, borders: list[list] | None = None) -> Image.Image:  # fmt: skip
    """Equal (h, w, 3) tiles laid out in rows on white, with a title, a label left of each row, a caption under
    each tile and an optional coloured frame around each (``borders[r][c]``: an RGB colour or None)."""
    h, w = rows[0][0].shape[:2]
    font, small = load_font(14), load_font(11)
    left = 8 + (7 * max(map(len, row_labels)) + 8 if row_labels else 0)
    cap = 14 if captions else 0
    cell_w, cell_h = w + 8, h + 8 + cap
    width = max(left + max(map(len, rows)) * cell_w + 4, int(font.getlength(title)) + 16)
    img = Image.new("RGB", (width, 30 + len(rows) * cell_h), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), title, fill="black", font=font)
    for r, row in enumerate(rows):
        y = 30 + r * cell_h
        if row_labels:
            d.text((left - 8, y + h // 2), row_labels[r], fill="black", font=small, anchor="rm")
        for c, tile in enumerate(row):
            x = left + c * cell_w
            color = borders[r][c] if borders and borders[r] else None
            if color:
                d.rectangle((x - 3, y - 3, x + w + 2, y + h + 2), fill=color)
            img.paste(Image.fromarray(tile), (x, y))
            if captions and captions[r][c]:
                d.text((x + w // 2, y + h + 3), captions[r][c], fill="black", font=small, anchor="mt")
    return img


def maps_picture(images: np.ndarray, maps: np.ndarray, captions: list[str], title: str, what: str) -> Image.Image:
    """Each image (N, H, W, 3) above its map (N, H, W) in heat colours and the map laid over it, in blocks of
    ``PER_ROW`` images."""
    big, hot = upscale(images), upscale(heat_rgb(maps))
    over = np.stack([overlay_heatmap(b, m) for b, m in zip(big, maps, strict=True)])
    rows, labels, caps = [], [], []
    for i in range(0, len(images), PER_ROW):
        block = slice(i, i + PER_ROW)
        rows += [list(big[block]), list(hot[block]), list(over[block])]
        labels += ["image", what, "overlay"]
        caps += [captions[block], [""] * len(hot[block]), [""] * len(hot[block])]
    return sheet(rows, title, row_labels=labels, captions=caps)


def scatter(points: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], title: str,
            size: int = 640) -> Image.Image:  # fmt: skip
    """2-D points as a scatter plot, one colour per class, each class named at its median and in a legend."""
    colours = [PALETTE[i] if i < len(PALETTE) else tuple(int(v) for v in np.random.default_rng(i).integers(0, 200, 3))
               for i in range(len(classes))]  # fmt: skip
    legend_w = 24 + 7 * max(len(str(c)[:16]) for c in classes)
    img = Image.new("RGB", (size + legend_w + 24, size + 44), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), title, fill="black", font=load_font(14))
    lo, hi = points.min(0), points.max(0)
    xy = 12 + (points - lo) / np.maximum(hi - lo, 1e-12) * (size - 24) + [0, 32]
    d.rectangle((0, 32, size, size + 32), outline=(200, 200, 200))
    for (x, y), k in zip(xy, labels, strict=True):
        d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colours[k])
    small = load_font(12)
    for k, name in enumerate(classes):
        if (labels == k).any():
            x, y = np.median(xy[labels == k], 0)
            d.text((x, y), str(name)[:16], fill="black", font=load_font(16), anchor="mm", stroke_width=2,
                   stroke_fill="white")  # fmt: skip
        y = 40 + 18 * k
        d.rectangle((size + 16, y, size + 26, y + 10), fill=colours[k])
        d.text((size + 32, y + 5), str(name)[:16], fill="black", font=small, anchor="lm")
    return img


# ----------------------------------------------------------------------------- the numbers behind the pictures


def pick(data: vdata.ImageData, n: int, seed: int) -> torch.Tensor:
    """``n`` indices into ``data`` (all of them when it holds fewer), drawn at random with ``seed``."""
    return torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].to(data.images.device)


@torch.inference_mode()
def features(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model.features`` of (N, C, H, W) images, in batches: (N, D) floats."""
    return torch.cat([model.features(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])


def saliency_maps(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|d score of the predicted class / d pixel|, its maximum over the channels: (N, H, W) maps, and the
    predicted classes (N,). A model whose scores are not differentiable in its pixels gets a ``UsageError``."""
    x = images.float().requires_grad_(True)
    with torch.enable_grad():
        scores = model(x)
        pred = scores.argmax(1)
        grad = None
        if scores.requires_grad:  # batch norm in eval mode: each image's score depends on that image only
            (grad,) = torch.autograd.grad(scores.gather(1, pred[:, None]).sum(), x, allow_unused=True)
    if grad is None:
        raise UsageError(f"saliency needs a model differentiable in its pixels; {type(model).__name__}'s scores are "
                         f"not (a kNN or a model on HOG features): use --what occlusion instead")  # fmt: skip
    return grad.abs().amax(1).detach(), pred.detach()


def occlusion_geometry(h: int, w: int) -> tuple[int, int]:
    """The patch side and stride for (h, w) images: 2 and 1 on 8x8 digits, 7 and 3 on 28x28, 8 and 4 on 32x32."""
    patch = max(2, min(h, w) // 4)
    return patch, max(1, patch // 2)


def positions(size: int, patch: int, stride: int) -> list[int]:
    """Patch offsets along one side, the last one flush with the edge."""
    return sorted(set(range(0, size - patch + 1, stride)) | {size - patch})


@torch.inference_mode()
def occlusion_maps(model, images: torch.Tensor, labels: torch.Tensor, patch: int, stride: int,
                   fill: float) -> torch.Tensor:  # fmt: skip
    """For each image, the drop in the probability of its true class when a ``patch`` x ``patch`` square at
    each offset (rows, then columns, ``stride`` apart) is set to ``fill``: (N, rows, columns). All occluded
    copies of an image (and the image itself, first) go through the model in one batch."""
    _, _, h, w = images.shape
    ys, xs = positions(h, patch, stride), positions(w, patch, stride)
    out = torch.empty(len(images), len(ys), len(xs))
    for i, (image, label) in enumerate(zip(images.float(), labels, strict=True)):
        copies = image.expand(1 + len(ys) * len(xs), -1, -1, -1).clone()  # (1 + P, C, H, W)
        for j, (y, x) in enumerate((y, x) for y in ys for x in xs):
            copies[1 + j, :, y : y + patch, x : x + patch] = fill
        p = model(copies).float().softmax(1)[:, label].cpu()
        out[i] = (p[0] - p[1:]).view(len(ys), len(xs))
    return out


def spread(grid: torch.Tensor, h: int, w: int, patch: int, stride: int) -> np.ndarray:
    """Occlusion drops (N, rows, columns) as (N, h, w) pixel maps: each pixel the mean drop of the patches
    covering it."""
    total, count = np.zeros((len(grid), h, w)), np.zeros((h, w))
    for a, y in enumerate(positions(h, patch, stride)):
        for b, x in enumerate(positions(w, patch, stride)):
            total[:, y : y + patch, x : x + patch] += grid[:, a, b, None, None].numpy()
            count[y : y + patch, x : x + patch] += 1
    return total / count


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out accuracy of a ``k``-nearest-neighbour vote (L2) among ``points``: how well classes separate."""
    d = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    near = labels[np.argsort(d, 1)[:, :k]]  # (N, k)
    votes = np.stack([(near == c).sum(1) for c in range(labels.max() + 1)], 1)
    return float((votes.argmax(1) == labels).mean())


def nearest(queries: torch.Tensor, pool: torch.Tensor, k: int, cosine: bool) -> torch.Tensor:
    """Indices (Q, k) of the ``k`` rows of ``pool`` nearest each query, by cosine similarity or L2 distance."""
    if cosine:
        sim = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(pool, dim=1).T
    else:
        sim = -torch.cdist(queries, pool)
    return sim.topk(min(k, len(pool)), 1).indices


# ----------------------------------------------------------------------------- one function per --what

Split = Callable[[str], vdata.ImageData]  # split name -> that split, on the run's device


def show_filters(model, split: Split, n: int | None, seed: int) -> tuple[Image.Image, dict]:
    """The first ``n`` (default all) first-layer filters, each scaled to its own range: grey for one channel,
    RGB for three, the mean over the channels otherwise."""
    w = model.filters()
    if w is None:
        raise UsageError(f"{type(model).__name__} has no first-layer weights to show as images; try --what "
                         f"neighbours or tsne")  # fmt: skip
    w = w.detach().float().cpu()[:n]  # (K, C, h, w)
    k, c, h, wd = w.shape
    lo, hi = w.amin((1, 2, 3), keepdim=True), w.amax((1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp(min=1e-12)
    tiles = upscale(to_rgb(w if c in (1, 3) else w.mean(1, keepdim=True), 1.0), 72)
    cols = min(16, math.ceil(math.sqrt(k)))
    rows = [list(tiles[i : i + cols]) for i in range(0, k, cols)]
    frames = [[(150, 150, 150)] * len(r) for r in rows]
    title = f"First-layer filters: {k} of {c}x{h}x{wd}, each scaled to its own range (dark: lowest, light: highest)"
    figures = {"filters/count": k, "filters/channels": c, "filters/height": h, "filters/width": wd}
    return sheet(rows, title, borders=frames), figures


def show_saliency(model, split: Split, n: int | None, seed: int) -> tuple[Image.Image, dict]:
    """Saliency maps of ``n`` (default 8) test images, and the share of saliency on lit (non-zero) pixels."""
    test = split("test")
    idx = pick(test, n or 8, seed)
    images, labels = test.images[idx], test.labels[idx]
    maps, pred = saliency_maps(model, images)
    lit = (images > 0).any(1)  # (N, H, W): the strokes of a digit
    figures = {"saliency/images": len(idx), "saliency/on_lit": float((maps * lit).sum() / maps.sum().clamp(min=1e-12)),
               "saliency/lit_share": float(lit.float().mean())}  # fmt: skip
    captions = [f"{test.classes[t]} -> {test.classes[p]}" for t, p in zip(labels.tolist(), pred.tolist(), strict=True)]
    title = (f"Saliency |d score(predicted) / d pixel| (true -> predicted); {figures['saliency/on_lit']:.0%} of it on "
             f"lit pixels, which are {figures['saliency/lit_share']:.0%} of all")  # fmt: skip
    return maps_picture(to_rgb(images, test.max_value), maps.cpu().numpy(), captions, title, "saliency"), figures


def show_occlusion(model, split: Split, n: int | None, seed: int) -> tuple[Image.Image, dict]:
    """Occlusion maps of ``n`` (default 8) test images: the patch is black (0) on one channel, where it erases
    strokes, and mid-grey on colour images."""
    test = split("test")
    idx = pick(test, n or 8, seed)
    images, labels = test.images[idx], test.labels[idx]
    c, h, w = test.shape
    patch, stride = occlusion_geometry(h, w)
    fill = 0.0 if c == 1 else test.max_value / 2
    grid = occlusion_maps(model, images, labels, patch, stride, fill)
    figures = {"occlusion/images": len(idx), "occlusion/patch": patch, "occlusion/stride": stride,
               "occlusion/max_drop": float(grid.amax((1, 2)).mean()),
               "occlusion/mean_drop": float(grid.mean())}  # fmt: skip
    captions = [f"true {test.classes[t]}" for t in labels.tolist()]
    title = (f"Occlusion: drop in p(true class) when a {patch}x{patch} {'black' if fill == 0 else 'grey'} patch "
             f"(stride {stride}) covers each pixel; mean largest drop {figures['occlusion/max_drop']:.2f}")  # fmt: skip
    maps = spread(grid, h, w, patch, stride)
    return maps_picture(to_rgb(images, test.max_value), maps, captions, title, "drop"), figures


def show_tsne(model, split: Split, n: int | None, seed: int) -> tuple[Image.Image, dict]:
    """t-SNE of the features of ``n`` (default 2000) test images; how well the classes separate in that 2-D map:
    its silhouette by class (-1..1; an untrained net's features of the digits give 0.2 to 0.3) and its 5-NN
    accuracy. Features wider than 50 are first reduced to 50 by PCA, as van der Maaten & Hinton do."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    test = split("test")
    idx = pick(test, n or 2000, seed)
    if len(idx) < 10:
        raise UsageError(f"tsne needs at least 10 images; -n {len(idx)} gives too few")
    feats = features(model, test.images[idx]).cpu().double().numpy()
    model_width = feats.shape[1]
    labels = test.labels[idx].cpu().numpy()
    if min(feats.shape) > 50:
        feats = PCA(50, random_state=seed).fit_transform(feats)
    points = TSNE(2, perplexity=min(30.0, (len(idx) - 1) / 3), init="pca", random_state=seed).fit_transform(feats)
    figures = {"tsne/images": len(idx), "tsne/silhouette": float(silhouette_score(points, labels)),
               "tsne/knn_acc": knn_accuracy(points, labels)}  # fmt: skip
    title = (f"t-SNE of the {model_width}-d features of {len(idx)} test images; class silhouette "
             f"{figures['tsne/silhouette']:.2f}, 5-NN accuracy {figures['tsne/knn_acc']:.1%}")  # fmt: skip
    return scatter(points, labels, test.classes, title), figures


def show_neighbours(model, split: Split, n: int | None, seed: int) -> tuple[Image.Image, dict]:
    """For ``n`` (default 8) test images, the nearest training images by cosine similarity of their features
    (framed green when they share the query's label, red otherwise); the same search on raw pixels (L2) gives
    a figure to compare with."""
    test, train = split("test"), split("train")
    q, pool = pick(test, n or 8, seed), pick(train, POOL, seed)
    queries, candidates, pool_labels = test.images[q], train.images[pool], train.labels[pool]
    near = nearest(features(model, queries), features(model, candidates), NEIGHBOURS, cosine=True)  # (Q, k)
    by_pixels = nearest(queries.flatten(1).float(), candidates.flatten(1).float(), NEIGHBOURS, cosine=False)
    want = test.labels[q][:, None]
    figures = {"neighbours/queries": len(q), "neighbours/k": near.shape[1],
               "neighbours/same_label": float((pool_labels[near] == want).float().mean()),
               "neighbours/same_label_pixels": float((pool_labels[by_pixels] == want).float().mean())}  # fmt: skip
    shown = upscale(to_rgb(torch.cat([queries[:, None], candidates[near]], 1).flatten(0, 1), test.max_value))
    rows = [list(shown[i : i + 1 + near.shape[1]]) for i in range(0, len(shown), 1 + near.shape[1])]
    labels = torch.cat([want, pool_labels[near]], 1).tolist()  # (Q, 1 + k): the query's, then its neighbours'
    caps = [[f"query {test.classes[r[0]]}", *(str(train.classes[f]) for f in r[1:])] for r in labels]
    borders = [[(0, 0, 0), *((60, 170, 60) if f == r[0] else (220, 40, 40) for f in r[1:])] for r in labels]
    same, pixels = figures["neighbours/same_label"], figures["neighbours/same_label_pixels"]
    title = f"Nearest training images by feature (cosine), query first; same label {same:.0%} (by pixels: {pixels:.0%})"
    return sheet(rows, title, captions=caps, borders=borders), figures


METHODS = {"filters": show_filters, "saliency": show_saliency, "occlusion": show_occlusion, "tsne": show_tsne,
           "neighbours": show_neighbours}  # fmt: skip


def explainer(load_trained: Callable[..., torch.nn.Module]) -> Callable[..., dict]:
    """``explain(cfg, run, what, output=None, n=None, seed=0) -> figures`` for classifiers restored by
    ``load_trained(cfg, run, data)``; register it with ``register_task(Cfg, train, evaluate, explain=...)``."""

    def explain(cfg, run: Run, what: str, output: str | Path | None = None, n: int | None = None,
                seed: int = 0) -> dict:  # fmt: skip
        """Draw ``what`` (one of ``METHODS``) for the run's latest checkpoint to ``output`` (default
        runs/NAME/explain/WHAT.png), log it to W&B as ``explain/WHAT`` and return its figures."""
        if what not in METHODS:
            raise UsageError(f"--what {what!r} is not an explanation; use one of {', '.join(METHODS)}")
        if n is not None and n < 1:
            raise UsageError(f"-n {n} must be at least 1")
        cache: dict[str, vdata.ImageData] = {}

        def split(name: str) -> vdata.ImageData:
            if name not in cache:
                data_dir = getattr(cfg, "data_dir", "") or None
                cache[name] = vdata.load(cfg.dataset, name, data_dir=data_dir).to(run.device)
            return cache[name]

        model = load_trained(cfg, run, split("test"))
        picture, figures = METHODS[what](model, split, n, seed)
        path = Path(output) if output else run.dir / "explain" / f"{what}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, format="PNG")
        logged = run.log_image(f"explain/{what}", np.asarray(picture))
        return {"what": what, "png": str(path), **({"logged_png": str(logged)} if logged else {}), **figures}

    return explain
