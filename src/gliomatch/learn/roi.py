"""3-D RoI max pooling over tumor bounding boxes, and the distorted boxes of the robustness test.

After the RoI pooling of Fast R-CNN (Girshick, ICCV 2015), in 3-D with max pooling, as used by
Sun et al., *Brain Tumor Image Retrieval via Multitask Learning* (arXiv:1810.09369, 2018): the
features of each sample are max-pooled over its own box, so the embedding sees the tumor
whatever its size and place. Boxes are half-open ``(i0, j0, k0, i1, j1, k1)`` in input voxels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RoIMaxPool3d", "box_cells", "distort_boxes"]


def box_cells(boxes, stride: int, grid: int) -> np.ndarray:
    """Half-open boxes (n, 6) in input voxels -> integer feature-map cells, at least one cell
    per axis, clipped to the grid: every box, however distorted, pools something."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    lo = np.clip(np.floor(b[:, :3] / stride), 0, grid - 1).astype(np.int64)
    hi = np.clip(np.ceil(b[:, 3:] / stride), 0, grid).astype(np.int64)
    hi = np.maximum(hi, lo + 1)
    return np.concatenate([lo, hi], axis=1)


def distort_boxes(
    boxes, rng: np.random.Generator, scale_sd: float = 1 / 3, shift_sd: float = 0.1
) -> np.ndarray:
    """The paper's inaccurate bounding boxes: per axis, log2 of the size ratio ~ N(0, scale_sd)
    and the centre shift ~ size * N(0, shift_sd) (standard deviations)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    lo, hi = b[:, :3], b[:, 3:]
    size = np.maximum(hi - lo, 1.0)
    centre = (lo + hi) / 2 + size * rng.normal(0.0, shift_sd, size.shape)
    new = size * 2.0 ** rng.normal(0.0, scale_sd, size.shape)
    return np.concatenate([centre - new / 2, centre + new / 2], axis=1)


class RoIMaxPool3d(nn.Module):
    """Max pooling of a 3-D feature map over each sample's box to ``output_size``^3 cells."""

    def __init__(self, stride: int, output_size: int = 1):
        super().__init__()
        self.stride, self.output_size = stride, output_size

    def forward(self, features: torch.Tensor, boxes) -> torch.Tensor:
        cells = box_cells(boxes, self.stride, features.shape[-1])
        pooled = [
            F.adaptive_max_pool3d(features[n : n + 1, :, i0:i1, j0:j1, k0:k1], self.output_size)
            for n, (i0, j0, k0, i1, j1, k1) in enumerate(cells)
        ]
        return torch.cat(pooled).flatten(1)
