"""SAL with its window and compressed-block branches as block-sparse ``flex_attention`` kernels.

:class:`FlexSparseAttention` is :class:`~recbole_mm.model.layers.sparse_attention.SparseAttentionAlignment`
(same parameters, same state dict, same outputs and gradients) where the two branches whose pattern is
a fixed band run through ``torch.nn.attention.flex_attention`` over whole rows, each with one
:class:`~torch.nn.attention.flex_attention.BlockMask`, instead of many small SDPA calls on copied span
pairs and ``[B, L, L/l]`` additive masks:

* window: query ``t`` sees real keys in ``(t - w, t]``;
* block: query ``t`` sees the compressed keys of the blocks that end at or before ``t`` and hold a real item.

The BlockMask lists, per tile of :data:`FLEX_TILE` queries, the key tiles that can hold a visible
pair (built from block-level arithmetic, never from an ``[L, L]`` tensor); inside them a ``mask_mod``
decides each pair. Rows that see nothing come out as 0, which is what the reference's gates give them.
DropKey draws the reference's random numbers in the reference's order and shapes (one draw per query
block of ``l`` and key), so with a seeded generator both paths drop the same keys. The selected-block
branch stays the reference's (gathered blocks, one SDPA call): its straight-through value gate scales
values per (query block, selected block) pair, which a ``score_mod`` cannot express with the same
gradient.

``flex_attention`` has a backward on CUDA only (torch 2.13 raises ``NotImplementedError`` on the CPU);
on the CPU the flex path runs forward only (eager), which the tests use to check it. It is a layer of
its own, which MUFASA does not use, because it does not pay at MUFASA's sizes: on an H200 (fp32, batch
32, 2 heads of 32) one SAL layer's fwd+bwd took 1.4-2.2x the reference's time from L = 128 to 4096, and
with the whole layer under ``torch.compile`` 0.84x at L = 1024 but 2.2x at L = 4096; there the window
kernel alone (w = 32) took 7 ms against 13 ms for fp32 causal SDPA over the whole row. fp32 on CUDA
cores is most of it (the same window kernel in bf16: 1.8 ms; with 64-item tiles 4.8 ms fp32, 1.4 ms bf16).
When ``L <= w`` the reference path runs (the window is then one causal SDPA call already).
"""

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from recbole_mm.model.layers.sparse_attention import (
    BlockLayout, PaddedBatch, SparseAttentionAlignment, SparsePlan, block_query_chunks, window_band_mask,
)

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - older torch: the reference path only
    BlockMask = flex_attention = None

FLEX_TILE = 128  # queries / keys per BlockMask tile (flex_attention's default sparse block size)
_COMPILED = {}  # branch -> compiled flex_attention (one per branch: each recompiles for new shapes and masks)


def flex_available() -> bool:
    """True when this torch has ``torch.nn.attention.flex_attention``."""
    return flex_attention is not None


def _flex(branch: str, q, k, v, block_mask):
    """``flex_attention`` compiled on CUDA (the fused kernel), eager elsewhere (a forward-only reference)."""
    if not q.is_cuda and torch.is_grad_enabled() and q.requires_grad:
        raise RuntimeError("FlexSparseAttention trains on CUDA only: flex_attention has no backward on the CPU "
                           "(use SparseAttentionAlignment, or use_flex=False)")
    if q.is_cuda:
        if branch not in _COMPILED:
            _COMPILED[branch] = torch.compile(flex_attention)
        return _COMPILED[branch](q, k, v, block_mask=block_mask)
    return flex_attention(q, k, v, block_mask=block_mask)


def _tiles(n: int) -> int:
    return -(-n // FLEX_TILE)


def tile_block_mask(visible_tiles: torch.Tensor, mask_mod, q_len: int, kv_len: int):
    """A BlockMask from tile-level visibility ``[B, nQT, nKT]`` (True = the tile pair may hold a visible
    pair); every listed tile is partial, so ``mask_mod`` decides each pair."""
    counts = visible_tiles.sum(-1, dtype=torch.int32)  # [B, nQT]
    order = visible_tiles.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)  # visible first
    return BlockMask.from_kv_blocks(counts[:, None], order[:, None], BLOCK_SIZE=FLEX_TILE, mask_mod=mask_mod,
                                    seq_lengths=(q_len, kv_len))


def _tile_any(flags: torch.Tensor, n_tiles: int) -> torch.Tensor:
    """``[B, n] -> [B, n_tiles]``: the tile holds a True (``n`` padded with False to whole tiles)."""
    return F.pad(flags, (0, n_tiles * FLEX_TILE - flags.shape[1])).view(flags.shape[0], n_tiles, FLEX_TILE).any(-1)


class FlexPlan(PaddedBatch):
    """A batch's layout, padding and BlockMasks for :class:`FlexSparseAttention` (shared by an encoder's layers).

    Carries what the reference branches read from a :class:`SparsePlan` (its :class:`PaddedBatch` part)
    plus ``window_seen`` / ``block_seen`` as ones: flex rows that see nothing are already 0. ``flex_len``
    is the rows' length rounded up to whole tiles; ``n_keys`` the compressed keys' length, likewise.
    """

    def __init__(self, real: torch.Tensor, block_size: int, window: int, select_reach: int, dtype=torch.float32):
        super().__init__(real, block_size, window, select_reach, dtype)
        layout = self.layout
        self.flex_len = _tiles(layout.padded) * FLEX_TILE
        self.n_keys = _tiles(layout.n_blocks) * FLEX_TILE
        self.real_rows = F.pad(self.padded, (0, self.flex_len - layout.padded))  # [B, flex_len]
        self.valid_keys = F.pad(self.valid, (0, self.n_keys - layout.n_blocks))  # [B, n_keys]
        ones = torch.ones(layout.batch * layout.padded, 1, dtype=dtype, device=real.device)
        self.window_seen = self.block_seen = ones
        self._masks = {}  # branch -> BlockMask without dropout

    def _branch_mask(self, branch, visible, visible_tiles, kv_len, kept, lost):
        """A branch's BlockMask: ``visible(b, h, q, kv)`` pairs (built once per plan), or with DropKey
        (``lost`` given) those also ``kept(b, q, kv)``, or all visible ones of the ``lost`` queries.
        ``visible_tiles`` is the plan's (cached) tile map of the branch."""
        if lost is None:
            if branch not in self._masks:
                self._masks[branch] = tile_block_mask(visible_tiles, visible, self.flex_len, kv_len)
            return self._masks[branch]

        def dropped(b, h, q, kv):
            return visible(b, h, q, kv) & (kept(b, q, kv) | lost[b, q])

        return tile_block_mask(visible_tiles, dropped, self.flex_len, kv_len)

    # ----- window: keys in (t - w, t] --------------------------------------------------------------------

    @functools.cached_property
    def window_visible_tiles(self) -> torch.Tensor:
        """``[B, nT, nT]``: key tile ``j`` can hold a key in the window of a query of tile ``i``."""
        n = _tiles(self.layout.padded)
        i = torch.arange(n, device=self.real.device)[:, None]
        j = torch.arange(n, device=self.real.device)[None, :]
        near = (j * FLEX_TILE <= (i + 1) * FLEX_TILE - 1) & ((j + 1) * FLEX_TILE - 1 > i * FLEX_TILE - self.layout.window)
        return near[None] & _tile_any(self.real_rows, n)[:, None, :]

    def window_mask(self, keep: Optional[torch.Tensor] = None):
        """The window's BlockMask; ``keep [B, nq, 2s]`` (DropKey, relative to each query's span pair) or None."""
        real, window, span, size = self.real_rows, self.layout.window, self.layout.span, self.layout.size

        def visible(b, h, q, kv):
            return (kv <= q) & (q - kv < window) & real[b, kv]

        def kept(b, q, kv):
            relative = (kv - (q // span - 1) * span).clamp(0, keep.shape[-1] - 1)
            return keep[b, (q // size).clamp(max=keep.shape[1] - 1), relative]

        lost = None if keep is None else self._window_lost(keep)
        return self._branch_mask("window", visible, self.window_visible_tiles, self.flex_len, kept, lost)

    @functools.cached_property
    def window_band_visible(self) -> torch.Tensor:
        """``[B, n_spans, s / l, l, 2s]``: the window keys each query sees, relative to its span pair."""
        layout = self.layout
        batch, span = layout.batch, layout.span
        spans = self.padded.view(batch, layout.n_spans, span)
        key_ok = torch.cat([F.pad(spans[:, :-1], (0, 0, 1, 0)), spans], -1)  # [B, n_spans, 2s]
        seen = key_ok[:, :, None, :] & window_band_mask(span, layout.window, key_ok.device)  # [B, n_spans, s, 2s]
        return seen.view(batch, layout.n_spans, span // layout.size, layout.size, 2 * span)

    def _window_lost(self, keep: torch.Tensor) -> torch.Tensor:
        """``[B, flex_len]``: queries whose every visible window key was dropped."""
        layout = self.layout
        batch, span = layout.batch, layout.span
        kept = keep.view(batch, layout.n_spans, span // layout.size, 1, 2 * span)
        seen = self.window_band_visible
        lost = (seen.any(-1) & ~(seen & kept).any(-1)).view(batch, layout.padded)  # they keep every key (as in _sdpa)
        return F.pad(lost, (0, self.flex_len - layout.padded))

    # ----- block: compressed keys of complete blocks -------------------------------------------------------

    @functools.cached_property
    def block_visible_tiles(self) -> torch.Tensor:
        """``[B, nT, nKT]``: compressed-key tile ``j`` holds a block complete at the last query of tile ``i``."""
        size = self.layout.size
        i = torch.arange(_tiles(self.layout.padded), device=self.real.device)[:, None]
        j = torch.arange(_tiles(self.layout.n_blocks), device=self.real.device)[None, :]
        early = (j * FLEX_TILE + 1) * size - 1 <= (i + 1) * FLEX_TILE - 1
        return early[None] & _tile_any(self.valid_keys, self.n_keys // FLEX_TILE)[:, None, :]

    def block_mask(self, keep: Optional[torch.Tensor] = None):
        """The block branch's BlockMask; ``keep [B, nq, nq]`` (DropKey per query block) or None."""
        valid, size = self.valid_keys, self.layout.size

        def visible(b, h, q, kv):
            return ((kv + 1) * size - 1 <= q) & valid[b, kv]

        def kept(b, q, kv):
            last = keep.shape[1] - 1
            return keep[b, (q // size).clamp(max=last), kv.clamp(max=last)]

        lost = None if keep is None else self._block_lost(keep)
        return self._branch_mask("block", visible, self.block_visible_tiles, self.n_keys, kept, lost)

    def _block_lost(self, keep: torch.Tensor) -> torch.Tensor:
        """``[B, flex_len]``: queries whose every visible compressed key was dropped. Query ``t`` of block
        ``c`` sees the prefix of ``(t + 1) // l`` blocks, so prefix counts of the kept valid blocks decide."""
        layout = self.layout
        batch, nq, size = layout.batch, layout.n_blocks, layout.size
        valid = self.valid[:, None, :]  # [B, 1, nq]
        kept = F.pad((keep & valid).cumsum(-1), (1, 0))  # [B, nq, nq + 1]: kept valid blocks among the first k
        seen = F.pad(valid.cumsum(-1), (1, 0)).expand(batch, nq, nq + 1)
        t = torch.arange(layout.padded, device=keep.device)
        prefix = ((t + 1) // size).view(1, nq, size).expand(batch, nq, size)  # [B, nq, l]
        lost = (seen.gather(-1, prefix) > 0) & (kept.gather(-1, prefix) == 0)
        return F.pad(lost.view(batch, layout.padded), (0, self.flex_len - layout.padded))


class FlexSparseAttention(SparseAttentionAlignment):
    """:class:`SparseAttentionAlignment` whose window and block branches run as ``flex_attention`` kernels
    (see the module docstring) when ``use_flex`` is True and ``L > w``; the reference path otherwise.
    """

    def __init__(self, *args, use_flex: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if use_flex and self.attn_dropout > 0 and self.dropout_type != "dropkey":
            raise ValueError("the flex path drops keys only (dropout_type='dropkey'), not probabilities")
        self.use_flex = use_flex

    def plan(self, real: torch.Tensor, dtype=torch.float32):
        window = self.window_size if "window" in self.branches else 0
        reach = self.window_size if self.select_outside_window else 0
        if not self.use_flex or not flex_available() or BlockLayout(*real.shape, self.block_size, window).dense_window:
            return SparsePlan(real, self.block_size, window, reach, dtype)
        return FlexPlan(real, self.block_size, window, reach, dtype)

    def _drops_keys(self) -> bool:
        return self.training and self.attn_dropout > 0

    def _run_flex(self, branch: str, plan: FlexPlan, q, key, value, kv_len: int, block_mask) -> torch.Tensor:
        """One branch through ``flex_attention`` over whole rows: ``[M, d]`` queries (keys/values ``[B, n, ...]``
        padded to ``kv_len``) -> ``[B, nq, l, H, dh]``."""
        layout = plan.layout

        def rows(x, length):  # -> [B, H, length, dh], zero-padded
            x = self._split_heads(x.reshape(layout.batch, -1, self.hidden_size)).transpose(1, 2)
            return F.pad(x, (0, 0, 0, length - x.shape[2]))

        out = _flex(branch, rows(q, plan.flex_len), rows(key, kv_len), rows(value, kv_len), block_mask)
        return out[:, :, :layout.padded].transpose(1, 2).reshape(layout.batch, layout.n_blocks, layout.size, self.n_heads, -1)

    def _window(self, plan, q, key, value):
        if not isinstance(plan, FlexPlan):
            return super()._window(plan, q, key, value)
        keep = None
        if self._drops_keys():  # the reference's draw: one per (span, query block in it, key of the span pair)
            layout = plan.layout
            drop = torch.rand(layout.batch * layout.n_spans, 1, layout.span // layout.size, 1, 2 * layout.span,
                              device=q.device) < self.attn_dropout
            keep = ~drop.view(layout.batch, layout.n_blocks, 2 * layout.span)
        return self._run_flex("window", plan, q, key, value, plan.flex_len, plan.window_mask(keep))

    def _block(self, plan, q, k_cmp, v_cmp):
        if not isinstance(plan, FlexPlan):
            return super()._block(plan, q, k_cmp, v_cmp)
        keep = None
        if self._drops_keys():  # the reference's draws: one per query chunk, in its order
            layout = plan.layout
            keep = torch.zeros(layout.batch, layout.n_blocks, layout.n_blocks, dtype=torch.bool, device=q.device)
            for start, stop, keys in block_query_chunks(layout):
                drop = torch.rand(layout.batch, 1, (stop - start) // layout.size, 1, keys, device=q.device) < self.attn_dropout
                keep[:, start // layout.size:stop // layout.size, :keys] = ~drop.view(layout.batch, -1, keys)
        return self._run_flex("block", plan, q, k_cmp, v_cmp, plan.n_keys, plan.block_mask(keep))
