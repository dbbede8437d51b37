"""SparseAttentionAlignment (MUFASA's SAL, NSA-shaped): exactness, causality, padding, gradients, memory shape."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from recbole_mm.model.layers.sparse_attention import BRANCHES, SparseAttentionAlignment, SparseTransformerEncoder

D, H = 16, 2


def make_layer(seed=0, randomise_gates=True, **kwargs):
    """A layer whose gates depend on the input (the NSA init has zero gate weights)."""
    torch.manual_seed(seed)
    layer = SparseAttentionAlignment(D, H, **kwargs)
    if randomise_gates and layer.branches:
        with torch.no_grad():
            layer.gate.weight.normal_(0, 0.5)
            layer.gate.bias.zero_()
    return layer.eval()


def padding_mask(lengths, length, left=False):
    """``[B, L]`` True on real items; right-padded (RecBole) or left-padded."""
    positions = torch.arange(length)[None, :]
    lengths = torch.tensor(lengths)[:, None]
    return positions >= length - lengths if left else positions < lengths


# ----- a naive O(L^2) reference written from the definitions --------------------------------------


def masked_attention(q, k, v, visible):
    """Softmax attention with an explicit mask; rows that see nothing give 0."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1).nan_to_num(0.0)
    return probs @ v


def naive_sal(layer, x, real):
    """SAL with dense ``[B, H, L, L]`` masks per branch, reusing the layer's parameters."""
    batch, length, _ = x.shape
    w, size, n = layer.window_size, layer.block_size, layer.top_blocks
    heads = lambda y: y.view(batch, length, H, D // H).transpose(1, 2)  # noqa: E731  [B, H, L, dh]
    q = heads(layer.query(x))
    heads_of_blocks = lambda y: y.view(batch, -1, H, D // H).transpose(1, 2)  # noqa: E731
    kv = {name: [heads(y) for y in proj(x).chunk(2, -1)] for name, proj in layer.key_value.items() if name != "block"}
    t = torch.arange(length)[:, None]  # query position
    s = torch.arange(length)[None, :]  # key position
    key_real = real[:, None, None, :]
    outputs = {}
    if "window" in layer.branches:
        outputs["window"] = masked_attention(q, *kv["window"], (s <= t) & (s > t - w) & key_real)
    n_blocks = length // size
    if "block" in layer.key_value and n_blocks:
        # phi: position-weighted mean of each complete block's hidden states (padding zeroed), then Linear
        blocks = (x * real[..., None])[:, : n_blocks * size].unflatten(1, (n_blocks, size))  # [B, nb, l, d]
        pooled = (blocks * layer.compress.position_weight).sum(2)
        k_cmp, v_cmp = (heads_of_blocks(y) for y in layer.key_value["block"](pooled).chunk(2, -1))  # [B, H, nb, dh]
        valid = real[:, : n_blocks * size].view(batch, n_blocks, size).any(-1)[:, None, None, :]
        block = torch.arange(n_blocks)[None, :]
        outputs["block"] = masked_attention(q, k_cmp, v_cmp, ((block + 1) * size - 1 <= t) & valid)
        # importance: block-branch probabilities at the first query of t's block over earlier blocks, head-summed
        first = (t // size) * size  # [L, 1]
        reach = w if layer.select_outside_window and "window" in layer.branches else 0
        candidate = (block < t // size) & ((block + 1) * size - 1 <= first - reach) & valid  # [B, 1, L, nb]
        scores = (q[:, :, first[:, 0]] @ k_cmp.transpose(-1, -2)) / math.sqrt(D // H)
        probs = torch.softmax(scores.masked_fill(~candidate, float("-inf")), -1).nan_to_num(0.0).sum(1, keepdim=True)
        top, picked = probs.masked_fill(~candidate, -1.0).topk(min(n - 1, n_blocks), -1)
        chosen = torch.zeros_like(probs).scatter(-1, picked, (top >= 0).float()).bool()  # [B, 1, L, nb]
        key_block = (s // size).expand(length, length)
        in_chosen = chosen.gather(-1, key_block.clamp(max=n_blocks - 1).expand(batch, 1, -1, -1)) & (key_block < n_blocks)
    else:
        in_chosen = torch.zeros(1, 1, length, length, dtype=torch.bool)
    if "select" in layer.branches:
        own_block = (s // size == t // size) & (s <= t)
        outputs["select"] = masked_attention(q, *kv["select"], (own_block | in_chosen) & key_real)
    gates = torch.sigmoid(F.linear(x, layer.gate.weight, layer.gate.bias)).view(batch, length, H, -1).transpose(1, 2)
    context = sum(gates[..., i, None] * outputs.get(b, torch.zeros_like(q)) for i, b in enumerate(layer.branches))
    return layer.out(context.transpose(1, 2).reshape(batch, length, D))


@pytest.mark.parametrize("outside", [True, False])
@pytest.mark.parametrize(
    "length,window,block,top,left",
    [(64, 8, 8, 3, False), (37, 8, 8, 3, True), (37, 5, 6, 2, False), (23, 4, 4, 1, False), (5, 8, 8, 4, False),
     (20, 24, 4, 3, True)],
)
def test_sparse_matches_naive_reference(length, window, block, top, left, outside):
    """Chunked window, compressed blocks and gathered selection equal the dense-mask definitions (odd L too;
    ``L <= w`` takes the one-SDPA-call window path)."""
    layer = make_layer(window_size=window, block_size=block, top_blocks=top, select_outside_window=outside)
    x = torch.randn(3, length, D)
    real = padding_mask([length, length - 3, max(1, length // 2 - 1)], length, left=left)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, real), naive_sal(layer, x, real), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("length,window,block,left", [(64, 8, 8, False), (61, 8, 4, True), (37, 5, 6, False)])
def test_block_branch_in_query_chunks_matches_reference_and_one_call(monkeypatch, length, window, block, left):
    """The block branch's query chunks (each against the blocks it may see) change nothing: outputs equal the
    naive reference, and outputs and gradients equal the one-call path."""
    from recbole_mm.model.layers import sparse_attention

    layer = make_layer(window_size=window, block_size=block, top_blocks=3)
    x = torch.randn(3, length, D)
    real = padding_mask([length, length - 3, length // 2], length, left=left)
    results = []
    for chunk_blocks in (1, 10**6):  # every chunk as small as allowed (4 chunks), then one call
        monkeypatch.setattr(sparse_attention, "CHUNK_BLOCKS", chunk_blocks)
        plan = layer.plan(real)
        assert len(plan.block_chunks) == (4 if chunk_blocks == 1 else 1)
        inputs = x.clone().requires_grad_()
        out = layer(inputs, real, plan=plan)
        out.square().sum().backward()
        results.append((out, inputs.grad, layer.key_value["block"].weight.grad.clone()))
        layer.zero_grad()
    with torch.no_grad():
        torch.testing.assert_close(results[0][0], naive_sal(layer, x, real), atol=1e-5, rtol=1e-4)
    for chunked, single in zip(*results):
        torch.testing.assert_close(chunked, single, atol=1e-5, rtol=1e-4)


# ----- dense equivalence ---------------------------------------------------------------------------


@pytest.mark.parametrize("length,left", [(16, False), (13, True), (13, False)])
def test_window_only_with_large_window_equals_dense_causal_attention(length, left):
    sparse = make_layer(window_size=32, branches=("window",))
    dense = SparseAttentionAlignment(D, H, attention="dense").eval()
    dense.query.load_state_dict(sparse.query.state_dict())
    dense.key_value["dense"].load_state_dict(sparse.key_value["window"].state_dict())
    dense.out.load_state_dict(sparse.out.state_dict())
    x = torch.randn(2, length, D)
    real = padding_mask([length, length - 4], length, left=left)
    with torch.no_grad():
        got = sparse(x, real, gate_override={"window": 1.0})
        torch.testing.assert_close(got, dense(x, real), atol=1e-5, rtol=1e-5)
        # and against SDPA written out, with the same weights, on the unpadded sequences
        q = sparse.query(x).view(2, length, H, -1).transpose(1, 2)
        k, v = (y.view(2, length, H, -1).transpose(1, 2) for y in sparse.key_value["window"](x).chunk(2, -1))
        full = sparse.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, length, D))
        torch.testing.assert_close(sparse(x, gate_override={"window": 1.0}), full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense(x), full, atol=1e-5, rtol=1e-5)


# ----- causality and padding -----------------------------------------------------------------------


@pytest.mark.parametrize("position", [9, 20, 23, 42, 47, 63])
def test_future_inputs_do_not_change_earlier_outputs(position):
    """Includes positions inside a block: the shared per-block selection must not peek ahead."""
    layer = make_layer(window_size=8, block_size=8, top_blocks=2)
    x = torch.randn(4, 64, D)
    changed = x.clone()
    changed[:, position] += 20 * torch.randn(4, D)
    with torch.no_grad():
        before, after = layer(x), layer(changed)
    torch.testing.assert_close(after[:, :position], before[:, :position], atol=1e-6, rtol=0)
    assert (after[:, position] - before[:, position]).abs().max() > 1e-3


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_padded_items_have_no_influence(left, attention):
    """Lengths 27 and 11 in 40: padding inside partial blocks and windows, on either side."""
    layer = make_layer(window_size=8, block_size=8, top_blocks=3, attention=attention)
    x = torch.randn(2, 40, D)
    real = padding_mask([27, 11], 40, left=left)
    noisy = torch.where(real[..., None], x, 10 * torch.randn_like(x))
    with torch.no_grad():
        before, after, unmasked = layer(x, real), layer(noisy, real), layer(noisy)
    torch.testing.assert_close(after[real], before[real], atol=1e-6, rtol=0)
    if left:  # right padding sits in the future of every real item, so there causality alone guards it
        assert (unmasked[real] - before[real]).abs().max() > 1e-2  # without the mask the noise would leak


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_fully_padded_rows_stay_finite_in_training(attention):
    layer = make_layer(window_size=4, block_size=4, top_blocks=2, attention=attention, attn_dropout=0.3).train()
    x = torch.randn(3, 19, D, requires_grad=True)
    real = padding_mask([19, 6, 0], 19)
    out = layer(x, real)
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("length", [64, 20])  # chunked window and the one-call window (L <= w)
def test_dropkey_keeps_causality_and_padding_in_training(length):
    """Dropped keys only ever remove visibility: with the same random draws, future items and padded
    items still change nothing, and the dropout does change the outputs."""
    layer = make_layer(window_size=24, block_size=4, top_blocks=3, attn_dropout=0.5).train()
    x = torch.randn(2, length, D)
    real = padding_mask([length, length - 7], length, left=True)
    changed = torch.where(real[..., None], x, 10 * torch.randn_like(x))
    changed[:, -1] += 5.0  # the last position is in the future of all others
    with torch.no_grad():
        torch.manual_seed(7)
        before = layer(x, real)
        torch.manual_seed(7)
        after = layer(changed, real)
        reference = layer.eval()(x, real)
    keep = real.clone()
    keep[:, -1] = False
    torch.testing.assert_close(after[keep], before[keep], atol=1e-6, rtol=0)
    assert torch.isfinite(before).all() and (before - reference).abs().max() > 1e-3


@pytest.mark.parametrize("training", [False, True])
def test_a_batch_without_padding_shares_one_block_mask_and_computes_what_per_row_masks_do(training):
    """No block is all padding: one ``[1, 1, P, nq]`` block mask serves the batch. With it expanded to one
    mask per row, outputs and gradients are bit-identical, in training too (DropKey draws per row either
    way). A layer without the block branch plans no block masks at all."""
    layer = make_layer(window_size=8, block_size=4, top_blocks=3, attn_dropout=0.5 if training else 0.0).train(training)
    x = torch.randn(3, 40, D)
    real = torch.ones(3, 40, dtype=torch.bool)
    results = []
    for per_row in (False, True):
        plan = layer.plan(real)
        assert plan.block_masks[0].shape[0] == 1
        if per_row:
            plan.block_masks = [mask.expand(3, -1, -1, -1).contiguous() for mask in plan.block_masks]
        inputs = x.clone().requires_grad_(True)
        torch.manual_seed(5)
        out = layer(inputs, real, plan=plan)
        out.square().sum().backward()
        results.append((out.detach(), inputs.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert layer.plan(padding_mask([40, 30, 3], 40)).block_masks[0].shape[0] == 3
    assert make_layer(window_size=8, block_size=4, branches=("window",)).plan(real).block_masks is None


# ----- every part is used --------------------------------------------------------------------------


def test_gradients_reach_every_branch_and_the_gates():
    layer = make_layer(randomise_gates=False, window_size=8, block_size=8, top_blocks=2)
    x = torch.randn(2, 64, D)
    layer(x, padding_mask([64, 50], 64)).square().sum().backward()
    names = {"query.weight", "out.weight", "gate.weight", "gate.bias", "compress.position_weight"}
    names |= {f"key_value.{b}.weight" for b in BRANCHES} | {f"key_value.{b}.bias" for b in BRANCHES}
    grads = dict(layer.named_parameters())
    assert names <= set(grads)
    for name in sorted(names):
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("branch", BRANCHES)
def test_each_branch_changes_the_output(branch):
    layer = make_layer(window_size=8, block_size=8, top_blocks=2)
    x = torch.randn(2, 48, D)
    with torch.no_grad():
        delta = layer(x) - layer(x, gate_override={branch: 0.0})
    assert delta[:, 16:].abs().max() > 1e-3  # every branch is live once two blocks are complete


@pytest.mark.parametrize("outside", [True, False])
def test_select_without_block_branch_still_ranks_blocks(outside):
    layer = make_layer(window_size=4, block_size=4, top_blocks=2, branches=("window", "select"), select_outside_window=outside)
    assert "block" in layer.key_value and layer.branches == ("window", "select")
    x = torch.randn(2, 24, D)
    real = padding_mask([24, 17], 24, left=True)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, real), naive_sal(layer, x, real), atol=1e-5, rtol=1e-4)


SELECT_CONFIGS = [("window", "block", "select"), ("window", "select"), ("block", "select"), ("select",)]


@pytest.mark.parametrize("branches", SELECT_CONFIGS)
def test_selector_is_trained_in_every_branch_configuration(branches):
    """Block keys and compressor rank the blocks; they must get a gradient even without the block branch."""
    layer = make_layer(window_size=8, block_size=4, top_blocks=3, branches=branches).train()
    layer(torch.randn(2, 48, D), padding_mask([48, 37], 48)).square().sum().backward()
    for name, parameter in (("key_value.block", layer.key_value["block"].weight), ("compress", layer.compress.position_weight)):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (branches, name)


def test_straight_through_bias_leaves_outputs_unchanged():
    """The selector's gradient path adds zero to the forward values (grad on and off agree)."""
    layer = make_layer(window_size=8, block_size=4, top_blocks=3)
    x, real = torch.randn(2, 41, D), padding_mask([41, 30], 41)
    with torch.no_grad():
        expected = layer(x, real)
    torch.testing.assert_close(layer(x.requires_grad_(), real), expected, atol=0, rtol=0)


def test_straight_through_gate_gradient_equals_autograd_of_its_definition():
    """The fused backward (one dot product per slot) equals autograd on ``values * (1 + o - stop_grad(o))``,
    for values laid out as the selected branch gathers them (``[N, ns*l, H, dh]`` memory, heads transposed)."""
    from recbole_mm.model.layers.sparse_attention import StraightThroughGate

    n, slots, size, heads, dh = 5, 3, 4, 2, 3
    values = torch.randn(n, slots * size, heads, dh, dtype=torch.float64).transpose(1, 2).requires_grad_()
    offset = torch.randn(n, slots, dtype=torch.float64).requires_grad_()
    grad = torch.randn(n, heads, slots * size, dh, dtype=torch.float64)
    got = torch.autograd.grad(StraightThroughGate.apply(values, offset), (values, offset), grad)
    scale = (1 + offset - offset.detach()).repeat_interleave(size, 1)[:, None, :, None]
    expected = torch.autograd.grad(values * scale, (values, offset), grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_gated_sum_gradients():
    from recbole_mm.model.layers.sparse_attention import GatedSum

    gates = torch.rand(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)  # [..., H, n_branches]
    outputs = [torch.randn(2, 3, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    expected = sum(gates[..., i, None] * out for i, out in enumerate(outputs))
    torch.testing.assert_close(GatedSum.apply(gates, *outputs), expected)
    assert torch.autograd.gradcheck(GatedSum.apply, (gates, *outputs))


def test_split_projection_gradients():
    """Pieces of one Linear, one of them unused: gradcheck of the piece-by-piece backward."""
    from recbole_mm.model.layers.sparse_attention import SplitProjection

    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)

    def used(x, weight, bias):  # the middle piece gets no gradient; the others leave as strided views
        first, _, last = SplitProjection.apply(x, weight, bias, (2, 3, 2))
        return first.square(), last.t()

    assert torch.autograd.gradcheck(used, (x, weight, bias))


def test_span_pairs_forward_and_backward():
    """Each span's rows are the previous span (zeros for a row's first) then its own; the backward is the adjoint."""
    from recbole_mm.model.layers.sparse_attention import SpanPairs

    spans = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    out = SpanPairs.apply(spans)
    expected = torch.cat([torch.cat([torch.zeros_like(spans[:, :1]), spans[:, :-1]], 1), spans], 2)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert torch.autograd.gradcheck(SpanPairs.apply, (spans,))


def test_uniform_dropout_keeps_the_expected_share_and_scales():
    from recbole_mm.model.layers.sparse_attention import UniformDropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    dropout = UniformDropout(0.3)
    out = dropout(x)
    kept = out[out > 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.7))
    assert (out > 0).float().mean().item() == pytest.approx(0.7, abs=0.01)
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(UniformDropout(1.0).train()(x), torch.zeros_like(x))
    with pytest.raises(ValueError):
        UniformDropout(1.5)


@pytest.mark.parametrize("window,block", [(8, 4), (6, 4), (4, 4), (3, 8)])
def test_selected_blocks_never_overlap_the_window(window, block):
    """With select_outside_window, no chosen block holds an item inside any of its queries' windows."""
    length, top = 96, 4
    x = torch.randn(3, length, D)
    chosen = make_layer(window_size=window, block_size=block, top_blocks=top).selected_blocks(x)  # [B, nq, ns]
    first_query = torch.arange(chosen.shape[1])[None, :, None] * block  # whose window reaches furthest back
    picked = chosen[..., :-1]
    last_item = (picked + 1) * block - 1
    assert (picked >= 0).any()  # the check is not vacuous
    assert ((picked < 0) | (last_item <= first_query - window)).all()
    assert torch.equal(chosen[..., -1], torch.arange(chosen.shape[1]).expand(3, -1))  # own block last
    if window > block:  # without the option the selection does pick blocks the window shows
        free = make_layer(window_size=window, block_size=block, top_blocks=top, select_outside_window=False).selected_blocks(x)
        overlapping = (free[..., :-1] >= 0) & ((free[..., :-1] + 1) * block - 1 > first_query - window)
        assert overlapping.any()


def test_gates_start_window_dominated_and_survive_linear_reinit():
    layer = SparseAttentionAlignment(D, H)
    for module in layer.modules():  # what RecBole's _init_weights does to every Linear
        if isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0, 0.02)
            module.bias.data.zero_()
    gates = layer.gate(torch.randn(1, 3, D))  # [1, 3, H, 3]
    assert torch.allclose(gates[..., 0], torch.sigmoid(torch.tensor(2.0)))
    assert torch.allclose(gates[..., 1:], torch.sigmoid(torch.tensor(-2.0)))


# ----- no [L, L] tensor in sparse mode -------------------------------------------------------------


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor entering or leaving an aten op (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes, self.ops = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        self.shapes += [tuple(t.shape) for t in pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        return out


def quadratic_shapes(attention, length=512):
    layer = SparseAttentionAlignment(D, H, window_size=32, block_size=16, top_blocks=4, attention=attention)
    x = torch.randn(1, length, D, requires_grad=True)
    real = padding_mask([length - 5], length)
    with ShapeRecorder() as recorder:
        layer(x, real).sum().backward()
    assert any("backward" in op for op in recorder.ops)  # the recorder sees the backward pass too
    return [s for s in recorder.shapes if len(s) >= 2 and min(s[-2:]) >= length]


def test_sparse_mode_never_builds_an_l_by_l_tensor():
    assert quadratic_shapes("dense")  # the check does catch dense attention's mask / scores
    assert quadratic_shapes("sparse") == []


# ----- encoder and arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_encoder_stack(attention):
    torch.manual_seed(0)
    encoder = SparseTransformerEncoder(
        n_layers=2, hidden_size=D, n_heads=H, inner_size=32, hidden_dropout=0.1, attn_dropout=0.1, hidden_act="gelu",
        layer_norm_eps=1e-12, window_size=4, block_size=4, top_blocks=2, attention=attention, branches=["window", "block", "select"],
    )
    x = torch.randn(2, 21, D)
    real = padding_mask([21, 9], 21)
    out = encoder(x, real)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert len(encoder.layers) == 2 and encoder.layers[0].attention.attention == attention
    encoder.eval()
    torch.testing.assert_close(encoder(x, real), encoder(x, real))


@pytest.mark.parametrize("branches", [BRANCHES, ("window",), ("block", "select")])
def test_encoder_shares_one_plan_and_matches_layer_by_layer(branches):
    """The masks the encoder builds once and passes to every layer give what each layer builds alone."""
    torch.manual_seed(0)
    encoder = SparseTransformerEncoder(
        n_layers=2, hidden_size=D, n_heads=H, inner_size=32, hidden_dropout=0.0, attn_dropout=0.0, hidden_act="gelu",
        layer_norm_eps=1e-12, window_size=8, block_size=4, top_blocks=3, branches=branches,
    ).eval()
    x, real = torch.randn(2, 30, D), padding_mask([30, 19], 30, left=True)
    expected = x
    with torch.no_grad():
        for layer in encoder.layers:
            expected = layer(expected, real)  # plan=None: the layer builds its own masks
        torch.testing.assert_close(encoder(x, real), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [dict(branches=()), dict(branches=("window", "global")), dict(attention="flex"), dict(block_size=0),
               dict(dropout_type="weights")]
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SparseAttentionAlignment(D, H, **kwargs)


# ----- the scaling benchmark's FLOP floor and in-process mode ----------------------------------------


def test_flop_floor_by_hand_and_its_trend():
    """L=4, w=2, l=2, n=2, d=1: SAL needs 2+5+4+6 key visits (window + complete blocks + own block, no
    candidate outside the window yet) against dense causal 1+2+3+4; projections 14 vs 8 per token."""
    from recbole_mm.bench.attention import flop_floor

    core, total = flop_floor(4, 1, 1, 2, 2, 2)
    assert core == pytest.approx(17 / 10)
    sparse_proj = 4 * (2 * (6 + 3) + 4 / 2 + 2)  # q, 3 key/value pairs (block pair pooled), out, gates, pooling
    assert total == pytest.approx((4 * 17 + sparse_proj) / (4 * 10 + 8 * 4))
    floors = [flop_floor(n, 64, 2, 32, 16, 4)[1] for n in (512, 1024, 2048, 4096)]
    assert floors == sorted(floors, reverse=True) and floors[-1] < 0.25


def test_interleaved_scaling_table_has_time_ratios_and_floors(capsys):
    from recbole_mm.bench import attention

    attention.main(["--interleave", "--lengths", "16", "--batch", "2", "--hidden", "8", "--window", "4", "--block", "4",
                    "--top", "2", "--repeats", "1", "--threads", "1", "--impls", "sdpa,sal"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| L "))
    assert "SAL/sdpa time" in header and "floor" in header and "MB" not in header  # no memory in one process
    assert "interleaved in one process" in out


def test_timed_waits_for_queued_cuda_work(monkeypatch):
    """On a CUDA device the timer synchronises before starting and after the call (kernels are
    asynchronous: without it a GPU step would be timed at its launch cost); on the CPU it does not."""
    from recbole_mm.bench.attention import timed

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    assert timed(lambda: events.append("call"), "cuda") >= 0
    assert events == ["sync", "call", "sync"]
    events.clear()
    timed(lambda: events.append("call"), "cpu")
    assert events == ["call"]
