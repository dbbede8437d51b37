"""DynamicTanh (DyT), the element-wise replacement of LayerNorm, and a norm-layer factory.

"Transformers without Normalization" (Zhu, Chen, He, LeCun, Liu; arXiv 2503.10622) replaces each
normalisation layer by ``DyT(x) = gamma * tanh(alpha * x) + beta``: a learnable scalar ``alpha``
squashes activations the way LayerNorm's statistics would, with no reduction over channels.

``unit_gain``: start ``gamma`` at ``1 / alpha`` instead of 1, i.e. the same function family with a
different initialisation, whose slope at 0 is 1. Stacked post-norm blocks (SASRec's layout) then
pass small signals on unchanged at the start of training; with ``gamma = 1`` and ``alpha = 0.5``
every DyT halves its input's scale, so after two blocks (four norms) the output is ~16x smaller.
"""

from typing import Callable

import torch
from torch import nn

NORM_KINDS = ("dyt", "layernorm")


class DyT(nn.Module):
    """``y = gamma * tanh(alpha * x) + beta`` over the last dimension.

    ``alpha``: one learnable scalar (initialised to ``alpha_init``, 0.5 in the paper);
    ``gamma`` / ``beta``: per-channel, initialised to 1 / 0 like LayerNorm's affine parameters, or
    ``gamma`` to ``1 / alpha_init`` with ``unit_gain`` (slope 1 at 0).
    """

    def __init__(self, size: int, alpha_init: float = 0.5, unit_gain: bool = False):
        super().__init__()
        if alpha_init <= 0:
            raise ValueError(f"DyT alpha_init must be > 0, got {alpha_init!r}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.weight = nn.Parameter(torch.full((size,), 1.0 / alpha_init if unit_gain else 1.0))  # gamma
        self.bias = nn.Parameter(torch.zeros(size))  # beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, alpha={self.alpha.item():.3g}"


def make_norm(kind: str, size: int, eps: float = 1e-12, alpha_init: float = 0.5, unit_gain: bool = False) -> nn.Module:
    """One normalisation layer of ``kind``: ``dyt`` (DynamicTanh) or ``layernorm``."""
    if kind == "dyt":
        return DyT(size, alpha_init, unit_gain)
    if kind == "layernorm":
        return nn.LayerNorm(size, eps=eps)
    raise ValueError(f"norm must be one of {NORM_KINDS}, got {kind!r}")


def norm_factory(kind: str, size: int, eps: float = 1e-12, alpha_init: float = 0.5, unit_gain: bool = False) -> Callable[[], nn.Module]:
    """A zero-argument callable building fresh norm layers, for encoders that take a factory."""
    make_norm(kind, size, eps, alpha_init, unit_gain)  # validate now, not at the first layer
    return lambda: make_norm(kind, size, eps, alpha_init, unit_gain)
