"""Generative models that sample images (autoencoder, VAE, GAN, PixelCNN: issue 4)."""
