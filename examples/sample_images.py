"""Train a VAE on the 8x8 digits, draw new digits from it, and score them by likelihood beside real ones.

Run: python examples/sample_images.py [EPOCHS]   (vae-digits trains 100 epochs, about a minute on a CPU)
"""

import sys

from torchvision.utils import save_image

import fovea
from fovea.vision import data

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 100
result = fovea.train("vae-digits", epochs=epochs)
vae = result.model
images = vae.sample(64, seed=0)  # uint8 (64, 1, 8, 8), pixels 0..16 as in the data set
big = images.repeat_interleave(4, 2).repeat_interleave(4, 3).float() / vae.max_value
save_image(big, result.run_dir / "example_samples.png", nrow=8, pad_value=0.5)
print(f"64 samples: {result.run_dir / 'example_samples.png'}")

real = data.load("digits", "test").images[:64]
fake_nll, real_nll = vae.nll(images).mean(), vae.nll(real).mean()  # nats per image (an upper bound: IWAE)
print(f"-log p(x): samples {fake_nll:.1f} nats, real test digits {real_nll:.1f} nats")
