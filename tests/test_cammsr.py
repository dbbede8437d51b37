"""CAMMSR: DyT, the category-guided mixture of experts, the modality swap, RecBole contract, planted pattern."""

import os
import shutil

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import run_recbole
from torch import nn

from planted_eval import assert_full_sort_chunk_invariant, recall_at, target_ranks, train_on_planted
from recbole_mm.data.synthetic import planted_config
from recbole_mm.data.synthetic_cammsr import write_category_modality_dataset
from recbole_mm.model.cammsr import CAMMSR
from recbole_mm.model.layers.dyt import DyT, make_norm
from recbole_mm.model.layers.moe import category_loss


def _model(tiny_config, **overrides):
    return _build(tiny_config(**overrides), "tiny")


def _build(config_dict, dataset_name):
    config = Config(model="CAMMSR", dataset=dataset_name, config_dict=config_dict)
    dataset = create_dataset(config)
    train, _, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    return CAMMSR(config, train._dataset), train, test


def _total(loss):
    return sum(loss) if isinstance(loss, tuple) else loss


# ----- DyT and the pluggable norm ----------------------------------------------------------------


def test_dyt_matches_its_formula():
    layer = DyT(6, alpha_init=0.5)
    assert layer.alpha.item() == 0.5 and torch.equal(layer.weight, torch.ones(6)) and torch.equal(layer.bias, torch.zeros(6))
    with torch.no_grad():
        layer.alpha.fill_(1.7)
        layer.weight.copy_(torch.linspace(-1, 2, 6))
        layer.bias.copy_(torch.linspace(0.3, -0.4, 6))
    x = torch.randn(3, 4, 6)
    expected = layer.weight * torch.tanh(1.7 * x) + layer.bias
    torch.testing.assert_close(layer(x), expected)
    assert isinstance(make_norm("layernorm", 6), nn.LayerNorm)
    with pytest.raises(ValueError):
        make_norm("rmsnorm", 6)


def test_norm_switch_swaps_every_norm(tiny_config):
    outputs = {}
    for norm in ("dyt", "layernorm"):
        model, _, test = _model(tiny_config, norm=norm)
        kinds = {type(module) for module in model.modules()}
        assert (DyT in kinds) == (norm == "dyt") and (nn.LayerNorm in kinds) == (norm == "layernorm")
        model.eval()
        with torch.no_grad():
            outputs[norm] = model.full_sort_predict(next(iter(test))[0])
    assert not torch.allclose(outputs["dyt"], outputs["layernorm"])


# ----- the mixture of experts ----------------------------------------------------------------------


def test_gate_weights_sum_to_one_and_depend_on_the_item(tiny_config):
    model, _, _ = _model(tiny_config)
    model.eval()
    nn.init.normal_(model.mixture.query.weight, std=1.0)  # a gate and ID vectors that have learned something
    nn.init.normal_(model.item_embedding.weight, std=1.0)
    weights = model.gate_weights(torch.arange(1, model.n_items)).detach()
    assert model.mixture.expert_names == ["id", "text", "image", "text*image"]
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(weights)))
    assert (weights >= 0).all()
    assert (weights.max(0).values - weights.min(0).values).min() > 0.05  # every expert's weight varies by item


def test_missing_modality_gets_no_weight(tiny_config):
    model, _, _ = _model(tiny_config)
    model.eval()
    model.feature_mask_image[3] = False
    weights = model.gate_weights(torch.tensor([3, 4])).detach()
    assert weights[0, 2] == 0 and weights[0, 3] == 0 and weights[0, :2].sum() == pytest.approx(1.0)
    assert (weights[1] > 0).all()


def test_category_loss_is_finite_and_reaches_the_gate(tiny_config):
    model, train, _ = _model(tiny_config)
    items = torch.arange(1, model.n_items)
    loss = model.category_loss(model.item_vectors(items), items)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    for name in ("mixture.query.weight", "category_prior.weight", "category_head.weight", "mixture.experts.1.net.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def _train_steps(model, train, steps=2):
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _, batch in zip(range(steps), iter(train)):
        optimizer.zero_grad()
        _total(model.calculate_loss(batch)).backward()
        optimizer.step()
    model.eval()


def test_training_with_the_category_loss_moves_the_gate(tiny_config):
    """Same initial weights, same batches, same random draws: only the category term differs."""
    guided, train, _ = _model(tiny_config)
    unguided, _, _ = _model(tiny_config, cat_weight=0.0)
    assert not hasattr(unguided, "category_head")
    unguided.load_state_dict({k: v for k, v in guided.state_dict().items() if not k.startswith("category_head")})
    items = torch.arange(1, guided.n_items)
    torch.testing.assert_close(guided.eval().gate_weights(items), unguided.eval().gate_weights(items))
    _train_steps(guided, train)
    _train_steps(unguided, train)
    with torch.no_grad():
        moved = (guided.gate_weights(items) - unguided.gate_weights(items)).abs().max()
    assert moved > 1e-3


def test_multilabel_category_loss_is_bce_over_the_multi_hot():
    logits = torch.randn(3, 5)
    categories = torch.tensor([[1, 3], [2, 0], [0, 0]])  # the third item has none: left out
    target = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.float)
    expected = nn.functional.binary_cross_entropy_with_logits(logits[:2, 1:], target[:, 1:])
    torch.testing.assert_close(category_loss(logits, categories, multilabel=True), expected)
    single = category_loss(logits, categories[:, :1], multilabel=False)
    torch.testing.assert_close(single, nn.functional.cross_entropy(logits[:2], torch.tensor([1, 2])))


def test_token_seq_category_field_trains_with_bce(tiny_planted, tiny_config, tmp_path):
    """Genres-like categories (token_seq): the model switches to the multi-label loss."""
    planted, data_path = tiny_planted
    folder = tmp_path / "tinyseq"
    shutil.copytree(planted.folder, folder)
    for name in os.listdir(folder):
        os.rename(folder / name, folder / name.replace("tiny", "tinyseq"))
    rows = (folder / "tinyseq.item").read_text().splitlines()[1:]
    lines = ["item_id:token\tcategory:token_seq"] + [f"{row} g{i % 3}" for i, row in enumerate(rows)]
    (folder / "tinyseq.item").write_text("\n".join(lines) + "\n")
    config_dict = tiny_config()
    config_dict["data_path"] = str(tmp_path)
    model, train, _ = _build(config_dict, "tinyseq")
    assert model.category_multilabel and model.item_categories.shape[1] == 2
    loss = model.calculate_loss(next(iter(train)))
    assert len(loss) == 3 and all(torch.isfinite(term) for term in loss)


# ----- modality swap and the loss terms ------------------------------------------------------------


def test_swapped_view_differs_from_the_original(tiny_config):
    model, train, _ = _model(tiny_config)
    model.eval()
    batch = next(iter(train))
    item_seq, item_seq_len = batch["item_id_list"], batch["item_length"]
    mixture = model.item_mixture(torch.arange(model.n_items))
    swapped = model.mixture.swapped(mixture, model.swap_pool)
    assert model.swap_pool == [1, 2]
    # by hand: the text expert reads the image projection and vice versa, gate weights unchanged
    e, text, image = mixture.sources
    experts = model.mixture.experts
    outputs = [experts[0](e), experts[1](image), experts[2](text), experts[3](torch.cat([image, text, image * text], -1))]
    torch.testing.assert_close(swapped[1:], sum(mixture.weights[1:, k : k + 1] * out[1:] for k, out in enumerate(outputs)))
    relative = (swapped - mixture.mixed).norm(dim=-1) / mixture.mixed.norm(dim=-1)
    assert relative[1:].min() > 1e-3
    torch.manual_seed(5)
    positions = model.swap_positions(item_seq, item_seq_len)
    assert positions.any(-1).all() and not (positions & (item_seq == 0)).any()
    torch.manual_seed(5)
    view_items = model.swapped_sequence(mixture, torch.arange(model.n_items), item_seq, item_seq_len)
    torch.testing.assert_close(view_items, torch.where(positions.unsqueeze(-1), swapped[item_seq], mixture.mixed[item_seq]))
    original = model.encode(mixture.mixed[item_seq], item_seq, item_seq_len)
    view = model.encode(view_items, item_seq, item_seq_len)
    change = (view - original).norm(dim=-1) / original.norm(dim=-1)
    assert change.min() > 1e-5 and change.mean() > 1e-3  # every sequence changes (little at init, where experts ~ identity)


@pytest.mark.parametrize("weights, terms", [({}, 3), ({"cat_weight": 0.0}, 2), ({"cl_weight": 0.0}, 2), ({"cat_weight": 0.0, "cl_weight": 0.0}, 1)])
def test_a_zero_weight_removes_its_term(tiny_config, weights, terms):
    model, train, _ = _model(tiny_config, **weights)
    calls = []
    original = model.encode
    model.encode = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    loss = model.calculate_loss(next(iter(train)))
    loss = loss if isinstance(loss, tuple) else (loss,)
    assert len(loss) == terms and all(torch.isfinite(term) and term > 0 for term in loss)
    assert len(calls) == (2 if weights.get("cl_weight", 0.1) > 0 else 1)
    assert hasattr(model, "category_head") == (weights.get("cat_weight", 0.1) > 0)


def test_swap_loss_trains_encoder_and_experts(tiny_config):
    model, train, _ = _model(tiny_config, cat_weight=0.0)
    _, cl_loss = model.calculate_loss(next(iter(train)))
    cl_loss.backward()
    for name in ("encoder.layers.0.attention.qkv.weight", "mixture.experts.2.net.3.weight", "mixture.query.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


def test_time_embedding_changes_the_user_vector(tiny_config):
    model, _, test = _model(tiny_config, n_time_buckets=8)
    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        with_time = model.user_vectors(interaction)
        model.n_time_buckets = 0
        without = model.user_vectors(interaction)
    assert not torch.allclose(with_time, without)


# ----- RecBole contract ---------------------------------------------------------------------------


def test_full_sort_is_chunk_invariant_and_matches_predict(tiny_config):
    model, _, test = _model(tiny_config, score_chunk_size=7)
    assert_full_sort_chunk_invariant(model, next(iter(test))[0], [1, 5, model.n_items - 1])


def test_stock_run_recbole_returns_metrics(tiny_config):
    result = run_recbole(model="CAMMSR", dataset="tiny", config_dict=tiny_config(epochs=1))
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


# ----- planted pattern: the informative modality depends on the category -------------------------


@pytest.fixture(scope="module")
def category_modality(tmp_path_factory):
    """Category 'by_text' shows the cluster only in text, 'by_image' only in image; content alone
    does not reveal the category (signature_scale 0), the category label does."""
    data_path = str(tmp_path_factory.mktemp("catmod"))
    planted = write_category_modality_dataset(
        data_path, name="catmod", n_users=150, n_items=300, n_clusters=10, seq_len=(8, 12),
        popularity_exponent=0.5, signature_scale=0.0, seed=3,
    )
    return planted, data_path


def _item_groups(planted, dataset):
    """Inner item ids 1..n-1 with their planted category and cluster."""
    ids = torch.arange(1, dataset.item_num)
    index = np.array([int(token) - 1 for token in dataset.field2id_token["item_id"][ids.numpy()]])
    return ids, planted.item_category[index], planted.item_cluster[index]


def _neighbour_purity(model, ids, clusters):
    """Share of items whose nearest other item (cosine of item vectors) is in the same cluster."""
    with torch.no_grad():
        vectors = nn.functional.normalize(model.item_vectors(ids), dim=-1)
    similarity = vectors @ vectors.t()
    similarity.fill_diagonal_(-2.0)
    return float((clusters[similarity.argmax(1).numpy()] == clusters).mean())


def test_gate_learns_the_informative_modality_per_category(category_modality):
    planted, data_path = category_modality
    settings = dict(epochs=6, train_batch_size=128, hidden_size=32, inner_size=64, n_layers=1, n_heads=1,
                    hidden_dropout_prob=0.2, attn_dropout_prob=0.2, learning_rate=0.01, MAX_ITEM_LIST_LENGTH=10)
    results = {}
    for gating in ("attentive", "mean"):
        model, dataset, test_data, _ = train_on_planted("CAMMSR", planted_config(planted, data_path, gating=gating, **settings), "catmod")
        ids, categories, clusters = _item_groups(planted, dataset)
        ranks, _ = target_ranks(model, test_data)
        with torch.no_grad():
            weights = model.gate_weights(ids).numpy()
        results[gating] = dict(recall=recall_at(ranks, 10), purity=_neighbour_purity(model, ids, clusters), weights=weights)
    weights, names = results["attentive"]["weights"], ["id", "text", "image", "text*image"]
    for category, trusted in enumerate(planted.informative):
        other = "image" if trusted == "text" else "text"
        mean_weight = weights[categories == category].mean(0)
        assert mean_weight[names.index(trusted)] > mean_weight[names.index(other)] + 0.1, (trusted, mean_weight)
    attentive, mean = results["attentive"], results["mean"]
    summary = {gating: (r["recall"], r["purity"]) for gating, r in results.items()}
    assert attentive["recall"] > 5 * 10 / planted.item_cluster.size, summary  # far above random ranking
    assert attentive["recall"] > mean["recall"] + 0.03, summary
    assert attentive["purity"] > mean["purity"] + 0.05, summary
