"""CAMMSR: DyT, the category-guided mixture of experts, the modality swap, RecBole contract, planted pattern."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import run_recbole
from torch import nn

from planted_eval import assert_full_sort_chunk_invariant, recall_at, stock_ndcg_bar, target_ranks, train_on_planted
from recbole_mm.bench.planted import planted_config
from fixtures.category_modality import write_category_modality_dataset
from recbole_mm.model.cammsr import CAMMSR
from recbole_mm.model.layers.dyt import DyT, make_norm
from recbole_mm.model.layers.moe import category_loss, info_nce, present_cycle
from recbole.model.sequential_recommender import SASRec


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
        kinds = {type(module) for module in model.encoder.modules()}
        assert (DyT in kinds) == (norm == "dyt") and (nn.LayerNorm in kinds) == (norm == "layernorm")
        assert isinstance(model.input_norm, nn.LayerNorm)  # input_norm is its own switch
        model.eval()
        with torch.no_grad():
            outputs[norm] = model.full_sort_predict(next(iter(test))[0])
    assert not torch.allclose(outputs["dyt"], outputs["layernorm"])


# ----- scale at init (a test the first version failed: user vector ~0.02x, logits ~0.01x SASRec's) ----


def _init_scale(model, batch):
    """``(user-vector rms, logit std)`` of a freshly built model on one batch (eval mode)."""
    model.eval()
    with torch.no_grad():
        user = model.forward(batch["item_id_list"], batch["item_length"])
        items = model.item_vectors(torch.arange(model.n_items)) if isinstance(model, CAMMSR) else model.item_embedding.weight
    return user.pow(2).mean().sqrt().item(), (user @ items.t()).std().item()


def test_user_vector_and_logit_scale_at_init_match_sasrec(tiny_config):
    model, train, _ = _model(tiny_config)
    torch.manual_seed(0)
    sasrec = SASRec(Config(model="SASRec", dataset="tiny", config_dict=tiny_config()), train._dataset)
    batch = next(iter(train))
    ours, reference = _init_scale(model, batch), _init_scale(sasrec, batch)
    for name, value, target in zip(("user rms", "logit std"), ours, reference):
        assert 0.3 < value / target < 3.0, (name, value, target)


def test_unit_gain_dyt_passes_small_signals_unchanged():
    layer = DyT(8, alpha_init=0.5, unit_gain=True)
    x = 1e-3 * torch.randn(4, 8)
    torch.testing.assert_close(layer(x), x, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(DyT(8, alpha_init=0.5)(x), 0.5 * x, rtol=1e-4, atol=1e-9)  # the paper's init halves it
    with pytest.raises(ValueError):
        DyT(8, alpha_init=0.0)


# ----- the mixture of experts ----------------------------------------------------------------------


def test_item_vector_is_the_id_plus_the_gated_content(tiny_config):
    """``z = e_id + sum_k a_k o_k``; with a mean gate and experts at their residual input this is
    SASRecMM's ``e + sum_m P_m x_m`` up to the 1/K weights."""
    model, _, _ = _model(tiny_config, gating="mean", synergy_experts=False, feature_dropout_prob=0.0)
    model.eval()
    assert model.mixture.expert_names == ["text", "image"]
    for expert in model.mixture.experts:
        nn.init.zeros_(expert.net[-1].weight)
    items = torch.arange(1, model.n_items)
    contents, _ = model.modality_lookup(items)
    projected = [model.mixture.projections[m](contents[m]) for m in ("text", "image")]
    expected = model.item_embedding(items) + 0.5 * (projected[0] + projected[1])
    torch.testing.assert_close(model.item_vectors(items), expected)


def test_gate_weights_sum_to_one_and_depend_on_the_item(tiny_config):
    model, _, _ = _model(tiny_config)
    model.eval()
    weights = model.gate_weights(torch.arange(1, model.n_items)).detach()
    assert model.mixture.expert_names == ["text", "image", "text*image"]
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(weights)))
    assert (weights >= 0).all()
    assert (weights.max(0).values - weights.min(0).values).min() > 0.05  # already at init: normalised gate inputs


def test_missing_modality_gets_no_weight(tiny_config):
    model, _, _ = _model(tiny_config)
    model.eval()
    model.feature_mask_image[3] = False
    weights = model.gate_weights(torch.tensor([3, 4])).detach()
    assert weights[0, 1] == 0 and weights[0, 2] == 0 and weights[0, 0] == pytest.approx(1.0)
    assert (weights[1] > 0).all()
    model.feature_mask_text[3] = False  # no content at all: the ID alone, no NaN
    mixture = model.item_mixture(torch.tensor([3]))
    assert (mixture.weights == 0).all()
    torch.testing.assert_close(mixture.mixed, model.item_embedding(torch.tensor([3])))


def test_train_and_eval_gate_statistics_agree(tiny_config):
    """No training-only change of the mixture (the first version dropped the ID expert of half the
    items in training: mean ID weight .13 in training, .25 at inference)."""
    model, train, _ = _model(tiny_config, id_dropout_prob=0.5)
    _train_steps(model, train, steps=3)
    items = torch.arange(1, model.n_items)
    with torch.no_grad():
        evaluated = model.eval().gate_weights(items).mean(0)
        trained = torch.stack([model.train().gate_weights(items).mean(0) for _ in range(5)]).mean(0)
    assert (trained - evaluated).abs().max() < 0.02, (trained, evaluated)


def test_category_loss_is_finite_and_reaches_the_gate(tiny_config):
    model, train, _ = _model(tiny_config, category_prior=True)
    items = torch.arange(1, model.n_items)
    loss = model.category_loss(model.item_mixture(items), items)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    for name in ("mixture.query.weight", "mixture.log_temperature", "category_prior.weight", "category_head.weight", "mixture.experts.1.net.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def _train_steps(model, train, steps=2, loss_of=None):
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for _, batch in zip(range(steps), _batches(train)):
        optimizer.zero_grad()
        loss = _total(model.calculate_loss(batch)) if loss_of is None else loss_of(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    model.eval()
    return losses


def _batches(train):
    while True:
        yield from iter(train)


def _category_loss_alone(model, batch):
    items = torch.arange(1, model.n_items)
    return model.category_loss(model.item_mixture(items), items)


def test_the_gates_weights_move_under_the_category_loss_alone(tiny_config):
    model, train, _ = _model(tiny_config)
    items = torch.arange(1, model.n_items)
    with torch.no_grad():
        before = model.eval().gate_weights(items)
    query = model.mixture.query.weight.detach().clone()
    _train_steps(model, train, steps=5, loss_of=_category_loss_alone)
    with torch.no_grad():
        after = model.gate_weights(items)
    assert not torch.equal(query, model.mixture.query.weight)
    assert (after - before).abs().mean() > 0.01, (after - before).abs().mean()


@pytest.mark.parametrize("category_prior", [False, True])
def test_category_noise_bench_variant_keeps_the_model_buildable(tiny_config, category_prior):
    """The label-reading prior is optional and off by default; when on, it is a learned table."""
    model, _, _ = _model(tiny_config, category_prior=category_prior)
    assert hasattr(model, "category_prior") == category_prior
    assert _model(tiny_config)[0].use_category_prior is False


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


# ----- modality swap and the contrastive loss ------------------------------------------------------


def test_swapped_view_moves_expert_outputs_between_modalities(tiny_config):
    model, train, _ = _model(tiny_config)
    model.eval()
    batch = next(iter(train))
    item_seq, item_seq_len = batch["item_id_list"], batch["item_length"]
    mixture = model.item_mixture(torch.arange(model.n_items))
    e = mixture.base
    a, o = mixture.weights, mixture.experts
    # by hand: the text slot carries the image expert's output and vice versa, weights and synergy kept
    by_hand = e + a[:, 0:1] * o[:, 1] + a[:, 1:2] * o[:, 0] + a[:, 2:3] * o[:, 2]
    swapped = model.mixture.swapped(mixture, "experts")
    torch.testing.assert_close(swapped[1:], by_hand[1:])
    # sources: the experts re-run on swapped projections
    _, text, image = mixture.sources
    experts = model.mixture.experts
    outputs = [experts[0](image, image), experts[1](text, text), experts[2](torch.cat([image, text, image * text], -1), 0.5 * (image + text))]
    by_hand = e + sum(a[:, k : k + 1] * out for k, out in enumerate(outputs))
    torch.testing.assert_close(model.mixture.swapped(mixture, "sources")[1:], by_hand[1:])
    relative = (swapped - mixture.mixed).norm(dim=-1) / mixture.mixed.norm(dim=-1)
    assert relative[1:].min() > 1e-3
    torch.manual_seed(5)
    positions = model.swap_positions(item_seq, item_seq_len)
    assert positions.any(-1).all() and not (positions & (item_seq == 0)).any()
    torch.manual_seed(5)
    view_items = model.swapped_sequence(mixture, mixture.mixed, torch.arange(model.n_items), item_seq, item_seq_len)
    torch.testing.assert_close(view_items, torch.where(positions.unsqueeze(-1), swapped[item_seq], mixture.mixed[item_seq]))
    original = model.encode(mixture.mixed[item_seq], item_seq, item_seq_len)
    view = model.encode(view_items, item_seq, item_seq_len)
    change = (view - original).norm(dim=-1) / original.norm(dim=-1)
    assert change.min() > 1e-5 and change.mean() > 1e-3


@pytest.mark.parametrize("mode", ["experts", "sources"])
def test_swap_with_a_missing_modality_keeps_the_content(tiny_config, mode):
    model, _, _ = _model(tiny_config, swap_mode=mode)
    model.eval()
    model.feature_mask_image[3] = False
    mixture = model.item_mixture(torch.tensor([3, 4]))
    swapped = model.mixture.swapped(mixture, mode)
    torch.testing.assert_close(swapped[0], mixture.mixed[0])  # text only: nothing to swap with, text kept
    assert not torch.allclose(swapped[1], mixture.mixed[1])


def test_single_modality_swap_carries_items_by_their_content(tiny_config):
    """With one modality there is nothing to swap in: the view drops the ID residual (content only);
    with the ID as an expert, the ID and the modality expert trade places."""
    model, _, _ = _model(tiny_config, modalities=["text"])
    model.eval()
    assert model.mixture.expert_names == ["text"]
    mixture = model.item_mixture(torch.arange(1, model.n_items))
    torch.testing.assert_close(model.mixture.swapped(mixture), mixture.mixed - mixture.base)
    expert, _, _ = _model(tiny_config, modalities=["text"], id_path="expert")
    expert.eval()
    mixture = expert.item_mixture(torch.arange(1, expert.n_items))
    a, o = mixture.weights, mixture.experts
    torch.testing.assert_close(expert.mixture.swapped(mixture), a[:, :1] * o[:, 1] + a[:, 1:] * o[:, 0])


def test_present_cycle_shifts_among_present_slots_only():
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False], [False, False, False]])
    expected = torch.tensor([[1, 2, 0], [2, 1, 0], [0, 1, 2], [0, 1, 2]])
    assert torch.equal(present_cycle(present), expected)


def test_info_nce_matches_a_hand_computed_reference_with_false_negatives():
    torch.manual_seed(0)
    anchor, positive, temperature = torch.randn(5, 4), torch.randn(5, 4), 0.3
    users, targets = torch.tensor([1, 1, 2, 3, 3]), torch.tensor([7, 8, 9, 7, 6])
    same = (users[:, None] == users[None]) | (targets[:, None] == targets[None])
    cos = [[float(nn.functional.cosine_similarity(anchor[i], positive[j], dim=0)) / temperature for j in range(5)] for i in range(5)]

    def row_loss(i, by_row):
        score = (lambda j: cos[i][j]) if by_row else (lambda j: cos[j][i])
        negatives = [j for j in range(5) if j != i and not same[i, j]]
        return -score(i) + np.log(np.exp(score(i)) + sum(np.exp(score(j)) for j in negatives))

    expected = 0.5 * (np.mean([row_loss(i, True) for i in range(5)]) + np.mean([row_loss(i, False) for i in range(5)]))
    assert float(info_nce(anchor, positive, temperature, same)) == pytest.approx(expected, rel=1e-5)
    unmasked = 0.5 * sum(nn.functional.cross_entropy(m, torch.arange(5)) for m in (torch.tensor(cos), torch.tensor(cos).t()))
    assert float(info_nce(anchor, positive, temperature)) == pytest.approx(float(unmasked), rel=1e-5)


def test_false_negatives_are_same_user_or_same_target(tiny_config):
    model, _, _ = _model(tiny_config)
    interaction = {model.USER_ID: torch.tensor([1, 1, 2, 3]), model.POS_ITEM_ID: torch.tensor([5, 6, 7, 5])}
    expected = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(model.false_negatives(interaction), expected)
    assert torch.equal(model.false_negatives(interaction, torch.tensor([3, 0])), torch.ones(2, 2, dtype=torch.bool))


def test_contrastive_weight_ramps_up_and_runs_on_a_share_of_rows(tiny_config):
    model, train, _ = _model(tiny_config, cat_weight=0.0, cl_warmup_steps=4, cl_rows=0.5)
    batch = next(iter(train))
    seen = []
    original = model.encode
    model.encode = lambda items, seq, *args: seen.append(len(seq)) or original(items, seq, *args)
    ramps = []
    for _ in range(6):
        model.calculate_loss(batch)
        ramps.append(model.cl_ramp())
    assert ramps == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert seen[:2] == [len(batch), int(np.ceil(0.5 * len(batch)))]
    assert int(model.state_dict()["train_steps"]) == 6  # the ramp resumes from a checkpoint


@pytest.mark.parametrize("weights, terms", [({}, 3), ({"cat_weight": 0.0}, 2), ({"cl_weight": 0.0}, 2), ({"cat_weight": 0.0, "cl_weight": 0.0}, 1)])
def test_a_zero_weight_removes_its_term(tiny_config, weights, terms):
    model, train, _ = _model(tiny_config, cl_warmup_steps=0, **weights)
    calls = []
    original = model.encode
    model.encode = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    loss = model.calculate_loss(next(iter(train)))
    loss = loss if isinstance(loss, tuple) else (loss,)
    assert len(loss) == terms and all(torch.isfinite(term) and term > 0 for term in loss)
    assert len(calls) == (2 if weights.get("cl_weight", 0.1) > 0 else 1)
    assert hasattr(model, "category_head") == (weights.get("cat_weight", 0.1) > 0)


def test_swap_loss_trains_encoder_and_experts(tiny_config):
    model, train, _ = _model(tiny_config, cat_weight=0.0, cl_warmup_steps=0)
    _, cl_loss = model.calculate_loss(next(iter(train)))
    cl_loss.backward()
    for name in ("encoder.layers.0.attention.qkv.weight", "mixture.experts.1.net.3.weight", "mixture.query.weight"):
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


# ----- sequence contract: padding, no leakage, every switch does something ------------------------


def test_trailing_padding_does_not_change_the_user_vector(tiny_config):
    model, _, test = _model(tiny_config)
    model.eval()
    interaction = next(iter(test))[0]
    seq, length = interaction["item_id_list"], interaction["item_length"]
    short = length <= 5
    assert short.sum() >= 2 and seq.shape[1] > 5
    with torch.no_grad():
        wide = model.forward(seq[short], length[short])
        narrow = model.forward(seq[short][:, :5], length[short])
        alone = model.forward(seq[short][:1, :5], length[short][:1])
    torch.testing.assert_close(wide, narrow)
    torch.testing.assert_close(alone, narrow[:1])


def test_targets_do_not_reach_the_input_side(tiny_config):
    """Training-mode user vectors (and the swapped view's) are the same whatever the targets are."""
    model, train, _ = _model(tiny_config, id_dropout_prob=0.5, cl_warmup_steps=0)
    batch = next(iter(train))
    encoded = []
    original = model.encode
    model.encode = lambda *args, **kwargs: encoded.append(original(*args, **kwargs)) or encoded[-1]
    model.train()
    for targets in (batch[model.POS_ITEM_ID], torch.randint(1, model.n_items, batch[model.POS_ITEM_ID].shape)):
        changed = batch.copy() if hasattr(batch, "copy") else batch
        changed.update(type(batch)({model.POS_ITEM_ID: targets}))
        torch.manual_seed(3)
        model.calculate_loss(changed)
    assert len(encoded) == 4
    torch.testing.assert_close(encoded[0], encoded[2])
    torch.testing.assert_close(encoded[1], encoded[3])


SWITCHES = [
    ("norm", "layernorm"), ("dyt_unit_gain", False), ("input_norm", "dyt"), ("id_path", "expert"),
    ("id_dropout_prob", 0.5), ("synergy_experts", False), ("synergy_residual", False), ("gating", "mean"),
    ("gate_norm", False), ("category_from", "item"), ("category_prior", True), ("cat_weight", 0.0),
    ("cl_weight", 0.0), ("cl_temperature", 0.5), ("cl_false_negatives", False), ("cl_warmup_steps", 0),
    ("cl_rows", 0.5), ("swap_mode", "sources"), ("swap_rate", 0.9),
]


def _loss_and_grads(model, batch):
    torch.manual_seed(7)
    model.train()
    model.zero_grad()
    losses = model.calculate_loss(batch)
    losses = losses if isinstance(losses, tuple) else (losses,)
    _total(losses).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [float(term) for term in losses], grads


@pytest.mark.parametrize("key, value", SWITCHES)
def test_each_switch_changes_the_computation(tiny_config, key, value):
    reference, train, _ = _model(tiny_config)
    variant, _, _ = _model(tiny_config, **{key: value})
    shared = {k: v for k, v in reference.state_dict().items() if k in variant.state_dict() and variant.state_dict()[k].shape == v.shape}
    if key != "dyt_unit_gain":  # an initialisation switch: the state it changes must not be copied over
        variant.load_state_dict(shared, strict=False)
    if key == "category_prior":  # a zero-initialised table: give it something to add
        nn.init.normal_(variant.category_prior.weight)
    batch = next(iter(train))
    losses, grads = _loss_and_grads(reference, batch)
    other_losses, other_grads = _loss_and_grads(variant, batch)
    same_losses = len(losses) == len(other_losses) and np.allclose(losses, other_losses, rtol=1e-6, atol=0)
    common = [name for name in grads if name in other_grads and grads[name].shape == other_grads[name].shape]
    same_grads = set(grads) == set(other_grads) and all(torch.allclose(grads[n], other_grads[n]) for n in common)
    assert not (same_losses and same_grads), key


@pytest.mark.parametrize("key, value", [("id_path", "both"), ("swap_mode", "weights"), ("input_norm", "rms"), ("category_from", "z"),
                                        ("cl_rows", 0.0), ("id_dropout_prob", 1.5), ("swap_rate", -0.1)])
def test_bad_values_raise_a_clear_error(tiny_config, key, value):
    with pytest.raises(ValueError, match=key):
        _model(tiny_config, **{key: value})


def test_loss_falls_on_tiny_data(tiny_config):
    model, train, _ = _model(tiny_config, learning_rate=0.01)
    steps = _train_steps(model, train, steps=24, loss_of=lambda m, b: m.calculate_loss(b)[0])
    assert np.mean(steps[-4:]) < np.mean(steps[:4]) - 0.3, steps


# ----- RecBole contract ---------------------------------------------------------------------------


def test_full_sort_is_chunk_invariant_and_matches_predict(tiny_config):
    model, _, test = _model(tiny_config, score_chunk_size=7)
    assert_full_sort_chunk_invariant(model, next(iter(test))[0], [1, 5, model.n_items - 1])


@pytest.mark.slow
def test_stock_run_recbole_learns(tiny_config, tiny_planted):
    result = run_recbole(model="CAMMSR", dataset="tiny", config_dict=tiny_config(epochs=2, learning_rate=0.01))
    assert result["test_result"]["ndcg@10"] > stock_ndcg_bar(tiny_planted[0].folder, "tiny")


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


@pytest.mark.slow
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
    weights, names = results["attentive"]["weights"], ["text", "image", "text*image"]
    for category, trusted in enumerate(planted.informative):
        other = "image" if trusted == "text" else "text"
        mean_weight = weights[categories == category].mean(0)
        assert mean_weight[names.index(trusted)] > mean_weight[names.index(other)] + 0.1, (trusted, mean_weight)
    attentive, mean = results["attentive"], results["mean"]
    summary = {gating: (r["recall"], r["purity"]) for gating, r in results.items()}
    assert attentive["recall"] > 5 * 10 / planted.item_cluster.size, summary  # far above random ranking
    assert attentive["recall"] > mean["recall"] + 0.03, summary
    assert attentive["purity"] > mean["purity"] + 0.05, summary


@pytest.mark.slow
def test_bench_diagnose_prints_scale_time_and_gate_lines(tiny_planted, tiny_config, capsys):
    from recbole_mm.bench import cammsr as bench

    planted, data_path = tiny_planted
    config = tiny_config()
    keys = ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "load_col", "modalities", "category_field", "MAX_ITEM_LIST_LENGTH")
    overrides = [arg for key in keys for arg in ("--set", f"{key}={json.dumps(config[key])}")]
    assert bench.main(["--diagnose", "--dataset", "tiny", "--data-path", data_path, "--steps", "1", "--rounds", "1",
                       "--set", "hidden_size=16", "--set", "train_batch_size=64", *overrides]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"model", "SASRec", "SASRecMM", "CAMMSR", "CAMMSR, first-version settings"}
    assert rows["SASRec"].count("1.00x") == 3
    assert sum(line.startswith("- CAMMSR") and "gate means eval" in line for line in lines) == 2
