"""Learned tumor codes: autoencoder, VAE, bi-half hashing (PyTorch + MONAI)."""
