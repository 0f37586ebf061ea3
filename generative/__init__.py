"""Generative models that sample images: autoencoder, VAE, GAN, PixelCNN and PixelRNN (notes, ch. 13).

Importing the package registers their recipes (``vae-digits``, ``pixelcnn-digits``, ...).
"""

from fovea.generative import (
    autoencoder,  # noqa: F401
    diffusion,  # noqa: F401
    gan,  # noqa: F401
    pixelcnn,  # noqa: F401
    pixelrnn,  # noqa: F401
)
