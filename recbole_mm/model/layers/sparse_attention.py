"""Sparse Attention Alignment Layer (SAL) of MUFASA (arXiv 2508.09664), shaped like NSA (arXiv 2502.11089).

Causal multi-head attention where every query ``t`` combines three branches, each with its own key/value
projection (NSA keeps them separate so a branch cannot take shortcuts through another's keys):

* ``window``: the last ``w`` items, keys in ``(t - w, t]``: local context.
* ``block``:  one compressed key/value per *complete* block of ``l`` items that ends at or before ``t``:
  coarse, sequence-wide "interest block evolution".
* ``select``: the ``n - 1`` most important earlier blocks (importance = the block branch's attention
  scores) plus the block holding ``t``, attended at full resolution: fine "intra-block variation".

``o_t = sum_b g_t^b * o_t^b`` with ``g_t = sigmoid(W x_t + b)`` per head and branch, initialised (as NSA
and its reference implementation do) so that the window branch dominates at the start of training.

Cost per head is ``O(L * (2w + L/l + n*l))`` scores; no ``[L, L]`` tensor is ever built in sparse mode:

* window: queries in chunks of ``w`` attend to their own + the previous key chunk, ``[B*L/w, H, w, 2w]``;
* block:  ``[B, H, L, L/l]``;
* select: NSA shares the selection across a group of queries; here the queries of one block of ``l``
  share it, ``[B*H, L/l, l, n*l]``. To stay causal the shared choice uses the importance seen by the
  block's *first* query (position ``c*l``), which every query of the block may see.

``attention="dense"`` is plain causal SDPA with key padding (the "dense instead of SAL" ablation).
All attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`; rows with nothing
to attend to get 0 explicitly rather than relying on the backend's convention.

Shapes: ``B`` batch, ``L`` length, ``H`` heads, ``dh`` head size, ``C`` window chunks, ``nq`` blocks
of the (padded) sequence, ``nb`` complete blocks, ``ns`` selected blocks per query block.
"""

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BRANCHES = ("window", "block", "select")
ATTENTION_MODES = ("sparse", "dense")
# Gate bias at init (weights start at zero): sigmoid(2) = 0.88 for the window, 0.12 for the others,
# as in lucidrains/native-sparse-attention-pytorch's combine layer.
GATE_INIT_BIAS = {"window": 2.0, "block": -2.0, "select": -2.0}
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


# ----- masks (True = may attend) ------------------------------------------------------------------


def causal_mask(length: int, device=None) -> torch.Tensor:
    """``[L, L]``: key ``j`` visible from query ``i`` iff ``j <= i`` (dense mode only)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def window_band_mask(window: int, device=None) -> torch.Tensor:
    """``[w, 2w]``: query ``i`` of a chunk sees key ``j`` of [previous chunk | own chunk] iff ``i < j <= i + w``.

    Key ``j`` sits ``i + w - j`` steps before query ``i``, so this is exactly ``t - w < s <= t``.
    """
    i = torch.arange(window, device=device)[:, None]
    j = torch.arange(2 * window, device=device)[None, :]
    return (j > i) & (j <= i + window)


def complete_block_mask(length: int, n_blocks: int, block_size: int, device=None) -> torch.Tensor:
    """``[L, nb]``: block ``k`` (items ``k*l .. k*l+l-1``) visible from query ``t`` iff it ends at or before ``t``."""
    t = torch.arange(length, device=device)[:, None]
    block_end = (torch.arange(n_blocks, device=device)[None, :] + 1) * block_size - 1
    return block_end <= t


def earlier_block_mask(n_query_blocks: int, n_blocks: int, device=None) -> torch.Tensor:
    """``[nq, nb]``: key block ``k`` is a selection candidate for query block ``c`` iff ``k < c``."""
    return torch.arange(n_blocks, device=device)[None, :] < torch.arange(n_query_blocks, device=device)[:, None]


def selected_slots_mask(block_size: int, n_slots: int, device=None) -> torch.Tensor:
    """``[l, ns*l]``: earlier selected blocks are fully visible; the last slot (own block) causally."""
    earlier = torch.ones(block_size, (n_slots - 1) * block_size, dtype=torch.bool, device=device)
    return torch.cat([earlier, causal_mask(block_size, device)], dim=1)


# ----- small helpers ------------------------------------------------------------------------------


def pad_length(x: torch.Tensor, length: int, front: int = 0) -> torch.Tensor:
    """Zero/False-pad dim 1 of ``[B, L, ...]`` to ``front + length`` (``front`` items before, the rest after)."""
    back = length - x.shape[1]
    if front == 0 and back == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (front, back))


class BranchGate(nn.Module):
    """``sigmoid(W x + b)`` per head and branch, ``[B, L, H, n_branches]``.

    Plain parameters rather than ``nn.Linear`` so that a model's ``_init_weights`` (RecBole re-draws every
    Linear and zeroes its bias) keeps the NSA initialisation: zero weights, window-favouring bias.
    """

    def __init__(self, hidden_size: int, n_heads: int, branches: Sequence[str]):
        super().__init__()
        self.n_heads, self.n_branches = n_heads, len(branches)
        self.weight = nn.Parameter(torch.zeros(n_heads * len(branches), hidden_size))
        self.bias = nn.Parameter(torch.tensor([GATE_INIT_BIAS[b] for b in branches]).repeat(n_heads))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.linear(hidden, self.weight, self.bias)).unflatten(-1, (self.n_heads, self.n_branches))


class BlockCompressor(nn.Module):
    """NSA's phi: one key (or value) per block of ``l`` per-head keys, ``[..., l, dh] -> [..., dh]``.

    A linear map of the flattened block, i.e. one ``dh x dh`` matrix per intra-block position; that is
    the learned intra-block position encoding (an additive position embedding followed by a mean and a
    Linear would collapse into a constant bias). Initialised to mean pooling; plain parameters so a
    model's Linear re-initialisation leaves it alone. Shared by all heads.
    """

    def __init__(self, block_size: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(1, block_size) / block_size)  # [dh, l*dh]
        self.bias = nn.Parameter(torch.zeros(head_dim))

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        return F.linear(blocks.flatten(-2), self.weight, self.bias)


# ----- the layer ----------------------------------------------------------------------------------


class SparseAttentionAlignment(nn.Module):
    """Causal multi-head attention with window / block-compressed / selected-block branches.

    ``forward(hidden [B, L, d], key_padding_mask [B, L] bool, True = real item) -> [B, L, d]``, output
    projection included. Left- and right-padded sequences both work; padded keys are never attended and
    padded queries get finite outputs. ``gate_override={"window": 1.0, ...}`` replaces the learned gates
    by constants (used to check that window-only SAL with ``w >= L`` equals dense causal attention).
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        window_size: int = 32,
        block_size: int = 16,
        top_blocks: int = 4,
        attn_dropout: float = 0.0,
        attention: str = "sparse",
        branches: Sequence[str] = BRANCHES,
    ):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of n_heads {n_heads}")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        requested = set(branches)
        if attention == "sparse" and (not requested or requested - set(BRANCHES)):
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {branches!r}")
        branches = tuple(b for b in BRANCHES if b in requested)  # canonical order
        if min(window_size, block_size, top_blocks) < 1:
            raise ValueError("window_size, block_size and top_blocks must be >= 1")
        self.hidden_size, self.n_heads, self.head_dim = hidden_size, n_heads, hidden_size // n_heads
        self.window_size, self.block_size, self.top_blocks = window_size, block_size, top_blocks
        self.attn_dropout, self.attention = attn_dropout, attention
        self.branches = branches if attention == "sparse" else ()

        # Key/value projections: one per branch; "select" ranks blocks with the block branch's keys.
        if attention == "dense":
            kv_names = ("dense",)
        else:
            kv_names = tuple(b for b in BRANCHES if b in branches or (b == "block" and "select" in branches))
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key_value = nn.ModuleDict({name: nn.Linear(hidden_size, 2 * hidden_size) for name in kv_names})
        if "block" in kv_names:
            self.compress_key = BlockCompressor(block_size, self.head_dim)
            self.compress_value = BlockCompressor(block_size, self.head_dim)
        if self.branches:
            self.gate = BranchGate(hidden_size, n_heads, self.branches)
        self.out = nn.Linear(hidden_size, hidden_size)

    # ----- projections and the shared attention call ----------------------------------------------

    def _project(self, hidden: torch.Tensor):
        """One matmul for the query and every key/value: ``q [B, L, H, dh]``, ``{name: (k, v)}``."""
        names = list(self.key_value)
        weight = torch.cat([self.query.weight] + [self.key_value[n].weight for n in names])
        bias = torch.cat([self.query.bias] + [self.key_value[n].bias for n in names])
        projected = F.linear(hidden, weight, bias)  # [B, L, (1 + 2*n_kv) * d]
        parts = projected.unflatten(-1, (1 + 2 * len(names), self.n_heads, self.head_dim)).unbind(2)  # [B, L, H, dh] each
        return parts[0], {n: (parts[1 + 2 * i], parts[2 + 2 * i]) for i, n in enumerate(names)}

    def _attend(self, q, k, v, visible):
        """SDPA with a boolean mask; query rows that see no key return exactly 0 (never NaN, on any backend).

        Such rows are let to attend everywhere (finite maths, finite gradients) and then zeroed.
        """
        empty = ~visible.any(-1, keepdim=True)
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible | empty, dropout_p=dropout)
        return out.masked_fill(empty, 0.0)

    # ----- dense ablation -----------------------------------------------------------------------------

    def _dense(self, q, k, v, real: Optional[torch.Tensor]) -> torch.Tensor:
        """Plain causal SDPA, ``[B, L, H, dh]``."""
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, L, dh]
        if real is None:
            dropout = self.attn_dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            visible = causal_mask(q.shape[2], q.device) & real[:, None, None, :]  # [B, 1, L, L]
            out = self._attend(q, k, v, visible)
        return out.transpose(1, 2)

    # ----- sparse branches ----------------------------------------------------------------------------

    def _window(self, q, k, v, real) -> torch.Tensor:
        """Keys in ``(t - w, t]``: query chunks of ``w`` against [previous | own] key chunk. ``[B, L, H, dh]``."""
        batch, length, heads, dim = q.shape
        w = min(self.window_size, length)  # w >= L is plain causal attention
        n_chunks = -(-length // w)
        padded = n_chunks * w
        q = pad_length(q, padded).view(batch, n_chunks, w, heads, dim).transpose(2, 3)  # [B, C, H, w, dh]

        def key_chunks(x):  # [B, L, H, dh] -> [B*C, H, 2w, dh], one zero chunk in front
            x = pad_length(x, padded, front=w).unfold(1, 2 * w, w)  # [B, C, H, dh, 2w]
            return x.transpose(-1, -2).reshape(batch * n_chunks, heads, 2 * w, dim)

        key_real = pad_length(real, padded, front=w).unfold(1, 2 * w, w)  # [B, C, 2w]
        visible = window_band_mask(w, q.device) & key_real[:, :, None, :]  # [B, C, w, 2w]
        out = self._attend(
            q.reshape(batch * n_chunks, heads, w, dim), key_chunks(k), key_chunks(v),
            visible.view(batch * n_chunks, 1, w, 2 * w),
        )  # [B*C, H, w, dh]
        return out.view(batch, n_chunks, heads, w, dim).transpose(2, 3).reshape(batch, padded, heads, dim)[:, :length]

    def _compress(self, k, v, real):
        """Per-head compressed keys/values of the complete blocks, ``[B, H, nb, dh]`` each, and ``valid [B, nb]``.

        Padded items are zeroed first so they cannot leak into a partly padded (left-padded) block; a
        block counts if it holds at least one real item.
        """
        batch, length, heads, dim = k.shape
        n_blocks = length // self.block_size
        used = n_blocks * self.block_size
        keep = real[:, :used, None, None]

        def blocks(x):  # [B, L, H, dh] -> [B, H, nb, l, dh]
            return (x[:, :used] * keep).view(batch, n_blocks, self.block_size, heads, dim).permute(0, 3, 1, 2, 4)

        valid = real[:, :used].view(batch, n_blocks, self.block_size).any(-1)
        return self.compress_key(blocks(k)), self.compress_value(blocks(v)), valid

    def _block_importance(self, q, k_cmp, valid):
        """Selection scores ``[B, H, nq, nb]`` of earlier blocks, seen by each query block's first query.

        Top-k of the block branch's softmax equals top-k of its logits, so the logits are returned,
        with ``-inf`` for blocks that are not candidates (later, current or all-padding blocks).
        """
        first = q[:, :: self.block_size].transpose(1, 2)  # [B, H, nq, dh]
        scores = first @ k_cmp.transpose(-1, -2)  # [B, H, nq, nb]
        candidate = earlier_block_mask(first.shape[2], k_cmp.shape[2], q.device) & valid[:, None, None, :]
        return scores.masked_fill(~candidate, float("-inf"))

    def _block(self, q, k_cmp, v_cmp, valid) -> torch.Tensor:
        """Attention over compressed complete blocks, ``[B, L, H, dh]`` (0 before the first complete block)."""
        length = q.shape[1]
        if k_cmp.shape[2] == 0:  # L < l: no block is ever complete
            return torch.zeros_like(q)
        visible = complete_block_mask(length, k_cmp.shape[2], self.block_size, q.device) & valid[:, None, None, :]
        return self._attend(q.transpose(1, 2), k_cmp, v_cmp, visible).transpose(1, 2)  # visible [B, 1, L, nb]

    def _select(self, q, k, v, real, importance: Optional[torch.Tensor]) -> torch.Tensor:
        """Full-resolution attention to the selected earlier blocks + the own block (causally). ``[B, L, H, dh]``."""
        batch, length, heads, dim = q.shape
        size = self.block_size
        n_query_blocks = -(-length // size)
        padded = n_query_blocks * size
        own = torch.arange(n_query_blocks, device=q.device).expand(batch, heads, n_query_blocks)[..., None]
        n_pick = 0 if importance is None else min(self.top_blocks - 1, importance.shape[-1])
        if n_pick > 0:
            with torch.no_grad():
                top, picked = importance.topk(n_pick, dim=-1)  # [B, H, nq, n-1]
            slots = torch.cat([picked, own], -1)
            slot_ok = torch.cat([top > float("-inf"), torch.ones_like(own, dtype=torch.bool)], -1)
        else:
            slots, slot_ok = own, torch.ones_like(own, dtype=torch.bool)
        n_slots = slots.shape[-1]  # [B, H, nq, ns]

        def gathered(x):  # [B, L, H, dh] -> [B*H, nq, ns*l, dh], the items of each query block's slots
            x = pad_length(x, padded).view(batch, n_query_blocks, size, heads, dim).permute(0, 3, 1, 2, 4)
            rows = (torch.arange(batch * heads, device=x.device).view(batch, heads, 1, 1) * n_query_blocks + slots).flatten()
            return x.reshape(-1, size * dim).index_select(0, rows).view(batch * heads, n_query_blocks, n_slots * size, dim)

        item_real = pad_length(real, padded).view(batch, n_query_blocks, size)
        key_real = item_real[torch.arange(batch, device=q.device).view(batch, 1, 1, 1), slots]  # [B, H, nq, ns, l]
        key_ok = (key_real & slot_ok[..., None]).view(batch * heads, n_query_blocks, 1, n_slots * size)
        visible = key_ok & selected_slots_mask(size, n_slots, q.device)  # [B*H, nq, l, ns*l]
        queries = pad_length(q, padded).view(batch, n_query_blocks, size, heads, dim).permute(0, 3, 1, 2, 4)
        out = self._attend(queries.reshape(batch * heads, n_query_blocks, size, dim), gathered(k), gathered(v), visible)
        return out.view(batch, heads, padded, dim).transpose(1, 2)[:, :length]

    def _sparse(self, hidden, q, kv: Dict[str, tuple], real, gate_override) -> torch.Tensor:
        """Gated sum of the branches, ``[B, L, H, dh]``."""
        outputs = {}
        if "window" in self.branches:
            outputs["window"] = self._window(q, *kv["window"], real)
        importance = None
        if "block" in kv:
            k_cmp, v_cmp, valid = self._compress(*kv["block"], real)
            if "block" in self.branches:
                outputs["block"] = self._block(q, k_cmp, v_cmp, valid)
            if "select" in self.branches and k_cmp.shape[2] > 0:
                with torch.no_grad():
                    importance = self._block_importance(q, k_cmp, valid)
        if "select" in self.branches:
            outputs["select"] = self._select(q, *kv["select"], real, importance)
        gates = self.gate(hidden)  # [B, L, H, n_branches]
        combined = 0
        for i, branch in enumerate(self.branches):
            gate = gates[..., i, None]
            if gate_override and branch in gate_override:
                gate = torch.full_like(gate, float(gate_override[branch]))
            combined = combined + gate * outputs[branch]
        return combined

    def forward(self, hidden: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                gate_override: Optional[Dict[str, float]] = None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        real = None if key_padding_mask is None else key_padding_mask.bool()
        q, kv = self._project(hidden)
        if self.attention == "dense":
            context = self._dense(q, *kv["dense"], real)
        else:
            if real is None:
                real = torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
            context = self._sparse(hidden, q, kv, real, gate_override)
        return self.out(context.reshape(batch, length, self.hidden_size))


# ----- encoder stack ------------------------------------------------------------------------------


class SparseTransformerLayer(nn.Module):
    """Post-norm block like RecBole's TransformerLayer: SAL -> dropout -> residual -> LayerNorm -> FFN -> residual -> LayerNorm."""

    def __init__(self, hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout, hidden_act, layer_norm_eps,
                 window_size, block_size, top_blocks, attention, branches):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {hidden_act!r}")
        self.attention = SparseAttentionAlignment(
            hidden_size, n_heads, window_size, block_size, top_blocks, attn_dropout, attention, branches
        )
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.inner = nn.Linear(hidden_size, inner_size)
        self.outer = nn.Linear(inner_size, hidden_size)
        self.activation = ACTIVATIONS[hidden_act]
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout)

    def forward(self, hidden, key_padding_mask=None):
        hidden = self.attention_norm(hidden + self.dropout(self.attention(hidden, key_padding_mask)))
        return self.ffn_norm(hidden + self.dropout(self.outer(self.activation(self.inner(hidden)))))


class SparseTransformerEncoder(nn.Module):
    """``n_layers`` SAL transformer blocks; ``forward(hidden [B, L, d], key_padding_mask [B, L]) -> [B, L, d]``."""

    def __init__(self, n_layers=2, hidden_size=64, n_heads=2, inner_size=256, hidden_dropout=0.5, attn_dropout=0.5,
                 hidden_act="gelu", layer_norm_eps=1e-12, window_size=32, block_size=16, top_blocks=4,
                 attention="sparse", branches=BRANCHES):
        super().__init__()
        self.layers = nn.ModuleList(
            SparseTransformerLayer(hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout, hidden_act,
                                   layer_norm_eps, window_size, block_size, top_blocks, attention, branches)
            for _ in range(n_layers)
        )

    def forward(self, hidden, key_padding_mask=None):
        for layer in self.layers:
            hidden = layer(hidden, key_padding_mask)
        return hidden
