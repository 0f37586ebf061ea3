"""Two classification baselines on the 8x8 digits side by side: softmax regression on the pixels, and a CNN.

Run: python examples/compare_classifiers.py [EPOCHS]   (default: each recipe's own; seconds on a CPU)
"""

import sys

import fovea
from fovea.vision import data

overrides = {"epochs": int(sys.argv[1])} if len(sys.argv) > 1 else {}
test = data.load("digits", "test")  # uint8 images (447, 1, 8, 8) and their labels
right = {}  # per recipe: which test digits it classifies correctly
for recipe in ("softmax-digits", "cnn-digits"):
    result = fovea.train(recipe, **overrides)
    right[recipe] = result.model.predict(test.images) == test.labels
    print(f"{recipe:>15}: test accuracy {result.figures['test/acc']:.1%}   {result.run_dir}")

linear, cnn = right.values()
print(f"the CNN is right on {(cnn & ~linear).sum()} test digits the linear model gets wrong")
print(f"the linear model is right on {(linear & ~cnn).sum()} the CNN gets wrong; both miss {(~linear & ~cnn).sum()}")
