"""MUFASA: trains through stock RecBole, its four fusion losses behave (hand-computed values), it is causal,
it fuses once per step, and its sparse attention recalls an item beyond the reach of window-only attention."""

import logging
import math

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.quick_start import run_recbole

from conftest import build_run
from recbole_mm.bench.long_range import long_range_config, recall_examples, write_long_range_dataset
from recbole_mm.model.layers import mfl
from recbole_mm.model.mufasa import LOSS_NAMES
from planted_eval import assert_full_sort_chunk_invariant, stock_ndcg_bar

LOSS_FUNCTIONS = {
    "cga": "cross_modal_alignment_loss",
    "col": "collaborative_alignment_loss",
    "sim": "similarity_structure_loss",
    "dist": "distribution_loss",
}


ALL_LOSSES = dict(cga_weight=0.1, col_weight=0.1, sim_weight=0.05, dist_weight=0.01)  # the losses are off by default


def _model(config_dict, dataset_name="tiny"):
    run = build_run("MUFASA", config_dict, dataset_name)
    return run.model, run.dataset


def _batch(model, batch_size=16, length=10, seed=0):
    """Random histories of real items (lengths 3..length) and next-item targets."""
    generator = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, model.n_items, (batch_size, length), generator=generator)
    seq_len = torch.randint(3, length + 1, (batch_size,), generator=generator)
    seq[torch.arange(length)[None, :] >= seq_len[:, None]] = 0
    target = torch.randint(1, model.n_items, (batch_size,), generator=generator)
    return Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: seq_len, model.POS_ITEM_ID: target})


def _grad(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_stock_run_recbole_learns(tiny_config, tiny_planted):
    config = tiny_config(epochs=2, learning_rate=0.01, window_size=4, block_size=2, top_blocks=2)
    result = run_recbole(model="MUFASA", dataset="tiny", config_dict=config)
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10", "mrr@10"}
    assert result["test_result"]["ndcg@10"] > stock_ndcg_bar(tiny_planted[0].folder, "tiny")


# which parameters each auxiliary loss must train (True) or leave alone (False)
TRAINS = {
    "cga": dict(projections=True, gates=False, to_id_space=False, item_embedding=False),
    "col": dict(projections=True, gates=True, to_id_space=True, item_embedding=False),
    "sim": dict(projections=True, gates=True, to_id_space=False, item_embedding=False),
    "dist": dict(projections=True, gates=True, to_id_space=False, item_embedding=False),
}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_each_aux_loss_is_finite_nonzero_and_trains_the_fusion(tiny_config, name):
    model, _ = _model(tiny_config(**ALL_LOSSES))
    terms = model.mfl_losses(_batch(model))
    assert list(terms) == list(LOSS_NAMES)
    value = terms[name]
    assert torch.isfinite(value) and abs(float(value.detach())) > 1e-6
    value.backward()
    modules = {"projections": model.fusion.projections, "gates": model.fusion.gates,
               "to_id_space": model.fusion.to_id_space, "item_embedding": model.item_embedding}
    for part, trained in TRAINS[name].items():
        assert (_grad(modules[part]) > 0) == trained, f"{name} -> {part}"
    assert _grad(model.encoder) == 0 and _grad(model.position_embedding) == 0


def test_collaborative_loss_trains_id_embeddings_when_not_detached(tiny_config):
    model, _ = _model(tiny_config(col_detach_id=False, col_weight=0.1))
    model.mfl_losses(_batch(model))["col"].backward()
    assert _grad(model.item_embedding) > 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_zero_weight_removes_the_term(tiny_config, monkeypatch, name):
    model, _ = _model(tiny_config(**{**ALL_LOSSES, f"{name}_weight": 0.0}))

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{name} computed with weight 0")

    monkeypatch.setattr(mfl, LOSS_FUNCTIONS[name], must_not_run)
    losses = model.calculate_loss(_batch(model))
    assert isinstance(losses, tuple) and len(losses) == len(LOSS_NAMES)  # rec + the three others
    assert name not in model.mfl_losses(_batch(model))


def test_calculate_loss_is_rec_plus_weighted_terms(tiny_config):
    """The step's shared fusion gives the same terms as fusing the loss items on their own."""
    model, _ = _model(tiny_config(cga_weight=0.3, col_weight=0.2, sim_weight=0.7, dist_weight=0.5, feature_dropout_prob=0.0))
    model.eval()  # no dropout: both calls see the same vectors
    batch = _batch(model)
    losses = model.calculate_loss(batch)
    terms = model.mfl_losses(batch)
    for weight, (name, value) in zip((0.3, 0.2, 0.7, 0.5), terms.items()):
        torch.testing.assert_close(losses[1 + LOSS_NAMES.index(name)], weight * value)


def test_id_only_ablation_has_no_fusion_and_no_aux_losses(tiny_config):
    model, _ = _model(tiny_config(use_mfl=False))
    assert not hasattr(model, "fusion") and model.active_losses() == []
    ids = torch.arange(1, 6)
    torch.testing.assert_close(model.item_vectors(ids), model.item_embedding(ids))
    assert torch.is_tensor(model.calculate_loss(_batch(model)))


def _content_to_id_rms(model):
    ids = torch.arange(1, model.n_items)
    with torch.no_grad():
        id_part = model.item_embedding(ids)
        content = model.eval().item_vectors(ids) - id_part
    return float(content.pow(2).mean().sqrt() / id_part.pow(2).mean().sqrt())


def test_fusion_init_starts_the_content_part_at_the_id_scale(tiny_config):
    """Under N(0, 0.02) the fusion's three stacked Linear layers shrink the content part to a few
    percent of the ID embedding's rms, so it barely trains early; ``matched`` starts it at that rms."""
    scaled, _ = _model(tiny_config())
    shrunk, _ = _model(tiny_config(fusion_init="normal"))
    assert 0.3 <= _content_to_id_rms(scaled) <= 3.0
    assert _content_to_id_rms(shrunk) < 0.1
    gate = scaled.fusion.gates[scaled.fusion.others[0]].weight
    assert abs(float(gate.std()) * gate.size(1) ** 0.5 - 1.0) < 0.1  # N(0, 1/fan_in)
    torch.testing.assert_close(scaled.item_embedding.weight, shrunk.item_embedding.weight)  # the rest as before


@pytest.mark.parametrize("key,value", [("attn_dropout_type", "weights"), ("dist_type", "cauchy"), ("col_weight", -0.1),
                                       ("fusion_init", "fan_in")])
def test_bad_config_values_are_rejected(tiny_config, key, value):
    with pytest.raises(ValueError, match=key):
        _model(tiny_config(**{key: value}))


@pytest.mark.parametrize("overrides,warned", [
    (dict(window_size=10), True),  # histories of at most 10 items: the window sees them all
    (dict(window_size=4, block_size=2), False),  # the block and select branches reach beyond the window
    (dict(window_size=10, attention="dense"), False),
    (dict(window_size=10, sal_branches=["window"]), False),
])
def test_warns_when_the_window_covers_the_whole_history(tiny_config, caplog, overrides, warned):
    with caplog.at_level(logging.WARNING):
        _model(tiny_config(MAX_ITEM_LIST_LENGTH=10, **overrides))
    assert any("already sees the whole history" in record.getMessage() for record in caplog.records) == warned


def test_losses_are_off_by_default(tiny_config):
    model, _ = _model(tiny_config())
    assert model.active_losses() == [] and torch.is_tensor(model.calculate_loss(_batch(model)))


def test_distribution_loss_choices_differ(tiny_config):
    values = {}
    for kind in ("uniformity", "gaussian"):
        model, _ = _model(tiny_config(dist_type=kind, dist_weight=0.01))
        model.eval()
        values[kind] = float(model.mfl_losses(_batch(model))["dist"].detach())
    assert values["uniformity"] < 0 < values["gaussian"]  # log of a mean below 1 vs a sum of squares


def test_fusion_takes_any_number_of_other_modalities_and_masks_missing_ones():
    layer = mfl.MultimodalFusionLayer({"title": 6, "image": 4, "meta": 5}, hidden_size=8).eval()
    contents = {"title": torch.randn(3, 6), "image": torch.randn(3, 4), "meta": torch.randn(3, 5)}
    masks = {name: torch.ones(3, dtype=torch.bool) for name in contents}
    full = layer(contents, masks)
    masks["meta"] = torch.tensor([True, False, True])
    partial = layer(contents, masks)
    torch.testing.assert_close(partial.fused[[0, 2]], full.fused[[0, 2]])
    assert not torch.allclose(partial.fused[1], full.fused[1])
    without_meta = mfl.MultimodalFusionLayer({"title": 6, "image": 4}, hidden_size=8)
    without_meta.load_state_dict({k: v for k, v in layer.state_dict().items() if "meta" not in k})
    torch.testing.assert_close(without_meta.eval()(contents, masks).fused[1], partial.fused[1])


# ----- each loss against a hand-computed value on a tiny batch -----------------------------------------


def _hand_info_nce(queries, keys, temperature):
    """Row i's -log softmax_j(cos(q_i, k_j) / tau) at j = i, averaged, written with plain Python floats."""
    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    total = 0.0
    for i, q in enumerate(queries):
        logits = [cos(q, k) / temperature for k in keys]
        total += math.log(sum(math.exp(z) for z in logits)) - logits[i]
    return total / len(queries)


def _fused(anchor, others, masks):
    anchor = torch.tensor(anchor)
    others = {k: torch.tensor(v) for k, v in others.items()}
    return mfl.FusedItems(anchor, anchor.clone(), anchor.clone(), others, {k: torch.tensor(v) for k, v in masks.items()})


def test_cross_modal_alignment_by_hand():
    """Symmetric title<->modality InfoNCE over items having both vectors, averaged over modalities."""
    title = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    image = [[1.0, 0.2], [0.3, 1.0], [5.0, -1.0]]
    meta = [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]
    items = _fused(title, {"image": image, "meta": meta},
                   {"title": [True, True, True], "image": [True, True, False], "meta": [True, True, True]})
    tau = 0.5
    image_term = 0.5 * (_hand_info_nce(title[:2], image[:2], tau) + _hand_info_nce(image[:2], title[:2], tau))
    meta_term = 0.5 * (_hand_info_nce(title, meta, tau) + _hand_info_nce(meta, title, tau))
    got = mfl.cross_modal_alignment_loss(items, "title", tau)
    assert got.item() == pytest.approx((image_term + meta_term) / 2, rel=1e-5)
    lonely = _fused(title, {"image": image}, {"title": [True, True, True], "image": [True, False, False]})
    assert mfl.cross_modal_alignment_loss(lonely, "title", tau).item() == 0.0  # one pair: nothing to contrast


def test_collaborative_alignment_by_hand():
    content, ids = [[1.0, 2.0], [-1.0, 0.5], [0.0, 1.0]], [[2.0, 1.0], [-1.0, 1.0], [0.5, 0.5]]
    got = mfl.collaborative_alignment_loss(torch.tensor(content), torch.tensor(ids), 0.1)
    assert got.item() == pytest.approx(_hand_info_nce(content, ids, 0.1), rel=1e-5)


def test_similarity_structure_by_hand():
    """MSE of the off-diagonal cosines (projected vs frozen titles) + hinge on the fused vectors at norm sqrt(d)."""
    anchor = [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]
    title = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]  # already unit length, like the model's title_unit buffer
    fused = [[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    mse = sum((cos(anchor[i], anchor[j]) - cos(title[i], title[j])) ** 2 for i, j in pairs) / len(pairs)
    scaled = [[x * math.sqrt(2) / math.sqrt(sum(y * y for y in row)) for x in row] for row in fused]
    hinge = 0.0
    for dim in range(2):
        column = [row[dim] for row in scaled]
        mean = sum(column) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in column) / 2 + 1e-4)  # unbiased, as torch.var
        hinge += max(0.0, 1.0 - std) / 2
    got = mfl.similarity_structure_loss(torch.tensor(anchor), torch.tensor(title), torch.tensor(fused))
    assert got.item() == pytest.approx(mse + hinge, rel=1e-5)
    # scale-free: multiplying the fused vectors by 1000 changes nothing
    assert mfl.similarity_structure_loss(torch.tensor(anchor), torch.tensor(title), 1000 * torch.tensor(fused)).item() == pytest.approx(got.item(), rel=1e-5)


def test_distribution_losses_by_hand():
    x = [[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]
    unit = [[a / math.sqrt(sum(b * b for b in row)) for a in row] for row in x]
    pairs = [(0, 1), (0, 2), (1, 2)]
    uniform = math.log(sum(math.exp(-2 * sum((unit[i][k] - unit[j][k]) ** 2 for k in range(2))) for i, j in pairs) / 3)
    assert mfl.distribution_loss(torch.tensor(x), "uniformity").item() == pytest.approx(uniform, rel=1e-5)
    mean = [sum(row[k] for row in x) / 3 for k in range(2)]
    cov = [[sum((row[a] - mean[a]) * (row[b] - mean[b]) for row in x) / 2 for b in range(2)] for a in range(2)]
    gauss = (sum(m * m for m in mean) + sum((cov[a][b] - (a == b)) ** 2 for a in range(2) for b in range(2))) / 2
    assert mfl.distribution_loss(torch.tensor(x), "gaussian").item() == pytest.approx(gauss, rel=1e-5)


def test_one_fusion_per_training_step(tiny_config, monkeypatch):
    """History, catalogue scores and the auxiliary losses share one fusion of the step's items."""
    model, _ = _model(tiny_config(**ALL_LOSSES))
    calls = []
    original = model.fusion.forward
    monkeypatch.setattr(model.fusion, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    losses = model.calculate_loss(_batch(model))
    assert len(calls) == 1 and len(losses) == 1 + len(LOSS_NAMES)


def test_bpr_step_fuses_the_batch_items_only(tiny_config):
    model, _ = _model(tiny_config(loss_type="BPR", train_neg_sample_args={"distribution": "uniform", "sample_num": 1}, **ALL_LOSSES))
    batch = _batch(model)
    batch.update(Interaction({model.NEG_ITEM_ID: torch.randint(1, model.n_items, (16,))}))
    ids = model.step_items(batch)
    assert ids.numel() < model.n_items and torch.equal(ids, ids.sort().values)
    model.eval()
    losses = model.calculate_loss(batch)
    with torch.no_grad():  # the rec term equals BPR computed from freshly fused vectors
        seq_output = model(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        torch.testing.assert_close(losses[0], model.recommendation_loss(seq_output, batch))


def test_model_learns_with_every_loss_on(tiny_config):
    """30 Adam steps on the planted tiny data with all four losses: the total loss falls clearly."""
    model, _ = _model(tiny_config(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, **ALL_LOSSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch, totals = _batch(model, batch_size=32), []
    for _ in range(30):
        total = sum(model.calculate_loss(batch))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[-1] < 0.7 * totals[0], totals[::5]


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_whole_model_is_causal(tiny_config, attention):
    """Changing the item at position j changes no user vector read at a position before j."""
    model, _ = _model(tiny_config(MAX_ITEM_LIST_LENGTH=24, window_size=4, block_size=4, top_blocks=2, attention=attention))
    model.eval()
    generator = torch.Generator().manual_seed(3)
    seq = torch.randint(1, model.n_items, (1, 24), generator=generator)
    for j in (5, 13, 23):
        changed = seq.clone()
        changed[0, j] = 1 + (changed[0, j] % (model.n_items - 1))
        for t in range(j):
            length = torch.tensor([t + 1])
            with torch.no_grad():
                torch.testing.assert_close(model(seq, length), model(changed, length))
        with torch.no_grad():
            assert not torch.allclose(model(seq, torch.tensor([j + 1])), model(changed, torch.tensor([j + 1])))


def test_full_sort_is_chunk_invariant_and_matches_predict(tiny_config):
    model, _ = _model(tiny_config(score_chunk_size=7))
    assert_full_sort_chunk_invariant(model, _batch(model, batch_size=4), range(model.n_items))


def _recall_accuracy(model, dataset, n_keys, n_noise, length, steps=100):
    """Train on prefixes ``[.., key, noise x gap, cue] -> answer(key)``; accuracy on fresh prefixes."""

    def examples(n, seed):
        seq, target = recall_examples(n_keys, n_noise, length, n, max_lead=2, seed=seed)
        ids = lambda a: torch.as_tensor(dataset.token2id("item_id", [str(x + 1) for x in a.reshape(-1)])).view(a.shape)
        return ids(seq), ids(target)

    (seq, target), (test_seq, test_target) = examples(512, 1), examples(256, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.randint(0, len(seq), (64,), generator=generator)
        batch = Interaction({model.ITEM_SEQ: seq[rows], model.ITEM_SEQ_LEN: torch.full((64,), length), model.POS_ITEM_ID: target[rows]})
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        (loss if torch.is_tensor(loss) else sum(loss)).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({model.ITEM_SEQ: test_seq, model.ITEM_SEQ_LEN: torch.full((len(test_seq),), length)}))
    return float((scores.argmax(1) == test_target).float().mean())


@pytest.mark.slow
def test_sparse_attention_recalls_an_item_beyond_the_window(isolated_run):
    """The answer depends on a key 9-11 items back; two layers of window-3 attention reach 4 back.

    Full SAL (block + selective branches) finds the key; window-only attention guesses among 8 answers.
    The modality vectors here are random, so the fusion losses are off: this test is about attention.
    """
    n_keys, n_noise, length = 8, 24, 14
    planted = write_long_range_dataset(str(isolated_run), "longrange", n_users=40, n_keys=n_keys, n_noise=n_noise, gap=(8, 8), episodes=2)
    accuracy = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention
    try:
        for branches in (["window", "block", "select"], ["window"]):
            config = long_range_config(
                planted, str(isolated_run), MAX_ITEM_LIST_LENGTH=length, hidden_size=32, inner_size=64, n_layers=2, n_heads=2,
                window_size=3, block_size=4, top_blocks=2, hidden_dropout_prob=0.0, attn_dropout_prob=0.0, sal_branches=branches,
                **{f"{name}_weight": 0.0 for name in LOSS_NAMES},
            )
            model, dataset = _model(config, "longrange")
            accuracy[branches[-1]] = _recall_accuracy(model, dataset, n_keys, n_noise, length)
    finally:
        torch.set_num_threads(threads)
    assert accuracy["select"] > 0.6, accuracy
    assert accuracy["window"] < 0.3, accuracy  # chance is 1/8


def test_long_range_script_reports_its_variants_and_device():
    """``python -m recbole_mm.bench.mufasa --long-range`` end to end on a tiny budget: one row per
    variant, an accuracy in [0, 1], and the device the models ran on (RecBole's choice) in the settings."""
    from recbole_mm.bench.mufasa import long_range

    report = long_range(["--long-range", "--length", "24", "--lead", "2", "--key-run", "2", "--keys", "4",
                         "--noise", "20", "--steps", "2", "--batch", "4", "--hidden", "8",
                         "--variants", "SASRec,MUFASA window-only"])
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert [row.split(" | ")[0] for row in rows] == ["| SASRec", "| MUFASA window-only"]
    assert all(0.0 <= float(row.split(" | ")[1]) <= 1.0 for row in rows)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"device {expected}" in report
