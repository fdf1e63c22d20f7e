"""The bi-half layer of deep unsupervised hashing.

Each bit (feature) is balanced over the batch: the half of the samples with the larger values
get +1, the other half -1 (the optimal transport of the continuous codes onto a half/half binary
distribution). Gradients pass straight through, plus the paper's pull of the continuous code
towards its bits: ``dL/dz = g + gamma * (z - b) / z.numel()`` (``gamma`` = 6 in the authors'
code), which keeps the latent near +/-1 so that the bits chosen at inference (a threshold per
bit) agree with those chosen in training (the batch ranking).

References
----------
.. [1] Li, Y. & van Gemert, J. (2021). Deep Unsupervised Image Hashing by Maximizing Bit
   Entropy. AAAI 35(3), 2002-2010.
"""

from __future__ import annotations

import torch

from gliomatch.learn.config import GAMMA

__all__ = ["GAMMA", "BiHalf", "bihalf"]


class _BiHalfFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, gamma):
        n = z.shape[0]
        order = torch.argsort(z, dim=0, descending=True, stable=True)
        codes = torch.full_like(z, -1.0)
        top = order[: (n + 1) // 2] if n % 2 else order[: n // 2]
        codes.scatter_(0, top, 1.0)
        ctx.save_for_backward(z, codes)
        ctx.gamma = gamma
        return codes

    @staticmethod
    def backward(ctx, grad):
        z, codes = ctx.saved_tensors  # gamma = 0: the plain straight-through estimator
        return grad + ctx.gamma * (z - codes) / z.numel(), None


def bihalf(z: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Balanced +/-1 codes over the batch (dim 0); the gradient passes straight through, plus
    ``gamma * (z - codes) / z.numel()`` (the bi-half paper's quantization pull)."""
    return _BiHalfFn.apply(z, float(gamma))


class BiHalf(torch.nn.Module):
    """Bi-half in training (batch of >= 2); at inference (single samples) each bit is
    ``sign(z - threshold)`` with ``threshold`` the bit's median over the training set, set by
    :meth:`calibrate` -- the dataset-level version of "half +1, half -1" (training only balances
    within a batch, so the raw latent may be offset and a plain ``sign`` would give constant
    bits)."""

    def __init__(self, bits: int, gamma: float = GAMMA):
        super().__init__()
        self.gamma = gamma  # a training setting: not part of the saved weights
        self.register_buffer("threshold", torch.zeros(bits))

    def calibrate(self, latents: torch.Tensor) -> None:
        self.threshold.copy_(latents.median(dim=0).values)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.training and z.shape[0] > 1:
            return bihalf(z, self.gamma)
        return torch.where(z >= self.threshold, torch.ones_like(z), -torch.ones_like(z))
