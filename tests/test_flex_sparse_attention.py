"""FlexSparseAttention: SAL's window and block branches as flex_attention kernels, equal to the reference.

On the CPU flex_attention runs forward only (eager), so the CPU tests compare outputs; the CUDA test
(skipped without a GPU) compares outputs and every gradient. No conftest fixture is used, so the
file also runs alone on a GPU machine: ``pytest --noconftest tests/test_flex_sparse_attention.py``.
"""

import warnings

import pytest
import torch

from recbole_mm.model.layers.flex_sparse_attention import FLEX_TILE, FlexPlan, FlexSparseAttention, flex_available
from recbole_mm.model.layers.sparse_attention import SparseAttentionAlignment, SparsePlan

pytestmark = pytest.mark.skipif(not flex_available(), reason="torch without flex_attention")

CASES = [  # (length, attention dropout, left padding, branches, select_outside_window)
    (40, 0.0, False, ("window", "block", "select"), True),
    (200, 0.0, True, ("window", "block", "select"), True),
    (300, 0.5, True, ("window", "block", "select"), True),
    (257, 0.5, False, ("window", "block", "select"), False),
    (130, 0.3, True, ("window",), True),
    (150, 0.5, False, ("block", "select"), True),
    (90, 0.5, True, ("window", "select"), True),
]


def pair(branches=("window", "block", "select"), dropout=0.0, outside=True, device="cpu", seed=0):
    """The reference layer and a flex one with the same (perturbed, so gates are not at init) weights."""
    torch.manual_seed(seed)
    reference = SparseAttentionAlignment(64, 2, 32, 16, 4, attn_dropout=dropout, branches=branches, select_outside_window=outside)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    flex = FlexSparseAttention(64, 2, 32, 16, 4, attn_dropout=dropout, branches=branches, select_outside_window=outside)
    flex.load_state_dict(reference.state_dict())
    return reference.to(device).train(), flex.to(device).train()


def batch(length, left, device="cpu", seed=1):
    """Three rows of ``length``: full, a third real, 5 real; left- or right-padded."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, length, 64, generator=generator).to(device)
    real = torch.ones(3, length, dtype=torch.bool)
    for row, n in enumerate((length, length // 3, 5)):
        real[row, slice(0, length - n) if left else slice(n, None)] = False
    return hidden, real.to(device)


def run(module, hidden, real, seed=7):
    """Output with DropKey drawn from ``seed``."""
    torch.manual_seed(seed)
    if hidden.is_cuda:
        torch.cuda.manual_seed(seed)
    return module(hidden, real)


@pytest.mark.parametrize("length,dropout,left,branches,outside", CASES)
def test_flex_forward_equals_the_reference(length, dropout, left, branches, outside):
    """Same outputs, DropKey included (the flex path draws the reference's numbers in its order)."""
    reference, flex = pair(branches, dropout, outside)
    hidden, real = batch(length, left)
    assert isinstance(flex.plan(real), FlexPlan)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is unfused
        expected, got = run(reference, hidden, real), run(flex, hidden, real)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    if dropout:  # dropping keys really changed the output (the equality above is not of dropout-free runs)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert not torch.allclose(run(flex, hidden, real, seed=8), got, atol=1e-4)


def test_flex_path_is_taken_only_where_asked_and_useful():
    """use_flex and L > w: the flex plan; L <= w (one causal SDPA call) or use_flex=False: the reference's."""
    layer = FlexSparseAttention(64, 2, 32, 16, 4)
    long_rows, short_rows = torch.ones(2, 100, dtype=torch.bool), torch.ones(2, 32, dtype=torch.bool)
    assert isinstance(layer.plan(long_rows), FlexPlan)
    assert type(layer.plan(short_rows)) is SparsePlan
    layer.use_flex = False
    assert type(layer.plan(long_rows)) is SparsePlan


def test_flex_path_says_it_cannot_train_on_the_cpu():
    layer = FlexSparseAttention(64, 2, 32, 16, 4)
    hidden = torch.randn(2, 100, 64, requires_grad=True)
    with pytest.raises(RuntimeError, match="trains on CUDA only"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer(hidden, torch.ones(2, 100, dtype=torch.bool))


def test_flex_layer_has_the_reference_parameters():
    reference, flex = pair()
    assert list(flex.state_dict()) == list(reference.state_dict())


def test_block_masks_are_built_from_tiles_not_from_pairs():
    """The window's BlockMask lists, per query tile, only the tiles that can hold a window key (its own
    and the previous one), and the block branch's only tiles of complete blocks: no [L, L] tensor."""
    layer = FlexSparseAttention(64, 2, 32, 16, 4)
    real = torch.ones(2, 4 * FLEX_TILE, dtype=torch.bool)
    real[1, :FLEX_TILE + 5] = False  # row 1: its first tile holds no real key
    plan = layer.plan(real)
    window = plan.window_visible_tiles
    assert window.shape == (2, 4, 4)
    assert window[0].sum(-1).tolist() == [1, 2, 2, 2] and window[1, :, 0].sum() == 0
    assert window[0].triu(1).sum() == 0  # causal at tile level
    block = plan.block_visible_tiles
    assert block.shape == (2, 4, 1)  # 32 compressed keys fit one tile


def test_dropkey_restores_a_query_that_lost_every_key():
    """A query whose every visible key was dropped keeps them all, as the reference's SDPA path does."""
    layer = FlexSparseAttention(64, 2, 32, 16, 4)
    plan = layer.plan(torch.ones(1, 64, dtype=torch.bool))
    keep = torch.ones(1, 4, 64, dtype=torch.bool)
    keep[0, 1] = False  # query block 1 (positions 16-31) lost every key
    lost = plan._window_lost(keep)
    assert lost[0, 16:32].all() and not lost[0, :16].any() and not lost[0, 32:64].any()
    block_keep = torch.ones(1, 4, 4, dtype=torch.bool)
    block_keep[0, 1, 0] = False  # block 0 dropped for query block 1 (16-31): those seeing block 0 only lose it all
    lost = plan._block_lost(block_keep)
    assert lost[0, 16:31].all() and not lost[0, 31]  # position 31 also sees block 1, complete there
    assert not lost[0, :15].any()  # before the first complete block nothing is seen, so nothing is lost


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention's backward needs CUDA")
@pytest.mark.parametrize("length,dropout,left,branches,outside", [CASES[2], CASES[3], (1024, 0.5, True, ("window", "block", "select"), True)])
def test_flex_equals_the_reference_with_gradients_on_cuda(length, dropout, left, branches, outside):
    """Compiled flex kernels: outputs within 1e-5 of the reference, every gradient (input and parameters)
    within 1e-5 of its largest entry."""
    torch.backends.cuda.matmul.allow_tf32 = False
    reference, flex = pair(branches, dropout, outside, device="cuda")
    hidden, real = batch(length, left, device="cuda")
    grads = []
    for module in (reference, flex):
        x = hidden.clone().requires_grad_(True)
        out = run(module, x, real)
        out.square().sum().backward()
        grads.append((out.detach(), x.grad, {name: p.grad for name, p in module.named_parameters()}))
    (out_ref, x_ref, p_ref), (out_flex, x_flex, p_flex) = grads
    assert (out_flex - out_ref).abs().max() <= 1e-5
    for name, got, expected in [("input", x_flex, x_ref)] + [(name, p_flex[name], grad) for name, grad in p_ref.items()]:
        scale = max(1.0, expected.abs().max().item())  # fp32 sums in another order: relative to the largest entry
        assert (got - expected).abs().max() <= 1e-5 * scale, name


def test_flex_path_refuses_probability_dropout():
    with pytest.raises(ValueError, match="drops keys only"):
        FlexSparseAttention(64, 2, 32, 16, 4, attn_dropout=0.1, dropout_type="probs")
    FlexSparseAttention(64, 2, 32, 16, 4, attn_dropout=0.1, dropout_type="probs", use_flex=False)  # the reference path's


def test_scaling_table_compares_the_flex_path_with_sal_and_the_floor():
    """bench.attention's table with the flex implementation: its ratio to SDPA, to SAL and to the floor."""
    from types import SimpleNamespace

    from recbole_mm.bench.attention import flop_floor, table

    args = SimpleNamespace(hidden=64, heads=2, window=32, block=16, top=4)
    results = {("sdpa", 2048): {"ms": 4.0}, ("sal", 2048): {"ms": 10.0}, ("flex", 2048): {"ms": 15.0}}
    lines = table(results, [2048], ["sdpa", "sal", "flex"], args).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    row = dict(zip(header, (cell.strip() for cell in lines[2].strip("|").split("|"))))
    assert row["SAL-flex/sdpa time"] == "3.750" and row["SAL-flex/SAL time"] == "1.500" and row["SAL/sdpa time"] == "2.500"
    floor = flop_floor(2048, 64, 2, 32, 16, 4)[1]
    assert row["SAL-flex/sdpa time / floor"] == f"{3.75 / floor:.2f}"
