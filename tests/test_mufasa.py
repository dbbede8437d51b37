"""MUFASA: trains through stock RecBole, its four fusion losses behave, it is causal, and its sparse
attention recalls an item beyond the reach of window-only attention."""

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset
from recbole.data.interaction import Interaction
from recbole.quick_start import run_recbole
from recbole.utils import init_seed

from recbole_mm.data.synthetic_long import long_range_config, recall_examples, write_long_range_dataset
from recbole_mm.model.layers import mfl
from recbole_mm.model.mufasa import LOSS_NAMES, MUFASA
from planted_eval import assert_full_sort_chunk_invariant

LOSS_FUNCTIONS = {
    "cga": "cross_genre_alignment_loss",
    "col": "collaborative_alignment_loss",
    "sim": "similarity_structure_loss",
    "dist": "distribution_loss",
}


def _model(config_dict, dataset_name="tiny"):
    config = Config(model="MUFASA", dataset=dataset_name, config_dict=config_dict)
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    return MUFASA(config, dataset), dataset


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


def test_stock_run_recbole_completes(tiny_config):
    result = run_recbole(model="MUFASA", dataset="tiny", config_dict=tiny_config(epochs=2, window_size=4, block_size=2, top_blocks=2))
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10", "mrr@10"}
    assert all(0.0 <= value <= 1.0 for value in result["test_result"].values())


# which parameters each auxiliary loss must train (True) or leave alone (False)
TRAINS = {
    "cga": dict(projections=True, gates=True, to_id_space=False, item_embedding=False),
    "col": dict(projections=True, gates=True, to_id_space=True, item_embedding=False),
    "sim": dict(projections=True, gates=True, to_id_space=False, item_embedding=False),
    "dist": dict(projections=True, gates=True, to_id_space=False, item_embedding=False),
}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_each_aux_loss_is_finite_nonzero_and_trains_the_fusion(tiny_config, name):
    model, _ = _model(tiny_config())
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
    model, _ = _model(tiny_config(col_detach_id=False))
    model.mfl_losses(_batch(model))["col"].backward()
    assert _grad(model.item_embedding) > 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_zero_weight_removes_the_term(tiny_config, monkeypatch, name):
    model, _ = _model(tiny_config(**{f"{name}_weight": 0.0}))

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{name} computed with weight 0")

    monkeypatch.setattr(mfl, LOSS_FUNCTIONS[name], must_not_run)
    losses = model.calculate_loss(_batch(model))
    assert isinstance(losses, tuple) and len(losses) == len(LOSS_NAMES)  # rec + the three others
    assert name not in model.mfl_losses(_batch(model))


def test_calculate_loss_is_rec_plus_weighted_terms(tiny_config):
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


def test_distribution_loss_choices_differ(tiny_config):
    values = {}
    for kind in ("uniformity", "gaussian"):
        model, _ = _model(tiny_config(dist_type=kind))
        model.eval()
        values[kind] = float(model.mfl_losses(_batch(model))["dist"])
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


def test_cross_genre_positives_skip_shared_genres():
    title = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    genres = torch.tensor([[1, 2], [2, 0], [3, 0], [4, 0]])  # item 0 shares genre 2 with item 1
    positives = mfl.cross_genre_positives(title, genres, top_k=1)
    assert positives.diagonal().all()
    assert not positives[0, 1] and positives[0, 2]  # most similar cross-genre title
    assert positives.sum(1).tolist() == [2, 2, 2, 2]
    no_genre = mfl.cross_genre_positives(title, torch.zeros(4, 1, dtype=torch.long), top_k=1)
    assert torch.equal(no_genre, torch.eye(4, dtype=torch.bool))


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
