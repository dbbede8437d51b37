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

Cost per head is ``O(L * (w + l + L/l + n*l))`` scores; no ``[L, L]`` tensor is ever built in sparse mode:

* window: spans of ``s = l * ceil(w / l)`` queries attend to their own and the previous span's items under
  a precomputed band mask, ``[B*L/s, H, s, 2s]`` (keys copied once as span pairs); when ``L <= w`` one
  causal SDPA call per row;
* block:  ``[B, H, L, L/l]``;
* select: NSA shares the selection across a group of queries; here the queries of one block of ``l``
  share it, ``[B*H, L/l, l, n*l]``. To stay causal the shared choice uses the importance seen by the
  block's *first* query (position ``c*l``), which every query of the block may see.

``attention="dense"`` is plain causal SDPA with key padding (the "dense instead of SAL" ablation).
All attention goes through :func:`torch.nn.functional.scaled_dot_product_attention` with additive masks
built once per batch (:class:`SparsePlan`, shared by an encoder's layers); rows with nothing to attend
to get 0 explicitly rather than relying on the backend's convention.

Shapes: ``B`` batch, ``L`` length, ``H`` heads, ``dh`` head size, ``s`` window span, ``nq`` blocks
of the (padded) sequence, ``nb`` complete blocks, ``ns`` selected blocks per query block.
"""

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BRANCHES = ("window", "block", "select")
ATTENTION_MODES = ("sparse", "dense")
DROPOUT_TYPES = ("dropkey", "probs")
# Gate bias at init (weights start at zero): sigmoid(2) = 0.88 for the window, 0.12 for the others,
# as in lucidrains/native-sparse-attention-pytorch's combine layer.
GATE_INIT_BIAS = {"window": 2.0, "block": -2.0, "select": -2.0}
# The block branch's queries run in up to BLOCK_CHUNKS chunks of at least CHUNK_BLOCKS blocks, each against only the
# blocks it may see (fewer scores; below that size an extra SDPA call costs more than it saves).
BLOCK_CHUNKS, CHUNK_BLOCKS = 4, 16
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


# ----- masks (True = may attend) ------------------------------------------------------------------


def causal_mask(length: int, device=None) -> torch.Tensor:
    """``[L, L]``: key ``j`` visible from query ``i`` iff ``j <= i`` (dense mode, and inside a block)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def window_band_mask(span: int, window: int, device=None) -> torch.Tensor:
    """``[s, 2s]``: query ``i`` of a span sees key ``j`` of its key pair (the previous span, then its own) iff
    ``i + s - w < j <= i + s``.

    Key ``j`` is ``i + s - j`` steps before query ``i``, so this is exactly ``t - w < s' <= t``.
    """
    i = torch.arange(span, device=device)[:, None] + span
    j = torch.arange(2 * span, device=device)[None, :]
    return (j <= i) & (j > i - window)


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


# ----- layout and the masks every layer shares -------------------------------------------------------


class BlockLayout:
    """The batch as blocks: rows padded to ``nq`` whole blocks of ``l``, flattened to ``M = B*nq*l`` items.

    Flat block ``m`` is block ``m % nq`` of row ``m // nq``, so every branch works on views of ``[M, ...]``
    tensors: query blocks and selectable blocks are a ``view``. The window branch groups queries into
    spans of ``s = l * ceil(w / l) >= w`` items (whole blocks); a span's window keys all lie in the span
    before it and its own, so rows are padded to whole spans (``P`` a multiple of ``s``). When ``L <= w``
    the window is the whole causal row (``dense_window``) and spans are single blocks.
    """

    def __init__(self, batch: int, length: int, block_size: int, window: int):
        self.batch, self.length, self.size = batch, length, block_size
        self.window = min(window, length)  # a window >= L is plain causal attention
        self.dense_window = 0 < window and length <= window
        self.span = block_size * -(-self.window // block_size) if window and not self.dense_window else block_size
        self.padded = self.span * -(-length // self.span)  # P, items per row
        self.n_blocks = self.padded // block_size  # nq
        self.n_spans = self.padded // self.span

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...] -> [M, ...]``, zero/False in the padding; a view when no padding is needed."""
        batch, length = x.shape[:2]
        if self.padded == length:
            return x.reshape(batch * length, *x.shape[2:])
        flat = x.new_zeros((batch * self.padded, *x.shape[2:]))
        flat.view(batch, self.padded, *x.shape[2:])[:, :length] = x
        return flat

    def span_pairs(self, flat: torch.Tensor) -> torch.Tensor:
        """``[M, ...] -> [B*n_spans, 2s, ...]``: each span's previous span (zeros for a row's first) then itself."""
        return SpanPairs.apply(flat.view(self.batch, self.n_spans, self.span, -1)).view(-1, 2 * self.span, *flat.shape[1:])

    def block_index(self, slots: torch.Tensor) -> torch.Tensor:
        """Block numbers ``[B, nq, ns]`` within a row -> flat block numbers ``b*nq + slot``."""
        return torch.arange(self.batch, device=slots.device)[:, None, None] * self.n_blocks + slots


def additive_mask(visible: torch.Tensor, dtype) -> tuple:
    """Boolean mask -> (SDPA's additive float mask, ``seen [..., Lq, 1]``: the row sees some key).

    Rows that see nothing attend to every key instead (finite maths and gradients on any backend); the
    caller zeroes them through the gates. Built once per batch: SDPA would convert a boolean mask on
    every call.
    """
    seen = visible.any(-1, keepdim=True)
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~(visible | ~seen), float("-inf")), seen


def block_query_chunks(layout: "BlockLayout") -> list:
    """The block branch's query chunks ``(start, stop, keys)``: at least CHUNK_BLOCKS blocks, at most
    BLOCK_CHUNKS of them, each against the compressed keys its last row may see."""
    nq, size = layout.n_blocks, layout.size
    chunks = max(1, min(BLOCK_CHUNKS, nq // CHUNK_BLOCKS))
    bounds = sorted({size * round(nq * i / chunks) for i in range(1, chunks)} - {0} | {layout.padded})
    return [(start, stop, max(1, min(nq, stop // size))) for start, stop in zip([0] + bounds[:-1], bounds)]


class PaddedBatch:
    """What every plan of a batch starts from: the layout, the padded realness ``[B, P]`` (and flat
    ``real [M]``), which blocks hold a real item ``valid [B, nq]``, and the selection candidates."""

    def __init__(self, real: torch.Tensor, block_size: int, window: int, select_reach: int, dtype=torch.float32):
        batch, length = real.shape
        self.layout = layout = BlockLayout(batch, length, block_size, window)
        nq, size = layout.n_blocks, layout.size
        self.padded = torch.zeros(batch, layout.padded, dtype=torch.bool, device=real.device)
        self.padded[:, :length] = real
        self.real = self.padded.view(-1)  # [M]
        self.valid = self.padded.view(batch, nq, size).any(-1)  # [B, nq]: the block holds a real item
        reach = min(select_reach, layout.window) if window else 0
        self.candidates = candidate_block_mask(nq, size, reach, real.device) & self.valid[:, None, :]  # [B, nq, nq]
        self.any_candidate = bool(self.candidates.any())  # False when L <= w + l: select sees its own block only
        self.dtype, self._own_block = dtype, None

    def own_block_mask(self) -> tuple:
        """``(mask [B*nq, 1, l, l], seen)`` of a selection that is the own block alone (built once, for all layers)."""
        if self._own_block is None:
            size = self.layout.size
            visible = self.real.view(-1, 1, 1, size) & causal_mask(size, self.real.device)
            self._own_block = additive_mask(visible, self.dtype)
        return self._own_block


class SparsePlan(PaddedBatch):
    """A batch's layout and the masks that depend only on padding, shared by every SAL layer of an encoder.

    Window mask ``[B*n_spans, 1, s, 2s]`` (or ``[B, 1, P, P]`` when ``dense_window``), block mask
    ``[B, 1, P, nq]`` (``P = nq*l``; ``[1, 1, P, nq]`` when no block of the batch is all padding; None
    when ``blocks`` is off), selection candidates ``[B, nq, nq]``, and per-item realness ``[M]``.
    """

    def __init__(self, real: torch.Tensor, block_size: int, window: int, select_reach: int, dtype=torch.float32,
                 blocks: bool = True):
        super().__init__(real, block_size, window, select_reach, dtype)
        layout, padded, device = self.layout, self.padded, real.device
        batch = layout.batch
        if window and layout.dense_window:
            visible = causal_mask(layout.padded, device) & padded[:, None, None, :]  # [B, 1, P, P]
            self.window_mask, self.window_seen = additive_mask(visible, dtype)
        elif window:
            span = layout.span
            spans = padded.view(batch, layout.n_spans, span)
            key_ok = torch.cat([F.pad(spans[:, :-1], (0, 0, 1, 0)), spans], -1)  # [B, n_spans, 2s]
            visible = key_ok.view(-1, 1, 1, 2 * span) & window_band_mask(span, layout.window, device)
            self.window_mask, self.window_seen = additive_mask(visible, dtype)
        self.block_seen = self.block_chunks = self.block_masks = None
        if blocks:  # the block branch's masks (``blocks=False``: no layer runs that branch)
            self._plan_blocks(layout, dtype)

    def _plan_blocks(self, layout: "BlockLayout", dtype) -> None:
        """Block mask and ``seen``: one ``[1, 1, P, nq]`` mask broadcast over the batch unless a block is all padding."""
        visible = complete_block_mask(layout.padded, layout.n_blocks, layout.size, self.padded.device)[None, None]
        if not bool(self.valid.all()):
            visible = visible & self.valid[:, None, None, :]  # [B, 1, P, nq]
        block_mask, seen = additive_mask(visible, dtype)
        self.block_seen = seen.expand(layout.batch, -1, -1, -1)
        self.block_chunks = block_query_chunks(layout)
        self.block_masks = [block_mask[:, :, start:stop, :keys].contiguous() for start, stop, keys in self.block_chunks]


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


class UniformDropout(nn.Module):
    """Inverted dropout, like ``nn.Dropout``: each element kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``.

    The keep mask comes from ``torch.rand`` (``u >= p``) instead of ``bernoulli_``, whose CPU sampler takes
    about three times as long; on a ``[32, 1024, 64]`` activation that is ~15 ms a call, ~10% of a MUFASA
    training step. Same distribution, different random stream.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GatedSum(torch.autograd.Function):
    """``sum_b gates[..., b, None] * outputs[b]``: gates ``[..., H, n_branches]``, outputs ``[..., H, dh]`` each.

    The same maths as autograd on ``g * o + ...``, without its per-branch temporaries: a memory-bound step
    that otherwise costs as much as a branch's attention on CPU.
    """

    @staticmethod
    def forward(ctx, gates, *outputs):
        per_branch = gates.movedim(-1, 0).unsqueeze(-1).contiguous()  # [n_branches, ..., H, 1]: unit-stride broadcasts
        ctx.save_for_backward(per_branch, *outputs)
        total = outputs[0] * per_branch[0]
        for i, out in enumerate(outputs[1:], 1):
            total.addcmul_(out, per_branch[i])
        return total

    @staticmethod
    def backward(ctx, grad):
        per_branch, *outputs = ctx.saved_tensors
        grad_gates = None
        if ctx.needs_input_grad[0]:
            grad_gates = torch.stack([torch.linalg.vecdot(grad, out) for out in outputs], -1)
        grad_outputs = [grad * per_branch[i] if ctx.needs_input_grad[i + 1] else None for i in range(len(outputs))]
        return (grad_gates, *grad_outputs)


class SplitProjection(torch.autograd.Function):
    """One ``Linear`` over ``[rows, d]`` handed out as column pieces (``widths``, left to right), one GEMM each.

    Each piece is its own contiguous ``[rows, width]`` tensor: the attention calls, the selected-block
    gather and the window's span pairs then read unit-stride rows, not rows strided by the whole output
    width (15% of the layer at L = 1024). Backward also goes piece by piece, each GEMM reading its piece's
    gradient where it lies; a piece without gradient (unused) costs nothing.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, widths):
        ctx.save_for_backward(x, weight)
        ctx.widths = widths
        return tuple(F.linear(x, w, b) for w, b in zip(weight.split(widths), bias.split(widths)))

    @staticmethod
    def backward(ctx, *grads):
        x, weight = ctx.saved_tensors
        grad_x = None
        grad_weight = weight.new_zeros(weight.shape) if ctx.needs_input_grad[1] else None
        grad_bias = weight.new_zeros(weight.shape[0]) if ctx.needs_input_grad[2] else None
        stop = 0
        for grad, width in zip(grads, ctx.widths):
            start, stop = stop, stop + width
            if grad is None:
                continue
            if ctx.needs_input_grad[0]:
                grad_x = grad @ weight[start:stop] if grad_x is None else grad_x.addmm_(grad, weight[start:stop])
            if grad_weight is not None:
                torch.mm(grad.t(), x, out=grad_weight[start:stop])
            if grad_bias is not None:
                torch.sum(grad, 0, out=grad_bias[start:stop])
        return grad_x, grad_weight, grad_bias, None


class SpanPairs(torch.autograd.Function):
    """``[B, n, s, C] -> [B, n, 2s, C]``: span ``k``'s rows are span ``k-1`` (zeros for ``k = 0``), then span ``k``.

    A 2x copy whose backward is one add, where an ``unfold`` view would hand SDPA strided keys and pay for
    them in ``unfold_backward``.
    """

    @staticmethod
    def forward(ctx, spans):
        batch, n, span, channels = spans.shape
        out = spans.new_empty(batch, n, 2 * span, channels)
        out[:, :, span:] = spans
        out[:, 1:, :span] = spans[:, :-1]
        out[:, :1, :span] = 0.0
        return out

    @staticmethod
    def backward(ctx, grad):
        span = grad.shape[2] // 2
        grad_spans = grad[:, :, span:].clone()
        grad_spans[:, :-1] += grad[:, 1:, :span]
        return grad_spans


class StraightThroughGate(torch.autograd.Function):
    """``values * (1 + offset - stop_grad(offset))`` without the multiply: forward is the identity, backward
    passes the values' gradient through and gives ``offset`` the gradient of a gate on its slot.

    ``values [N, H, ns*l, dh]``, ``offset [N, ns]`` (one per slot of ``l`` keys).
    """

    @staticmethod
    def forward(ctx, values, offset):
        ctx.save_for_backward(values)
        ctx.n_slots = offset.shape[-1]
        return values.view_as(values)

    @staticmethod
    def backward(ctx, grad):
        (values,) = ctx.saved_tensors
        rows, n_slots = values.shape[0], ctx.n_slots
        # one dot product per slot over its keys, heads and channels ([N, ns*l, H, dh] memory: a view)
        flat_grad, flat_values = (x.transpose(1, 2).reshape(rows * n_slots, 1, -1) for x in (grad, values))
        return grad, torch.bmm(flat_grad, flat_values.transpose(1, 2)).view(rows, n_slots)


# ----- the layer ----------------------------------------------------------------------------------


class SparseAttentionAlignment(nn.Module):
    """Causal multi-head attention with window / block-compressed / selected-block branches.

    ``forward(hidden [B, L, d], key_padding_mask [B, L] bool, True = real item) -> [B, L, d]``, output
    projection included. Left- and right-padded sequences both work; padded keys are never attended and
    padded queries get finite outputs. ``gate_override={"window": 1.0, ...}`` replaces the learned gates
    by constants (used to check that window-only SAL with ``w >= L`` equals dense causal attention).
    An encoder passes one :class:`SparsePlan` (from :meth:`plan`) to all its layers.

    Speed: one :class:`SplitProjection` projects every item to its query, window and selected
    keys/values and gate logits (a contiguous tensor each); masks come additive from the plan; the window branch is block-banded (spans
    against span pairs, :class:`SpanPairs`), or one causal SDPA call when ``L <= w``.
    ``torch.nn.attention.flex_attention`` would express the whole pattern as one ``BlockMask``, but
    in torch 2.13 it has no backward on the CPU, so training cannot use it there.
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
        dropout_type: str = "dropkey",
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
        if dropout_type not in DROPOUT_TYPES:
            raise ValueError(f"attention dropout type must be one of {DROPOUT_TYPES}, got {dropout_type!r}")
        self.dropout_type = dropout_type
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

    # ----- helpers ----------------------------------------------------------------------------------

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., H, dh]`` (a view)."""
        return x.unflatten(-1, (self.n_heads, self.head_dim))

    def _sdpa(self, q, k, v, mask, query_group: int = 0):
        """SDPA with an additive mask ``[N, 1, Lq, Lk]`` and this layer's attention dropout.

        ``dropout_type="probs"`` drops attention probabilities (SDPA's ``dropout_p``), which the CPU's
        fused kernel does not support: SDPA then falls back to its unfused maths, twice the time of the
        whole layer at L = 1024. ``"dropkey"`` (default) drops keys before the softmax instead, through
        the mask ("DropKey for Vision Transformer", arXiv 2208.02646), so the kernel stays fused. One
        draw serves each run of ``query_group`` queries (a block of ``l``; 0 = all ``Lq``): torch's
        CPU sampler would cost more than the attention for one draw per score. A row never loses every
        key it may see (it keeps its mask then).
        """
        dropout = self.attn_dropout if self.training else 0.0
        if dropout > 0 and self.dropout_type == "dropkey":
            mask = mask.expand(q.shape[0], -1, -1, -1)  # a mask shared by the batch: each row draws its own drops
            n, _, n_queries, n_keys = mask.shape
            group = query_group or n_queries
            drop = torch.rand(n, 1, n_queries // group, 1, n_keys, device=mask.device) < dropout
            dropped = mask.reshape(n, 1, n_queries // group, group, n_keys).masked_fill(drop, float("-inf")).view(-1, n_keys)
            lost = (dropped.amax(-1) == float("-inf")).nonzero().squeeze(1)  # rows that lost every key they saw
            dropped[lost] = mask.reshape(-1, n_keys)[lost]
            mask, dropout = dropped.view_as(mask), 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)

    def plan(self, real: torch.Tensor, dtype=torch.float32) -> SparsePlan:
        """The masks of a batch (``real [B, L]`` bool), for this layer and every layer configured like it."""
        window = self.window_size if "window" in self.branches else 0
        reach = self.window_size if self.select_outside_window else 0
        return SparsePlan(real, self.block_size, window, reach, dtype, blocks="block" in self.branches)

    # ----- dense ablation -----------------------------------------------------------------------------

    def _dense(self, hidden, real: Optional[torch.Tensor]) -> torch.Tensor:
        """Plain causal SDPA, ``[B, L, d]`` before the output projection."""
        weight = torch.cat([self.query.weight, self.key_value["dense"].weight])
        bias = torch.cat([self.query.bias, self.key_value["dense"].bias])
        q, k, v = (self._split_heads(x).transpose(1, 2) for x in F.linear(hidden, weight, bias).chunk(3, -1))  # [B, H, L, dh]
        dropout = self.attn_dropout if self.training else 0.0  # probabilities: the dense ablation keeps SDPA's dropout
        if real is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            mask, seen = additive_mask(causal_mask(q.shape[2], q.device) & real[:, None, None, :], q.dtype)  # [B, 1, L, L]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout).masked_fill(~seen, 0.0)
        return out.transpose(1, 2).flatten(2)

    # ----- sparse branches ----------------------------------------------------------------------------
    # Each returns its output [B, nq, l, H, dh] (SDPA's output memory is [batch, queries, H, dh]).

    def _project(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The per-item projections of ``flat [M, d]``: ``{"query", "window_key", "window_value", "select_key",
        "select_value", "gate"}``, one :class:`SplitProjection`."""
        names, weights, biases = ["query"], [self.query.weight], [self.query.bias]
        if "window" in self.branches:
            linear = self.key_value["window"]
            names += ["window_key", "window_value"]
            weights += list(linear.weight.chunk(2))
            biases += list(linear.bias.chunk(2))
        if "select" in self.branches:
            linear = self.key_value["select"]
            names += ["select_key", "select_value"]
            weights += list(linear.weight.chunk(2))
            biases += list(linear.bias.chunk(2))
        names.append("gate")
        weights.append(self.gate.weight)
        biases.append(self.gate.bias)
        widths = tuple(w.shape[0] for w in weights)
        return dict(zip(names, SplitProjection.apply(flat, torch.cat(weights), torch.cat(biases), widths)))

    def _window(self, plan: SparsePlan, q, key, value):
        """Keys in ``(t - w, t]``: each span of ``s >= w`` queries against the ``2s`` items of its span pair."""
        layout = plan.layout
        batch, nq, size = layout.batch, layout.n_blocks, layout.size
        if layout.dense_window:  # the window is the whole causal row: one SDPA call per row
            q_rows, k, v = (self._split_heads(x).view(batch, layout.padded, self.n_heads, -1).transpose(1, 2)
                            for x in (q, key, value))
            out = self._sdpa(q_rows, k, v, plan.window_mask, size)  # [B, H, P, dh]
        else:
            span = layout.span
            q_spans = self._split_heads(q).view(batch * layout.n_spans, span, self.n_heads, -1).transpose(1, 2)  # [B*n_spans, H, s, dh]
            k, v = (self._split_heads(layout.span_pairs(x)).transpose(1, 2) for x in (key, value))  # [B*n_spans, H, 2s, dh]
            out = self._sdpa(q_spans, k, v, plan.window_mask, size)
        return out.transpose(1, 2).reshape(batch, nq, size, self.n_heads, -1)

    def _compress(self, plan: SparsePlan, rows):
        """Keys/values of every block of ``rows [B, nq*l, d]``, ``[B, nq, H, dh]`` each.

        Padded items are zeroed first so they cannot leak into a partly padded (left-padded) block. Only
        blocks complete at ``t`` are ever shown to query ``t``, so the last, possibly partial, block of a
        row is never used early.
        """
        layout = plan.layout
        shape = (layout.batch, layout.n_blocks, layout.size)
        blocks = rows.view(*shape, -1) * plan.real.view(*shape, 1)
        k_cmp, v_cmp = self.key_value["block"](self.compress(blocks)).chunk(2, -1)  # pooled [B, nq, d]
        return self._split_heads(k_cmp), self._split_heads(v_cmp)

    def _block(self, plan: SparsePlan, q, k_cmp, v_cmp):
        """Attention over compressed complete blocks (rows before the first complete block see nothing).

        Query ``t`` sees only blocks ending at or before ``t``, so the rows run in chunks, each against the
        blocks its last row may see: about 5/8 of the scores of one call over all blocks with 4 chunks.
        """
        layout = plan.layout
        q_rows = self._split_heads(q).view(layout.batch, layout.padded, self.n_heads, -1).transpose(1, 2)
        k, v = k_cmp.transpose(1, 2), v_cmp.transpose(1, 2)  # [B, H, nq, dh]
        outs = [self._sdpa(q_rows[:, :, start:stop], k[:, :, :keys], v[:, :, :keys], mask, layout.size).transpose(1, 2)
                for (start, stop, keys), mask in zip(plan.block_chunks, plan.block_masks)]  # [B, rows, H, dh] each
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        return out.reshape(layout.batch, layout.n_blocks, layout.size, self.n_heads, -1)

    def _importance(self, plan: SparsePlan, q_first, k_cmp) -> torch.Tensor:
        """Block importance ``[B, nq, nq]`` for selection; ``-1`` marks non-candidates.

        The block branch's attention probabilities at each query block's *first* query (the latest
        position all the block's queries may depend on) over the candidate blocks, summed over heads:
        NSA sums them over the heads sharing a selection, here all heads share one. Candidates are the
        earlier blocks, or with ``select_outside_window`` those outside the window (see
        :func:`candidate_block_mask`). Differentiable: :meth:`_select` passes a gradient back to it.
        """
        scores = torch.einsum("bchd,bkhd->bhck", q_first, k_cmp) / math.sqrt(self.head_dim)  # [B, H, nq, nq]
        candidate = plan.candidates
        probs = torch.softmax(scores.masked_fill(~candidate[:, None], float("-inf")), -1).nan_to_num(0.0)
        return probs.sum(1).masked_fill(~candidate, -1.0)

    def _choose(self, plan: SparsePlan, importance: Optional[torch.Tensor]):
        """Slots ``[B, nq, ns]`` (block numbers: the top ``n-1`` candidates, then the own block), whether
        each slot holds a candidate, and the straight-through gate offset ``[B, nq, ns]`` (None without grad)."""
        layout = plan.layout
        own = torch.arange(layout.n_blocks, device=plan.real.device).expand(layout.batch, layout.n_blocks)[..., None]
        n_pick = 0 if importance is None else min(self.top_blocks - 1, layout.n_blocks - 1)
        if n_pick == 0:
            return own, torch.ones_like(own, dtype=torch.bool), None
        top, picked = importance.topk(n_pick, dim=-1)  # [B, nq, n-1]
        slots = torch.cat([picked, own], -1)
        slot_ok = torch.cat([top >= 0, torch.ones_like(own, dtype=torch.bool)], -1)
        bias = torch.cat([top - top.detach(), torch.zeros_like(own, dtype=top.dtype)], -1) if top.requires_grad else None
        return slots, slot_ok, bias

    def _select(self, plan: SparsePlan, q, key, value, importance: Optional[torch.Tensor]):
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
        layout = plan.layout
        batch, nq, size = layout.batch, layout.n_blocks, layout.size
        slots, slot_ok, bias = self._choose(plan, importance)
        n_slots = slots.shape[-1]
        blocks = (x.view(batch * nq, size, self.n_heads, -1) for x in (key, value))
        if n_slots == 1:  # the own block only (no candidate yet): keys are a view, the mask the plan's
            keys, values = (x.transpose(1, 2) for x in blocks)
            mask, seen = plan.own_block_mask()
        else:
            index = layout.block_index(slots)  # [B, nq, ns]
            keys, values = (x.index_select(0, index.view(-1)).view(batch * nq, n_slots * size, self.n_heads, -1).transpose(1, 2)
                            for x in blocks)  # [B*nq, H, ns*l, dh]
            if bias is not None:
                values = StraightThroughGate.apply(values, bias.view(batch * nq, n_slots))
            key_ok = plan.real.view(-1, size)[index] & slot_ok[..., None]  # [B, nq, ns, l]
            visible = key_ok.view(-1, 1, 1, n_slots * size) & selected_slots_mask(size, n_slots, key_ok.device)
            mask, seen = additive_mask(visible, q.dtype)  # [B*nq, 1, l, ns*l]
        q_blocks = self._split_heads(q).view(batch * nq, size, self.n_heads, -1).transpose(1, 2)
        out = self._sdpa(q_blocks, keys, values, mask, size)
        return out.transpose(1, 2).reshape(batch, nq, size, self.n_heads, -1), seen.view(batch, nq, size, 1)

    @torch.no_grad()
    def selected_blocks(self, hidden: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Blocks each query block attends to in the selected branch, ``[B, nq, ns]``, -1 = empty slot
        (the last slot is the own block). For inspection and tests; needs the ``select`` branch."""
        if "select" not in self.branches:
            raise ValueError("selected_blocks needs the 'select' branch")
        real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if key_padding_mask is None else key_padding_mask.bool()
        plan = self.plan(real, hidden.dtype)
        flat = plan.layout.flatten(hidden)
        q = self._project(flat)["query"]
        k_cmp, _ = self._compress(plan, flat.view(plan.layout.batch, plan.layout.padded, -1))
        q_first = self._split_heads(q).view(plan.layout.batch, plan.layout.n_blocks, plan.layout.size, self.n_heads, -1)[:, :, 0]
        slots, slot_ok, _ = self._choose(plan, self._importance(plan, q_first, k_cmp))
        return slots.masked_fill(~slot_ok, -1)

    def _branch_outputs(self, plan: SparsePlan, parts, rows):
        """Each branch's output ``[B, nq, l, H, dh]`` and the rows that see some key, one SDPA call each."""
        layout = plan.layout
        q = parts["query"]
        outputs, seen = {}, {}
        if "window" in self.branches:
            outputs["window"], seen["window"] = self._window(plan, q, parts["window_key"], parts["window_value"]), plan.window_seen
        importance = None
        if "block" in self.branches or ("select" in self.branches and plan.any_candidate):
            k_cmp, v_cmp = self._compress(plan, rows)
            if "block" in self.branches:
                outputs["block"], seen["block"] = self._block(plan, q, k_cmp, v_cmp), plan.block_seen
            if "select" in self.branches and plan.any_candidate:
                q_first = self._split_heads(q).view(layout.batch, layout.n_blocks, layout.size, self.n_heads, -1)[:, :, 0]
                importance = self._importance(plan, q_first, k_cmp)
        if "select" in self.branches:
            outputs["select"], seen["select"] = self._select(plan, q, parts["select_key"], parts["select_value"], importance)
        return outputs, seen

    def _sparse(self, hidden, plan: SparsePlan, gate_override) -> torch.Tensor:
        """Gated sum of the branches, ``[B, L, d]`` before the output projection."""
        layout = plan.layout
        blocked = (layout.batch, layout.n_blocks, layout.size)
        flat = layout.flatten(hidden)  # [M, d]
        rows = flat.view(layout.batch, layout.padded, -1)
        parts = self._project(flat)  # [M, ...] each
        outputs, seen = self._branch_outputs(plan, parts, rows)

        # combine in the SDPA outputs' memory layout [B, nq, l, H, dh]; unseen rows are zeroed via the gate
        gates = torch.sigmoid(parts["gate"]).view(*blocked, self.n_heads, -1)  # [B, nq, l, H, n_branches]
        if gate_override:
            gates = torch.stack([
                torch.full_like(gates[..., i], float(gate_override[b])) if b in gate_override else gates[..., i]
                for i, b in enumerate(self.branches)
            ], -1)
        seen = torch.stack([seen[b].reshape(*blocked, 1) for b in self.branches], -1)  # [B, nq, l, 1, n_br]
        combined = GatedSum.apply(gates * seen, *(outputs[b] for b in self.branches))  # [B, nq, l, H, dh]
        combined = combined.reshape(layout.batch, layout.padded, self.hidden_size)
        return combined if layout.padded == layout.length else combined[:, :layout.length]

    def forward(self, hidden: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                gate_override: Optional[Dict[str, float]] = None, plan: Optional[SparsePlan] = None) -> torch.Tensor:
        real = None if key_padding_mask is None else key_padding_mask.bool()
        if self.attention == "dense":
            return self.out(self._dense(hidden, real))
        if plan is None:
            if real is None:
                real = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            plan = self.plan(real, hidden.dtype)
        return self.out(self._sparse(hidden, plan, gate_override))


# ----- encoder stack ------------------------------------------------------------------------------


class SparseTransformerLayer(nn.Module):
    """Post-norm block like RecBole's TransformerLayer: SAL -> dropout -> residual -> LayerNorm -> FFN -> residual -> LayerNorm."""

    def __init__(self, hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout, hidden_act, layer_norm_eps,
                 window_size, block_size, top_blocks, attention, branches, select_outside_window=True,
                 dropout_type="dropkey"):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {hidden_act!r}")
        self.attention = SparseAttentionAlignment(
            hidden_size, n_heads, window_size, block_size, top_blocks, attn_dropout, attention, branches,
            select_outside_window, dropout_type,
        )
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.inner = nn.Linear(hidden_size, inner_size)
        self.outer = nn.Linear(inner_size, hidden_size)
        self.activation = ACTIVATIONS[hidden_act]
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = UniformDropout(hidden_dropout)

    def forward(self, hidden, key_padding_mask=None, plan=None):
        hidden = self.attention_norm(hidden + self.dropout(self.attention(hidden, key_padding_mask, plan=plan)))
        return self.ffn_norm(hidden + self.dropout(self.outer(self.activation(self.inner(hidden)))))


class SparseTransformerEncoder(nn.Module):
    """``n_layers`` SAL transformer blocks; ``forward(hidden [B, L, d], key_padding_mask [B, L]) -> [B, L, d]``."""

    def __init__(self, n_layers=2, hidden_size=64, n_heads=2, inner_size=256, hidden_dropout=0.5, attn_dropout=0.5,
                 hidden_act="gelu", layer_norm_eps=1e-12, window_size=32, block_size=16, top_blocks=4,
                 attention="sparse", branches=BRANCHES, select_outside_window=True, dropout_type="dropkey"):
        super().__init__()
        self.layers = nn.ModuleList(
            SparseTransformerLayer(hidden_size, n_heads, inner_size, hidden_dropout, attn_dropout, hidden_act,
                                   layer_norm_eps, window_size, block_size, top_blocks, attention, branches,
                                   select_outside_window, dropout_type)
            for _ in range(n_layers)
        )

    def forward(self, hidden, key_padding_mask=None):
        """Sparse layers share one :class:`SparsePlan` (layout and padding masks) built here once."""
        plan = None
        first = self.layers[0].attention
        if first.attention == "sparse":
            real = key_padding_mask.bool() if key_padding_mask is not None else torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            plan = first.plan(real, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, key_padding_mask, plan=plan)
        return hidden
