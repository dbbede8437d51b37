"""A small SASRec-style Transformer encoder whose normalisation layer is pluggable.

Same computation as RecBole's ``TransformerEncoder`` (post-norm blocks: ``x = norm(x + drop(attn(x)))``,
``x = norm(x + drop(ffn(x)))``, causal self-attention), except that every norm comes from a factory
(``recbole_mm.model.layers.dyt.norm_factory``: DyT or LayerNorm) and attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where available).

API::

    encoder = TransformerEncoder(n_layers, hidden_size, n_heads, inner_size, norm=norm_factory("dyt", d),
                                 hidden_dropout=0.5, attn_dropout=0.5, hidden_act="gelu", causal=True)
    out = encoder(hidden, valid)        # hidden [B, L, d], valid [B, L] bool (False = padding) -> [B, L, d]
"""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "swish": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def attention_mask(valid: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Boolean mask ``[B, 1, L, L]`` (True = may attend): key is not padding, and (if ``causal``)
    not in the future. The diagonal is always allowed so no query row is empty (an all-masked row
    would make softmax NaN); padding queries are never read anyway."""
    length = valid.shape[1]
    allowed = valid[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    return allowed | torch.eye(length, dtype=torch.bool, device=valid.device)


class SelfAttention(nn.Module):
    """Multi-head self-attention (fused QKV projection, SDPA, output projection)."""

    def __init__(self, hidden_size: int, n_heads: int, attn_dropout: float):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, size = x.shape
        # [B, L, 3d] -> 3 x [B, H, L, d / H]
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, size // self.n_heads).permute(2, 0, 3, 1, 4)
        dropout = self.attn_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(context.transpose(1, 2).reshape(batch, length, size))


class TransformerBlock(nn.Module):
    """Post-norm block: attention and feed-forward sub-layers, each ``norm(x + dropout(f(x)))``."""

    def __init__(self, hidden_size, n_heads, inner_size, norm: Callable[[], nn.Module], hidden_dropout=0.0, attn_dropout=0.0, hidden_act="gelu"):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {hidden_act!r}")
        self.attention = SelfAttention(hidden_size, n_heads, attn_dropout)
        self.feed_forward = nn.Sequential(nn.Linear(hidden_size, inner_size), ACTIVATIONS[hidden_act](), nn.Linear(inner_size, hidden_size))
        self.attention_norm = norm()
        self.output_norm = norm()
        self.dropout = nn.Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        return self.output_norm(x + self.dropout(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    """``n_layers`` :class:`TransformerBlock` s; ``norm`` builds each block's normalisation layers."""

    def __init__(self, n_layers, hidden_size, n_heads, inner_size, norm: Callable[[], nn.Module], hidden_dropout=0.0, attn_dropout=0.0, hidden_act="gelu", causal=True):
        super().__init__()
        self.causal = causal
        self.layers = nn.ModuleList(
            TransformerBlock(hidden_size, n_heads, inner_size, norm, hidden_dropout, attn_dropout, hidden_act) for _ in range(n_layers)
        )

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(valid, self.causal)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return hidden
