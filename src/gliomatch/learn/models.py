"""Convolutional autoencoder, VAE and hashing autoencoder for 3-D tumor masks.

The papers' architecture: an encoder of strided 3-D convolutions (stride 2, kernel 3), each
followed by an unstrided convolution, with growing channels down to 16^3; flatten; a linear
layer to the latent. The decoder mirrors it with transposed convolutions. One model per
modality (T1Gd, FLAIR). To keep the linear layer tractable the last unstrided convolution maps
to ``flat_channels`` (4) channels before flattening (16^3 x 4 = 16,384 features).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gliomatch.errors import GliomatchError
from gliomatch.learn.bihalf import BiHalf
from gliomatch.learn.config import GAMMA, KINDS

__all__ = ["KINDS", "MaskAutoencoder", "build_model"]

BOTTOM = 16


def _levels(resolution: int) -> int:
    n = math.log2(resolution / BOTTOM)
    if resolution < BOTTOM or n != int(n):
        raise GliomatchError(
            f"input resolution must be 16 x a power of two (16, 32, 64, 128), got {resolution}"
        )
    return int(n)


class MaskAutoencoder(nn.Module):
    """``kind`` = ae (latent), vae (mean/log-variance, reparameterised) or hash (bi-half;
    ``gamma`` is its quantization pull, a training setting outside the saved configuration)."""

    def __init__(
        self,
        kind: str = "ae",
        resolution: int = 64,
        latent: int = 1024,
        channels: int = 8,
        flat_channels: int = 4,
        gamma: float = GAMMA,
    ):
        super().__init__()
        if kind not in KINDS:
            raise GliomatchError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")
        self.kind, self.resolution, self.latent = kind, resolution, latent
        self.config = dict(
            kind=kind,
            resolution=resolution,
            latent=latent,
            channels=channels,
            flat_channels=flat_channels,
        )
        n = _levels(resolution)
        enc, c_in = [], 1
        for i in range(n):
            c = channels * 2**i
            enc += [
                nn.Conv3d(c_in, c, 3, stride=2, padding=1),
                nn.LeakyReLU(0.1),
                nn.Conv3d(c, c, 3, padding=1),
                nn.LeakyReLU(0.1),
            ]
            c_in = c
        enc += [nn.Conv3d(c_in, flat_channels, 3, padding=1), nn.LeakyReLU(0.1)]
        self.encoder = nn.Sequential(*enc)
        flat = flat_channels * BOTTOM**3
        self.to_latent = nn.Linear(flat, latent)
        self.to_logvar = nn.Linear(flat, latent) if kind == "vae" else None
        self.bihalf = BiHalf(latent, gamma) if kind == "hash" else None
        self.from_latent = nn.Linear(latent, flat)
        dec, c_in = (
            [
                nn.Conv3d(flat_channels, channels * 2 ** max(n - 1, 0), 3, padding=1),
                nn.LeakyReLU(0.1),
            ],
            channels * 2 ** max(n - 1, 0),
        )
        for i in reversed(range(n)):
            c = channels * 2 ** max(i - 1, 0)
            dec += [
                nn.ConvTranspose3d(c_in, c, 4, stride=2, padding=1),
                nn.LeakyReLU(0.1),
                nn.Conv3d(c, c, 3, padding=1),
                nn.LeakyReLU(0.1),
            ]
            c_in = c
        dec += [nn.Conv3d(c_in, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.flat_channels = flat_channels

    def encode(self, x: torch.Tensor):
        h = self.encoder(x).flatten(1)
        mu = self.to_latent(h)
        if self.kind == "vae":
            return mu, self.to_logvar(h)
        return mu, None

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The search code: latent (ae), mean (vae) or +/-1 bits (hash)."""
        mu, _ = self.encode(x)
        if self.kind == "hash":
            return self.bihalf(mu)
        return mu

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(-1, self.flat_channels, BOTTOM, BOTTOM, BOTTOM)
        return self.decoder(h)  # logits

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        if self.kind == "vae":
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        elif self.kind == "hash":
            z = self.bihalf(mu)
        else:
            z = mu
        return self.decode(z), mu, logvar


def build_model(config: dict) -> MaskAutoencoder:
    return MaskAutoencoder(**config)
