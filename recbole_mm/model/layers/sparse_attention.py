"""Sparse Attention Alignment Layer (SAL) of MUFASA (arXiv 2508.09664), shaped like NSA (arXiv 2502.11089).

Causal multi-head attention where every query ``t`` combines three branches, each with its own key/value
projection (NSA keeps them separate so a branch cannot take shortcuts through another's keys):

* ``window``: the last ``w`` items, keys in ``(t - w, t]``: local context.
* ``block``:  one compressed key/value per *complete* block of ``l`` items that ends at or before ``t``:
  coarse, sequence-wide "interest block evolution".
* ``select``: the ``n - 1`` most important earlier blocks (importance = the block branch's attention
  probabilities) plus the block holding ``t``, attended at full resolution: fine "intra-block variation".
  With ``select_outside_window`` (default) only blocks wholly outside the window are candidates, so
  the ``n - 1`` slots reach beyond what the window already shows. NSA instead always keeps the first
  block and the local blocks in its selection; here the window branch shows the local items and the
  own block is always selected, and an old first block has no special role in a user history.
  The selector is trained in every configuration: by the block branch when it is on, and always by
  a straight-through value gate in the selected branch (see ``SparseAttentionAlignment._select``).

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
    """``[L, L]``: key ``j`` visible from query ``i`` iff ``j <= i`` (dense mode, and inside a block)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def window_band_mask(block_size: int, window: int, device=None) -> torch.Tensor:
    """``[l, w+l]``: query ``i`` of a block sees key ``j`` of its window (items ``c*l-w .. c*l+l-1``) iff ``i < j <= i+w``.

    Key ``j`` is ``i + w - j`` steps before query ``i``, so this is exactly ``t - w < s <= t``.
    """
    i = torch.arange(block_size, device=device)[:, None]
    j = torch.arange(window + block_size, device=device)[None, :]
    return (j > i) & (j <= i + window)


def same_row_mask(n_blocks: int, block_size: int, window: int, device=None) -> torch.Tensor:
    """``[nq, w+l]``: window key ``j`` of query block ``c`` lies in the same sequence (position ``c*l-w+j >= 0``).

    The batch is flattened, so the first windows of a row reach back into the previous row.
    """
    position = torch.arange(n_blocks, device=device)[:, None] * block_size - window
    return position + torch.arange(window + block_size, device=device)[None, :] >= 0


def complete_block_mask(length: int, n_blocks: int, block_size: int, device=None) -> torch.Tensor:
    """``[L, nb]``: block ``k`` (items ``k*l .. k*l+l-1``) visible from query ``t`` iff it ends at or before ``t``."""
    t = torch.arange(length, device=device)[:, None]
    block_end = (torch.arange(n_blocks, device=device)[None, :] + 1) * block_size - 1
    return block_end <= t


def candidate_block_mask(n_blocks: int, block_size: int, window: int = 0, device=None) -> torch.Tensor:
    """``[nq, nq]``: key block ``k`` is a selection candidate for query block ``c``.

    ``window = 0``: every earlier block, ``k < c``. ``window = w``: only blocks that end at or before
    ``c*l - w``, i.e. outside the window of every query of block ``c`` (the first query's window,
    ``(c*l - w, c*l]``, reaches furthest back), so the selected slots never repeat what the window shows.
    """
    blocks = torch.arange(n_blocks, device=device)
    block_end = (blocks[None, :] + 1) * block_size - 1
    return (block_end <= blocks[:, None] * block_size - window) & (blocks[None, :] < blocks[:, None])


def selected_slots_mask(block_size: int, n_slots: int, device=None) -> torch.Tensor:
    """``[l, ns*l]``: earlier selected blocks are fully visible; the last slot (own block) causally."""
    earlier = torch.ones(block_size, (n_slots - 1) * block_size, dtype=torch.bool, device=device)
    return torch.cat([earlier, causal_mask(block_size, device)], dim=1)


# ----- layout -------------------------------------------------------------------------------------


def pad_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero/False-pad dim 1 of ``[B, L, ...]`` to ``length``."""
    if x.shape[1] == length:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, length - x.shape[1]))


class BlockLayout:
    """The batch as blocks: rows padded to ``nq`` whole blocks of ``l``, flattened to ``M = B*nq*l`` items.

    Flat block ``m`` is block ``m % nq`` of row ``m // nq``, so every branch works on views of
    ``[M, ...]`` tensors: query blocks and selectable blocks are a ``view``; windows an ``unfold`` of the
    flat items with ``w`` zero items put in front (the first window of the first row looks back ``w``).
    """

    def __init__(self, batch: int, length: int, block_size: int, window: int):
        self.batch, self.length, self.size = batch, length, block_size
        self.n_blocks = -(-length // block_size)  # nq
        self.padded = self.n_blocks * block_size  # items per row
        self.window = min(window, length)  # a window >= L is plain causal attention

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...] -> [M, ...]``, zero/False in the padding."""
        return pad_length(x, self.padded).flatten(0, 1)

    def with_front(self, flat: torch.Tensor) -> torch.Tensor:
        """``[M, ...] -> [w + M, ...]``: ``w`` zero/False items in front, for :meth:`windows`."""
        return torch.cat([flat.new_zeros((self.window, *flat.shape[1:])), flat])

    def windows(self, fronted: torch.Tensor) -> torch.Tensor:
        """``[w + M, ...] -> [B*nq, ..., w+l]``: items ``c*l-w .. c*l+l-1`` of every query block (a view)."""
        return fronted.unfold(0, self.window + self.size, self.size)

    def block_index(self, slots: torch.Tensor) -> torch.Tensor:
        """Block numbers ``[B, nq, ns]`` within a row -> flat block numbers ``b*nq + slot``."""
        return torch.arange(self.batch, device=slots.device)[:, None, None] * self.n_blocks + slots


# ----- parameterised parts ------------------------------------------------------------------------


class BranchGate(nn.Module):
    """``sigmoid(W x + b)`` per head and branch, ``[..., H, n_branches]``.

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
    """NSA's phi, ``[..., l, d] -> [..., d]``: a position-weighted mean of each block of ``l`` hidden states.

    ``sum_p a_p * x_p`` with one learned weight per intra-block position and channel (``a`` starts at
    ``1/l``: mean pooling); the block's key and value then come from the branch's own Linear. Pooling
    before projecting costs ``1/l`` of a per-item projection. Weights rather than an additive position
    embedding, which would become a constant under the mean. Plain parameters, so a model's Linear
    re-initialisation leaves the mean-pool start alone.
    """

    def __init__(self, block_size: int, hidden_size: int):
        super().__init__()
        self.position_weight = nn.Parameter(torch.full((block_size, hidden_size), 1.0 / block_size))

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        return (blocks * self.position_weight).sum(-2)


class GatedSum(torch.autograd.Function):
    """``sum_b gates[..., b, None] * outputs[b]``: gates ``[..., H, n_branches]``, outputs ``[..., H, dh]`` each.

    The same maths as autograd on ``g * o + ...``, without its per-branch temporaries: a memory-bound step
    that otherwise costs as much as a branch's attention on CPU.
    """

    @staticmethod
    def forward(ctx, gates, *outputs):
        ctx.save_for_backward(gates, *outputs)
        total = outputs[0] * gates[..., 0, None]
        for i, out in enumerate(outputs[1:], 1):
            total.addcmul_(out, gates[..., i, None])
        return total

    @staticmethod
    def backward(ctx, grad):
        gates, *outputs = ctx.saved_tensors
        grad_gates = None
        if ctx.needs_input_grad[0]:
            grad_gates = torch.stack([torch.linalg.vecdot(grad, out) for out in outputs], -1)
        grad_outputs = [grad * gates[..., i, None] if ctx.needs_input_grad[i + 1] else None for i in range(len(outputs))]
        return (grad_gates, *grad_outputs)


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
        select_outside_window: bool = True,
    ):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of n_heads {n_heads}")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        requested = set(branches)
        if attention == "sparse" and (not requested or requested - set(BRANCHES)):
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {branches!r}")
        if min(window_size, block_size, top_blocks) < 1:
            raise ValueError("window_size, block_size and top_blocks must be >= 1")
        self.hidden_size, self.n_heads, self.head_dim = hidden_size, n_heads, hidden_size // n_heads
        self.window_size, self.block_size, self.top_blocks = window_size, block_size, top_blocks
        self.attn_dropout, self.attention = attn_dropout, attention
        self.select_outside_window = bool(select_outside_window)
        self.branches = tuple(b for b in BRANCHES if b in requested) if attention == "sparse" else ()

        # Key/value projections: one per branch; "select" ranks blocks with the block branch's keys.
        if attention == "dense":
            kv_names = ("dense",)
        else:
            kv_names = tuple(b for b in BRANCHES if b in self.branches or (b == "block" and "select" in self.branches))
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key_value = nn.ModuleDict({name: nn.Linear(hidden_size, 2 * hidden_size) for name in kv_names})
        if "block" in kv_names:
            self.compress = BlockCompressor(block_size, hidden_size)
        if self.branches:
            self.gate = BranchGate(hidden_size, n_heads, self.branches)
        self.out = nn.Linear(hidden_size, hidden_size)

    # ----- projections and the shared attention call ----------------------------------------------

    def _heads(self, hidden, weight, bias) -> torch.Tensor:
        """``Linear`` then split into heads: ``[..., d] -> [..., H, dh]`` (contiguous)."""
        return F.linear(hidden, weight, bias).unflatten(-1, (self.n_heads, self.head_dim))

    def _key_value(self, name: str, hidden: torch.Tensor):
        """The branch's keys and values ``[..., H, dh]``, as two matmuls so each is its own contiguous tensor
        (gathers and unfolds read contiguous memory; backward needs no re-stacking of a fused output)."""
        linear, d = self.key_value[name], self.hidden_size
        return self._heads(hidden, linear.weight[:d], linear.bias[:d]), self._heads(hidden, linear.weight[d:], linear.bias[d:])

    def _attend(self, q, k, v, visible):
        """SDPA with a boolean mask; also returns ``seen [..., Lq, 1]``: whether a query row sees any key.

        Rows that see nothing attend to every key instead (finite maths and gradients on any backend);
        the caller zeroes them, for the sparse branches through the (much smaller) gate.
        """
        seen = visible.any(-1, keepdim=True)
        dropout = self.attn_dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible | ~seen, dropout_p=dropout), seen

    # ----- dense ablation -----------------------------------------------------------------------------

    def _dense(self, hidden, real: Optional[torch.Tensor]) -> torch.Tensor:
        """Plain causal SDPA, ``[B, L, d]`` before the output projection."""
        q = self._heads(hidden, self.query.weight, self.query.bias)
        q, k, v = (x.transpose(1, 2) for x in (q, *self._key_value("dense", hidden)))  # [B, H, L, dh]
        if real is None:
            dropout = self.attn_dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            visible = causal_mask(q.shape[2], q.device) & real[:, None, None, :]  # [B, 1, L, L]
            out, seen = self._attend(q, k, v, visible)
            out = out.masked_fill(~seen, 0.0)
        return out.transpose(1, 2).flatten(2)

    # ----- sparse branches (flat block layout, see BlockLayout) ---------------------------------------
    # Each returns (out [B*nq, H, l, dh] or [B, H, nq*l, dh], seen [..., l or nq*l, 1]).

    def _window(self, layout: BlockLayout, q_blocks, hidden, real):
        """Keys in ``(t - w, t]``: each query block against the ``w + l`` items ending with it."""
        n_keys = layout.window + layout.size
        keys, values = (layout.windows(x).transpose(-1, -2) for x in self._key_value("window", layout.with_front(hidden)))
        key_real = layout.windows(layout.with_front(real)).view(layout.batch, layout.n_blocks, n_keys)
        key_ok = key_real & same_row_mask(layout.n_blocks, layout.size, layout.window, real.device)
        visible = key_ok.view(-1, 1, 1, n_keys) & window_band_mask(layout.size, layout.window, real.device)
        return self._attend(q_blocks, keys, values, visible)  # keys [B*nq, H, w+l, dh], visible [B*nq, 1, l, w+l]

    def _compress(self, layout: BlockLayout, hidden, real):
        """Keys/values of every block, ``[B, nq, H, dh]`` each, and ``valid [B, nq]``.

        Padded items are zeroed first so they cannot leak into a partly padded (left-padded) block; a
        block counts if it holds at least one real item. Only blocks complete at ``t`` are ever shown
        to query ``t``, so the last, possibly partial, block of a row is never used early.
        """
        real_blocks = real.view(layout.batch, layout.n_blocks, layout.size)
        blocks = hidden.view(layout.batch, layout.n_blocks, layout.size, -1) * real_blocks[..., None]
        k_cmp, v_cmp = self._key_value("block", self.compress(blocks))  # pooled [B, nq, d]
        return k_cmp, v_cmp, real_blocks.any(-1)

    def _block(self, layout: BlockLayout, q_rows, k_cmp, v_cmp, valid):
        """Attention over compressed complete blocks (rows before the first complete block see nothing)."""
        visible = complete_block_mask(layout.padded, layout.n_blocks, layout.size, q_rows.device)
        visible = visible & valid[:, None, None, :]  # [B, 1, nq*l, nq]
        return self._attend(q_rows, k_cmp.transpose(1, 2), v_cmp.transpose(1, 2), visible)

    def _importance(self, layout: BlockLayout, q_first, k_cmp, valid) -> torch.Tensor:
        """Block importance ``[B, nq, nq]`` for selection; ``-1`` marks non-candidates.

        The block branch's attention probabilities at each query block's *first* query (the latest
        position all the block's queries may depend on) over the candidate blocks, summed over heads:
        NSA sums them over the heads sharing a selection, here all heads share one. Candidates are the
        earlier blocks, or with ``select_outside_window`` those outside the window (see
        :func:`candidate_block_mask`). Differentiable: :meth:`_select` passes a gradient back to it.
        """
        scores = torch.einsum("bchd,bkhd->bhck", q_first, k_cmp) / math.sqrt(self.head_dim)  # [B, H, nq, nq]
        reach = layout.window if self.select_outside_window else 0
        candidate = candidate_block_mask(layout.n_blocks, layout.size, reach, q_first.device) & valid[:, None, :]
        probs = torch.softmax(scores.masked_fill(~candidate[:, None], float("-inf")), -1).nan_to_num(0.0)
        return probs.sum(1).masked_fill(~candidate, -1.0)

    def _choose(self, layout: BlockLayout, importance: Optional[torch.Tensor], device):
        """Slots ``[B, nq, ns]`` (block numbers: the top ``n-1`` candidates, then the own block), whether
        each slot holds a candidate, and the straight-through gate offset ``[B, nq, ns]`` (None without grad)."""
        own = torch.arange(layout.n_blocks, device=device).expand(layout.batch, layout.n_blocks)[..., None]
        n_pick = 0 if importance is None else min(self.top_blocks - 1, layout.n_blocks - 1)
        if n_pick == 0:
            return own, torch.ones_like(own, dtype=torch.bool), None
        top, picked = importance.topk(n_pick, dim=-1)  # [B, nq, n-1]
        slots = torch.cat([picked, own], -1)
        slot_ok = torch.cat([top >= 0, torch.ones_like(own, dtype=torch.bool)], -1)
        bias = torch.cat([top - top.detach(), torch.zeros_like(own, dtype=top.dtype)], -1) if top.requires_grad else None
        return slots, slot_ok, bias

    @torch.no_grad()
    def selected_blocks(self, hidden: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Blocks each query block attends to in the selected branch, ``[B, nq, ns]``, -1 = empty slot
        (the last slot is the own block). For inspection and tests; needs the ``select`` branch."""
        if "select" not in self.branches:
            raise ValueError("selected_blocks needs the 'select' branch")
        batch, length, _ = hidden.shape
        real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if key_padding_mask is None else key_padding_mask.bool()
        layout = BlockLayout(batch, length, self.block_size, self.window_size if "window" in self.branches else 0)
        flat_hidden, flat_real = layout.flatten(hidden), layout.flatten(real)
        q = self._heads(flat_hidden, self.query.weight, self.query.bias).view(batch, layout.n_blocks, layout.size, self.n_heads, -1)
        k_cmp, _, valid = self._compress(layout, flat_hidden, flat_real)
        slots, slot_ok, _ = self._choose(layout, self._importance(layout, q[:, :, 0], k_cmp, valid), hidden.device)
        return slots.masked_fill(~slot_ok, -1)

    def _select(self, layout: BlockLayout, q_blocks, hidden, real, importance: Optional[torch.Tensor]):
        """Full-resolution attention to the top blocks + the own block (causally).

        Top-k has no gradient, so the selector (block keys, compressor, queries) would learn only
        through the block branch, and not at all without it. A straight-through gate trains it in
        every configuration: each selected block's values are scaled by ``1 + p - stop_grad(p)``
        (``p`` its importance), exactly 1 in value (outputs are unchanged) with the gradient of a
        per-block value gate, so a block whose items move the output the way the loss wants gets
        its importance raised (the softmax over candidates supplies the baseline). Scaling values
        rather than biasing scores keeps the attention on SDPA's fused kernel, which has no
        gradient for a mask.
        """
        batch, n_blocks, size = layout.batch, layout.n_blocks, layout.size
        slots, slot_ok, bias = self._choose(layout, importance, real.device)
        n_slots = slots.shape[-1]
        index = layout.block_index(slots)  # [B, nq, ns]

        def gathered(x):  # [M, H, dh] -> [B*nq, H, ns*l, dh], rows of a contiguous [M/l, l*d] view
            picked_items = x.view(-1, size * self.hidden_size)[index]  # [B, nq, ns, l*d]
            return picked_items.view(batch * n_blocks, n_slots * size, *x.shape[1:]).transpose(1, 2)

        keys, values = (gathered(x) for x in self._key_value("select", hidden))
        if bias is not None:  # [B, nq, ns] -> [B*nq, 1, ns*l, 1]
            values = values * (1.0 + bias)[..., None].expand(-1, -1, -1, size).reshape(-1, 1, n_slots * size, 1)
        key_ok = real.view(-1, size)[index] & slot_ok[..., None]  # [B, nq, ns, l]
        visible = key_ok.view(-1, 1, 1, n_slots * size) & selected_slots_mask(size, n_slots, real.device)
        return self._attend(q_blocks, keys, values, visible)  # visible [B*nq, 1, l, ns*l]

    def _sparse(self, hidden, real, gate_override) -> torch.Tensor:
        """Gated sum of the branches, ``[B, L, d]`` before the output projection."""
        batch, length, _ = hidden.shape
        window = self.window_size if "window" in self.branches else 0
        layout = BlockLayout(batch, length, self.block_size, window)
        blocked = (batch, layout.n_blocks, layout.size)
        flat_real, flat_hidden = layout.flatten(real), layout.flatten(hidden)  # [M], [M, d]
        q = self._heads(flat_hidden, self.query.weight, self.query.bias)  # [M, H, dh]
        q_blocks = q.view(-1, layout.size, self.n_heads, self.head_dim).transpose(1, 2)  # [B*nq, H, l, dh]
        outputs = {}
        if "window" in self.branches:
            outputs["window"] = self._window(layout, q_blocks, flat_hidden, flat_real)
        importance = None
        if "block" in self.key_value:
            k_cmp, v_cmp, valid = self._compress(layout, flat_hidden, flat_real)
            if "block" in self.branches:
                q_rows = q.view(batch, layout.padded, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, nq*l, dh]
                outputs["block"] = self._block(layout, q_rows, k_cmp, v_cmp, valid)
            if "select" in self.branches:
                importance = self._importance(layout, q.view(*blocked, self.n_heads, -1)[:, :, 0], k_cmp, valid)
        if "select" in self.branches:
            outputs["select"] = self._select(layout, q_blocks, flat_hidden, flat_real, importance)

        # combine in the SDPA outputs' memory layout [B, nq, l, H, dh]; unseen rows are zeroed via the gate
        gates = self.gate(flat_hidden).view(*blocked, self.n_heads, -1)  # [B, nq, l, H, n_branches]
        if gate_override:
            gates = torch.stack([
                torch.full_like(gates[..., i], float(gate_override[b])) if b in gate_override else gates[..., i]
                for i, b in enumerate(self.branches)
            ], -1)
        seen = torch.stack([outputs[b][1].reshape(*blocked, 1) for b in self.branches], -1)  # [B, nq, l, 1, n_br]
        branch_outputs = [outputs[b][0].transpose(-3, -2).reshape(*blocked, self.n_heads, -1) for b in self.branches]
        combined = GatedSum.apply(gates * seen, *branch_outputs)  # [B, nq, l, H, dh]
        return combined.reshape(batch, layout.padded, self.hidden_size)[:, :length]

    def forward(self, hidden: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                gate_override: Optional[Dict[str, float]] = None) -> torch.Tensor:
        real = None if key_padding_mask is None else key_padding_mask.bool()
        if self.attention == "dense":
            return self.out(self._dense(hidden, real))
        if real is None:
            real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return self.out(self._sparse(hidden, real, gate_override))


# ----- encoder stack ------------------------------------------------------------------------------


class SparseTransformerLayer(nn.Module):
    """Post-norm block like RecBole's TransformerLayer: SAL -> dropout -> residual -> LayerNorm -> FFN -> residual -> LayerNorm."""

    def __init__(self, hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout, hidden_act, layer_norm_eps,
                 window_size, block_size, top_blocks, attention, branches, select_outside_window=True):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {hidden_act!r}")
        self.attention = SparseAttentionAlignment(
            hidden_size, n_heads, window_size, block_size, top_blocks, attn_dropout, attention, branches,
            select_outside_window,
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
                 attention="sparse", branches=BRANCHES, select_outside_window=True):
        super().__init__()
        self.layers = nn.ModuleList(
            SparseTransformerLayer(hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout, hidden_act,
                                   layer_norm_eps, window_size, block_size, top_blocks, attention, branches,
                                   select_outside_window)
            for _ in range(n_layers)
        )

    def forward(self, hidden, key_padding_mask=None):
        for layer in self.layers:
            hidden = layer(hidden, key_padding_mask)
        return hidden
