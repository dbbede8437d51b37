"""SASRecMM trains through RecBole, uses its modalities, and beats ID-only SASRec on rare items."""

import numpy as np
import pytest
import torch
from recbole.quick_start import run_recbole

from conftest import build_run
from planted_eval import assert_full_sort_chunk_invariant, recall_at, stock_ndcg_bar, target_ranks, train_on_planted
from recbole_mm.bench.planted import planted_config, write_planted_dataset
from recbole_mm.model.sasrecmm import SASRecMM


def _model(tiny_config, **overrides):
    run = build_run("SASRecMM", tiny_config(**overrides))
    assert isinstance(run.model, SASRecMM)
    return run.model, run.train, run.test


def test_full_sort_is_chunk_invariant_and_matches_predict(tiny_config):
    model, _, test = _model(tiny_config, score_chunk_size=7)
    assert_full_sort_chunk_invariant(model, next(iter(test))[0], [5])


@pytest.mark.parametrize("fusion", ["sum", "gated"])
def test_modalities_change_the_item_vectors(tiny_config, fusion):
    model, _, _ = _model(tiny_config, fusion=fusion)
    ids = torch.arange(1, 6)
    before = model.item_vectors(ids).detach().clone()
    getattr(model, f"feature_{model.modalities[0]}")[ids] += 1.0
    assert not torch.allclose(before, model.item_vectors(ids))


def test_missing_feature_items_fall_back_to_id(tiny_config):
    model, _, _ = _model(tiny_config)
    model.eval()
    item = torch.tensor([3])
    for name in model.modalities:
        getattr(model, f"feature_mask_{name}")[3] = False
    torch.testing.assert_close(model.item_vectors(item), model.item_embedding(item))


@pytest.mark.slow
def test_stock_run_recbole_learns(tiny_config, tiny_planted):
    result = run_recbole(model="SASRecMM", dataset="tiny", config_dict=tiny_config(epochs=2, learning_rate=0.01))
    assert result["test_result"]["ndcg@10"] > stock_ndcg_bar(tiny_planted[0].folder, "tiny")


@pytest.fixture(scope="module")
def cold_planted(tmp_path_factory):
    data_path = str(tmp_path_factory.mktemp("cold"))
    planted = write_planted_dataset(
        data_path, name="cold", n_users=300, n_items=400, n_clusters=20, seq_len=(8, 20), popularity_exponent=1.0, seed=3
    )
    return planted, data_path


@pytest.mark.slow
def test_sasrecmm_beats_sasrec_on_rare_items(cold_planted):
    """Next cluster is planted; content reveals a rare item's cluster, its few interactions barely do.

    Clusters hold 20 items, so Recall@20 asks for the right cluster; rare = at most 5 interactions.
    SASRecMM drops ID vectors in training (``id_dropout_prob``) so content must stand alone.
    """
    planted, data_path = cold_planted
    settings = dict(epochs=25, train_batch_size=128, hidden_size=32, inner_size=64, n_layers=1, n_heads=1,
                    hidden_dropout_prob=0.2, attn_dropout_prob=0.2, learning_rate=0.005, MAX_ITEM_LIST_LENGTH=10)
    results = {}
    for name in ("SASRec", "SASRecMM"):
        config = planted_config(planted, data_path, **settings, **({"id_dropout_prob": 0.5} if name == "SASRecMM" else {}))
        model, dataset, test_data, trainer = train_on_planted(name, config, "cold")
        ranks, targets = target_ranks(model, test_data)
        tokens = dataset.field2id_token["item_id"][targets]
        counts = planted.item_count[np.array([int(t) - 1 for t in tokens])]
        results[name] = (recall_at(ranks, 20), recall_at(ranks[counts <= 5], 20))
    n_items = 400
    sasrec_all, sasrec_rare = results["SASRec"]
    mm_all, mm_rare = results["SASRecMM"]
    assert mm_rare > 20 / n_items * 10, results  # far above random ranking on rare targets
    assert mm_rare > sasrec_rare + 0.1, results
    assert mm_all >= sasrec_all - 0.02, results
