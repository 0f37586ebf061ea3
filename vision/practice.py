"""Training practice from chapters 6-7 of the notes (CS231n): weight initialisation (6.3), data
augmentation (7.2) and the babysitting figure of 6.6, the ratio of update size to weight size.

Every piece works on any ``nn.Module`` and batch of uint8 images, so the neural classifiers (two-layer
net, ConvNet, ResNet) share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fovea.errors import ConfigError
from fovea.vision.data import random_shift

# ----------------------------------------------------------------------------- initialisation

INITS = ("default", "kaiming", "xavier", "small")


@torch.no_grad()
def initialise(model: nn.Module, scheme: str) -> None:
    """Re-initialise every convolution and linear layer's weights (biases to zero) by ``scheme``:

    - ``kaiming``: He et al. 2015, N(0, 2 / fan_in), for ReLU nets;
    - ``xavier``: Glorot and Bengio 2010, N(0, 2 / (fan_in + fan_out)) (the notes' 1/sqrt(n) scaling);
    - ``small``: N(0, 0.01^2), the notes' example of what goes wrong in deep nets (activations shrink to 0);
    - ``default``: leave PyTorch's defaults (Kaiming-uniform with a = sqrt(5)).
    """
    if scheme not in INITS:
        raise ConfigError(f"init = {scheme!r} is not allowed; use one of {', '.join(INITS)}")
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear | nn.ConvTranspose2d):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif scheme == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- augmentation

AUGMENTS = {
    "shift": "shift:N  translate by up to N pixels, zero fill (batched; torchvision's RandomCrop(padding=N))",
    "flip": "flip     mirror left-right with probability 1/2 (batched; RandomHorizontalFlip)",
    "rotate": "rotate:D random rotation by up to D degrees (torchvision.transforms.v2.RandomRotation)",
    "affine": "affine:D rotation up to D degrees, translation up to 10%, scale 0.9-1.1 (v2.RandomAffine)",
    "erase": "erase:P  erase a random rectangle with probability P (v2.RandomErasing, cutout)",
}


def parse_augment(spec: str) -> list[tuple[str, float]]:
    """``"shift:1,flip"`` -> [("shift", 1.0), ("flip", 0.0)]; a ConfigError lists the transforms on a bad spec."""
    out: list[tuple[str, float]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, arg = part.partition(":")
        bad = name not in AUGMENTS or (name == "flip") != (arg == "")
        try:
            value = float(arg) if arg else 0.0
        except ValueError:
            bad = True
        if bad or not math.isfinite(value) or value < 0 or (name == "erase" and value > 1):
            raise ConfigError(
                f"augment = {spec!r}: cannot read {part!r}. Give a comma-separated list of:\n  "
                + "\n  ".join(AUGMENTS.values())
                + "\n(e.g. --augment shift:1 on digits, --augment shift:4,flip on CIFAR-10, --augment '' for none)"
            )
        out.append((name, value))
    return out


def augmenter(spec: str) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """A function (uint8 images (B, C, H, W), generator) -> augmented images, per ``spec`` (see AUGMENTS).

    Shifts and flips are drawn per image but applied to the whole batch at once on its device; the
    torchvision v2 transforms run image by image (their random draws come from torch's global RNG,
    which the run seeds and checkpoints).
    """
    steps = parse_augment(spec)
    per_image = _v2_transforms(steps)

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for name, value in steps:
            if name == "shift":
                images = random_shift(images, int(value), generator)
            elif name == "flip":
                flip = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)
                images = torch.where(flip[:, None, None, None], images.flip(3), images)
        if per_image is not None:
            images = torch.stack([per_image(im) for im in images])
        return images

    return apply


def _v2_transforms(steps: list[tuple[str, float]]):
    chosen = [(n, v) for n, v in steps if n in ("rotate", "affine", "erase")]
    if not chosen:
        return None
    from torchvision.transforms import v2

    make = {
        "rotate": lambda d: v2.RandomRotation(d),
        "affine": lambda d: v2.RandomAffine(d, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        "erase": lambda p: v2.RandomErasing(p, scale=(0.02, 0.2), value=0),
    }
    return v2.Compose([make[n](v) for n, v in chosen])


# ----------------------------------------------------------------------------- babysitting


class UpdateRatios:
    """The notes' babysitting figure (6.6): for each weight matrix / kernel, ||update|| / ||weight|| of one
    optimizer step (about 1e-3 is healthy; much larger: the learning rate is too high; much smaller: too low).

    Call ``before()`` just before ``optimizer.step()`` and ``after()`` just after; ``after`` returns
    ``{"update_ratio/NAME": ratio}`` for every parameter with at least 2 dimensions.
    """

    def __init__(self, model: nn.Module):
        self.params = {n.replace(".", "/"): p for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad}
        self._before: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def before(self) -> None:
        self._before = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def after(self) -> dict[str, torch.Tensor]:
        ratios = {
            f"update_ratio/{n}": (p - self._before[n]).norm() / p.norm().clamp(min=1e-12)
            for n, p in self.params.items()
        }
        self._before = {}
        return ratios
