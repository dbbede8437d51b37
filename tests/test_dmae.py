"""DMAE trains through RecBole, ranks all items consistently, and learns a planted similarity pattern."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.quick_start import run_recbole
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import build_run
from fixtures.similar_history import write_similar_history_dataset
from planted_eval import recall_at, stock_ndcg_bar, train_on_planted
from recbole_mm.bench.planted import planted_config, write_planted_dataset
from recbole_mm.model.layers.interest import bucket_index, similarity_distribution, time_buckets

RERANK = dict(dmae_mode="rerank", dmae_rerank_size=10, dmae_rerank_negs=4)


def _model(tiny_config, **overrides):
    run = build_run("DMAE", tiny_config(**overrides))
    return run.model, next(iter(run.train)), next(iter(run.test))[0]


def _perturb(model, scale=0.3):
    """Move every weight away from its initial value (zero-initialised biases included)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def _with_items(interaction, item):
    copy = Interaction({key: interaction[key] for key in interaction.columns})
    copy.update(Interaction({"item_id": torch.full((len(interaction),), item)}))
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lite", "rerank"])
def test_stock_run_recbole_learns(tiny_config, tiny_planted, mode):
    overrides = RERANK if mode == "rerank" else {"id_dropout_prob": 0.3}
    result = run_recbole(model="DMAE", dataset="tiny", config_dict=tiny_config(epochs=2, learning_rate=0.01, **overrides))
    assert result["test_result"]["ndcg@10"] > stock_ndcg_bar(tiny_planted[0].folder, "tiny")


@pytest.mark.parametrize(
    "overrides",
    [{"dmae_shortlist": 0}, {"dmae_shortlist": 0, "dmae_sim_cache_mb": 0}, {"dmae_shortlist": 9, "dmae_sim_cache_mb": 0}, {"dmae_shortlist": 9}, RERANK],
    ids=["lite-cached", "lite-direct", "shortlist-direct", "shortlist-cached", "rerank"],
)
def test_full_sort_chunked_equals_unchunked_equals_predict(tiny_config, overrides):
    model, _, test = _model(tiny_config, dmae_chunk_size=7, score_chunk_size=5, dmae_rerank_chunk=3, **overrides)
    _perturb(model)
    model.eval()
    with torch.no_grad():
        chunked = model.full_sort_predict(test)
        model.chunk_size = model.score_chunk_size = model.rerank_chunk = 0
        whole = model.full_sort_predict(test)
        looped = torch.stack([model.predict(_with_items(test, item)) for item in range(model.n_items)], 1)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(looped, whole)
    if model.dmae_mode == "rerank":  # exactly the backbone's top-C rank first
        _assert_shortlist_ranks_first(model, test, whole, model.rerank_size)


def _assert_shortlist_ranks_first(model, batch, scores, size):
    """The backbone's top-``size`` items are the top-``size`` of ``scores``; the rest follow in backbone order."""
    with torch.no_grad():
        backbone = model.full_sort_scores(model._context(batch)["user"])
    backbone[:, 0] = scores[:, 0] = -torch.inf
    top = backbone.topk(size, dim=1).indices
    assert torch.equal(top.sort(1).values, scores.topk(size, dim=1).indices.sort(1).values)
    inside = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
    inside[:, 0] = True
    for row in range(len(scores)):
        rest = (~inside[row]).nonzero().squeeze(1)
        assert torch.equal(scores[row, rest].argsort(descending=True), backbone[row, rest].argsort(descending=True))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
        return out


def test_lite_full_sort_never_builds_a_per_candidate_behaviour_vector_tensor(tiny_config):
    model, _, test = _model(tiny_config, dmae_chunk_size=0, dmae_shortlist=0)
    model.eval()
    with torch.no_grad(), _LargestTensor() as probe:
        model.full_sort_predict(test)
    batch, length = test["item_id_list"].shape
    assert probe.numel < batch * model.n_items * length * model.hidden_size // 8, probe.numel


def test_lite_score_is_the_readout_of_the_histogram_interest(tiny_config):
    """The O(L)-gather score equals u'^T z(c) with z built by scatter_add histograms; the per-pair
    cell tables used at inference give the same cells and magnitudes as computing them afresh."""
    model, _, test = _model(tiny_config)
    _perturb(model)
    model.eval()
    ids = model.all_item_ids()
    with torch.no_grad():
        context = model._context(test)
        cells, magnitude = model._cells(context, ids)
        scores = model.lite(context["lite"], cells, magnitude)
        interest = model.lite.interest(context["lite"], cells, magnitude)
    torch.testing.assert_close(scores, (context["lite"]["readout"].unsqueeze(1) * interest).sum(-1))
    fresh_cells, fresh_magnitude = model._cells(context, ids)  # gradient enabled: computed from similarities
    assert fresh_magnitude.requires_grad and torch.equal(fresh_cells, cells)
    torch.testing.assert_close(fresh_magnitude.detach(), magnitude)


def _explicit_fusion(fusion, scaled, index, time, behaviour, user, valid):
    """MIFU written out literally: f_j = sum_m beta_m e_m + c * s_1 * s_2 (s_m = r_m BucketEmb[k_m]), z = sum_j a_j f_j."""
    interests = fusion.encoder(scaled, index, time)  # [B, C, L, M, d]
    if not fusion.mifu:
        share = valid / valid.sum(1, keepdim=True)
        return (share[:, None, :, None] * interests.mean(-2)).sum(-2)
    batch, length, hidden = behaviour.shape
    queries = fusion.modality_query(behaviour).view(batch, 1, length, 2, hidden)
    beta = torch.softmax((interests * queries).sum(-1) * fusion.scale, -1)
    similarity_parts = interests - fusion.encoder.time_embedding(time)[:, None, :, None, :]
    fused = (beta.unsqueeze(-1) * interests).sum(-2) + fusion.cross * similarity_parts[..., 0, :] * similarity_parts[..., 1, :]
    key = (fusion.behaviour_key(behaviour) + fusion.user_key(user).unsqueeze(1)).unsqueeze(1)
    logits = ((fused * key).sum(-1) * fusion.scale).masked_fill(~valid.unsqueeze(1), -torch.inf)
    return (torch.softmax(logits, -1).unsqueeze(-1) * fused).sum(-2)


@pytest.mark.parametrize("mifu", [True, False])
def test_rerank_fusion_equals_the_literal_formula(tiny_config, mifu):
    model, _, test = _model(tiny_config, dmae_mifu=mifu, **RERANK)
    _perturb(model)
    with torch.no_grad():
        context = model._context(test)
        candidates = torch.randint(1, model.n_items, (len(test), 6))
        _, _, scaled, index = model._buckets(context, candidates)
        scaled, index = scaled.transpose(1, 2), index.transpose(1, 2)
        args = (context["time"], context["behaviour"], context["user"], context["valid"])
        expected = _explicit_fusion(model.fusion_unit, scaled, index, *args)
        torch.testing.assert_close(model.fusion_unit(scaled, index, *args), expected)
        torch.testing.assert_close(model._interest(context, model._buckets(context, candidates)), expected)


def test_bucket_index_stays_in_range_under_any_affine(tiny_config):
    model, batch, _ = _model(tiny_config, dmae_n_buckets=5)
    context = model._context(batch)
    wild = [(50.0, -20.0), (-30.0, 4.0), (1e30, 1e30), (-1e30, 0.0), (0.0, 0.5)]
    for scale, shift in wild:
        with torch.no_grad():
            model.mieu.buckets.scale.fill_(scale)
            model.mieu.buckets.shift.fill_(shift)
            _, present, scaled, index = model._buckets(context, model.all_item_ids())
        assert index[present].min() >= 0 and index[present].max() <= 4, (scale, shift)
        assert (index[~present] == 5).all() and (scaled >= 0).all() and (scaled <= 1).all()
    values = torch.tensor([-torch.inf, -3.0, 0.0, 0.2499, 0.25, 0.999, 1.0, 7.0, torch.inf, torch.nan])
    assert bucket_index(values, 5).tolist() == [0, 0, 0, 0, 1, 3, 4, 4, 4, 0]


def test_missing_modality_items_take_the_neutral_path(tiny_config):
    model, _, test = _model(tiny_config, dmae_sim_cache_mb=0)
    _perturb(model)
    model.eval()
    item, name = 5, model.modalities[0]
    getattr(model, f"feature_mask_{name}")[item] = False
    with torch.no_grad():
        before = model.full_sort_predict(test)[:, item]
        getattr(model, f"feature_{name}")[item] = 100 * torch.randn(model.modality_dims[name])
        after = model.full_sort_predict(test)[:, item]
        context = model._context(test)
        similarity, present, scaled, index = model._buckets(context, torch.tensor([item]))
    torch.testing.assert_close(before, after)
    assert not present[..., 0].any() and (similarity[..., 0] == 0.5).all()
    assert (scaled[..., 0] == 0.5).all() and (index[..., 0] == model.n_buckets).all()
    assert present[..., 1][context["valid"].unsqueeze(2)].all()  # the other modality is untouched


def test_decoder_target_uses_no_learnable_quantity(tiny_config):
    model, batch, _ = _model(tiny_config)
    positives = batch["item_id"].unsqueeze(1)

    def target():
        context = model._context(batch)
        similarity, present = model._buckets(context, positives)[:2]
        buckets = model.mieu.buckets.target_buckets(similarity[:, :, 0], present[:, :, 0])
        return similarity_distribution(buckets, context["valid"], model.mieu.n_bins)

    before = target()
    assert before.grad_fn is None and not before.requires_grad
    _perturb(model, scale=1.0)
    torch.testing.assert_close(before, target())
    torch.testing.assert_close(before.sum(-1), torch.ones(before.shape[:2]))
    assert (before.argmax(-1) != before.argmax(-1)[0, 0]).any()  # informative: histograms differ


@pytest.mark.parametrize("overrides", [{}, RERANK], ids=["lite", "rerank"])
def test_losses_are_finite_and_train_their_parameters(tiny_config, overrides):
    model, batch, _ = _model(tiny_config, **overrides)
    backbone, head, distribution = model.calculate_loss(batch)
    for loss in (backbone, head, distribution):
        assert torch.isfinite(loss) and loss > 0
    distribution.backward(retain_graph=True)
    assert model.decoder.net[0].weight.grad.abs().sum() > 0
    assert model.mieu.bucket_embedding.weight.grad.abs().sum() > 0
    model.zero_grad()
    head.backward()
    for param in (model.mieu.buckets.scale, model.mieu.bucket_embedding.weight, model.mieu.time_embedding.weight, model.item_embedding.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_zero_distribution_weight_removes_the_decoder(tiny_config):
    model, batch, _ = _model(tiny_config, dmae_dist_weight=0.0)
    assert not hasattr(model, "decoder")
    assert len(model.calculate_loss(batch)) == 2


def test_switches_change_the_computation(tiny_config):
    model, batch, _ = _model(tiny_config, dmae_time_unit=1.0)
    plain, _, _ = _model(tiny_config, dmae_discretize=False, dmae_mifu=False)
    ids = plain.all_item_ids()
    _, present, _, index = model._buckets(model._context(batch), ids)
    assert index[present].unique().numel() > 2
    context = plain._context(batch)
    _, present, scaled, index = plain._buckets(context, ids)
    assert (index[present] == 0).all() and not hasattr(plain.lite, "cross_embedding")
    weights = plain.lite.attention(context["lite"], plain._cells(context, ids)[0])  # [B, L, C]
    valid = context["valid"].unsqueeze(2).expand_as(weights)
    torch.testing.assert_close(weights[valid], (1.0 / valid.sum(1, keepdim=True).expand_as(weights))[valid])
    # click time: log2 gap buckets from RecBole's timestamp_list, recency rank, or nothing
    valid = batch["item_id_list"] > 0
    gap = (batch["timestamp"].unsqueeze(1) - batch["timestamp_list"]).clamp_min(0)
    expected = torch.log2(1 + gap).floor().long().clamp(0, model.n_time_buckets - 1) * valid
    assert torch.equal(model._time_buckets(batch, valid), expected) and expected.unique().numel() > 2
    model.time_mode = "position"
    recency = model._time_buckets(batch, valid)
    assert torch.equal(recency[valid.sum(1) > 0, 0], (valid.sum(1) - 1).clamp(max=model.n_time_buckets - 1)[valid.sum(1) > 0])
    model.time_mode = "none"
    assert (model._time_buckets(batch, valid) == 0).all()


def test_without_time_fields_falls_back_to_reverse_position(tiny_config):
    model, batch, _ = _model(tiny_config)
    assert model.time_mode == "gap"
    assert model._available_time_mode(SimpleNamespace(field2type={})) == "position"
    bare = Interaction({key: batch[key] for key in batch.columns if not key.startswith("timestamp")})
    valid = bare["item_id_list"] > 0
    assert torch.equal(model._time_buckets(bare, valid), time_buckets("position", valid, model.n_time_buckets))
    assert torch.isfinite(torch.stack(model.calculate_loss(bare))).all()


@pytest.fixture(scope="module")
def similar_history(tmp_path_factory):
    data_path = str(tmp_path_factory.mktemp("simhist"))
    planted = write_similar_history_dataset(data_path, name="simhist", n_users=120, n_items=150, n_clusters=15, seed=0)
    return planted, data_path


@torch.no_grad()
def _head_and_backbone_ranks(model, test_data):
    """1-based rank of every test target under the head alone and under the backbone alone."""
    model.eval()
    ranks = {"head": [], "backbone": []}
    for interaction, _, _, positives in test_data:
        backbone = model.full_sort_scores(model._context(interaction)["user"])
        full = model.full_sort_predict(interaction)
        for name, scores in (("head", full - backbone), ("backbone", backbone)):
            scores[:, 0] = -np.inf
            ranks[name].append((scores > scores.gather(1, positives.view(-1, 1))).sum(1) + 1)
    return {name: torch.cat(values).numpy() for name, values in ranks.items()}


def test_learns_the_planted_similar_to_history_pattern(similar_history):
    """Next items resemble earlier ones (random order): the similarity head must find it, better than the backbone."""
    planted, data_path = similar_history
    settings = dict(epochs=6, train_batch_size=128, hidden_size=32, inner_size=64, n_layers=1, n_heads=1, hidden_dropout_prob=0.2,
                    attn_dropout_prob=0.2, learning_rate=0.005, MAX_ITEM_LIST_LENGTH=10, dmae_n_buckets=5, dmae_train_negs=64,
                    dmae_shortlist=0)  # the head scores every item, so full - backbone is the head everywhere
    model, _, test_data, trainer = train_on_planted("DMAE", planted_config(planted, data_path, **settings), "simhist")
    ranks = _head_and_backbone_ranks(model, test_data)
    n_items = len(planted.item_cluster)
    assert recall_at(ranks["head"]) > 3 * 10 / n_items, ranks
    assert ranks["head"].mean() < n_items / 4, ranks["head"].mean()
    assert ranks["head"].mean() < ranks["backbone"].mean(), (ranks["head"].mean(), ranks["backbone"].mean())


def test_unsmoothed_distribution_loss_is_finite(tiny_config):
    """``dmae_dist_smoothing: 0`` leaves empty bins in the target (``0 log 0``): loss and gradients stay finite."""
    model, batch, _ = _model(tiny_config, dmae_dist_smoothing=0)
    context = model._context(batch)
    similarity, present = model._buckets(context, batch["item_id"].unsqueeze(1))[:2]
    target = similarity_distribution(model.mieu.buckets.target_buckets(similarity[:, :, 0], present[:, :, 0]), context["valid"], model.mieu.n_bins, 0.0)
    assert (target == 0).any()  # the case that gave NaN
    losses = model.calculate_loss(batch)
    assert torch.isfinite(torch.stack(losses)).all() and losses[-1] > 0
    losses[-1].backward()
    assert all(torch.isfinite(param.grad).all() for param in model.parameters() if param.grad is not None)


@pytest.mark.parametrize("key,value", [("dmae_dist_smoothing", -1e-4), ("dmae_dist_weight", float("nan")), ("dmae_dist_weight", -0.1)])
def test_bad_distribution_settings_raise(tiny_config, key, value):
    with pytest.raises(ValueError, match=key):
        _model(tiny_config, **{key: value})


@pytest.mark.parametrize("overrides", [{}, {"dmae_sim_cache_mb": 0}, RERANK], ids=["lite-cached", "lite-direct", "rerank"])
def test_positive_similarities_are_computed_once_per_step(tiny_config, overrides):
    model, batch, _ = _model(tiny_config, **overrides)
    positives = batch["item_id"].unsqueeze(1)
    calls = []
    forward = model.similarity.forward

    def counting(matrices, masks, history, state, candidates):
        calls.append(candidates.shape == positives.shape and torch.equal(candidates, positives))
        return forward(matrices, masks, history, state, candidates)

    model.similarity.forward = counting
    model.calculate_loss(batch)
    assert sum(calls) == 1, calls


@pytest.mark.parametrize("cache", [256, 0], ids=["cached", "direct"])
def test_shortlist_of_the_whole_catalogue_equals_full_scoring(tiny_config, cache):
    model, _, test = _model(tiny_config, dmae_shortlist=0, dmae_sim_cache_mb=cache, dmae_chunk_size=6)
    _perturb(model)
    model.eval()
    with torch.no_grad():
        full = model.full_sort_predict(test)
        model.shortlist = model.n_items - 1  # every real item
        shortlisted = model.full_sort_predict(test)
    torch.testing.assert_close(shortlisted[:, 1:], full[:, 1:])


@pytest.mark.parametrize("size", [1, 5, 20])
def test_shortlist_never_drops_the_backbones_top_items(tiny_config, size):
    model, _, test = _model(tiny_config, dmae_shortlist=size, dmae_chunk_size=3, score_chunk_size=7)
    _perturb(model, scale=1.0)  # a head strong enough to reorder everything it scores
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(test)
    assert torch.isfinite(scores).all()
    _assert_shortlist_ranks_first(model, test, scores, size)


def _scoring_tensors(tmp_path, n_items, batch_size=2):
    """``(N, B, [(shape, numel)] of every tensor one lite shortlist full-ranking call creates)``."""
    data_path = str(tmp_path / f"catalogue{n_items}")
    planted = write_planted_dataset(data_path, name="cat", seed=0, n_users=30, n_items=n_items, n_clusters=5, seq_len=(4, 8))
    run = build_run("DMAE", planted_config(
        planted, data_path, MAX_ITEM_LIST_LENGTH=6, hidden_size=16, inner_size=16, n_layers=1, n_heads=1, dmae_n_buckets=4,
        dmae_shortlist=8, dmae_chunk_size=4, score_chunk_size=32, dmae_sim_cache_mb=0, eval_batch_size=batch_size), "cat")
    model, test = run.model.eval(), run.test
    batch = next(iter(test))[0]
    probe = _AllTensors()
    with torch.no_grad(), probe:
        model.full_sort_predict(batch)
    return model.n_items, len(batch), probe.tensors


class _AllTensors(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.tensors = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.tensors.append((tuple(tensor.shape), tensor.numel(), tensor.data_ptr()))
        return out


def test_shortlist_scoring_memory_does_not_grow_with_the_catalogue(tmp_path):
    """Catalogue-wide tensors of one scoring call are only ``[N]`` ids and ``[B, N]`` scores (the
    output); everything else is bounded by the chunks and the shortlist, the same at 4x the items."""
    largest_other = []
    for n_items in (2000, 8000):
        n, batch, tensors = _scoring_tensors(tmp_path, n_items)
        wide = {shape for shape, numel, _ in tensors if numel >= n}
        assert wide <= {(n,), (batch, n)}, wide
        largest_other.append(max(numel for _, numel, _ in tensors if numel < n))
    assert largest_other[0] == largest_other[1], largest_other


def test_cell_cache_is_built_a_row_block_at_a_time(tiny_config, monkeypatch):
    """Building the ``[N, N]`` lite tables allocates the two tables (int16 cells, float32 magnitude)
    and otherwise only one row block's tensors; the budget counts both."""
    import recbole_mm.model.dmae as dmae_module

    model, _, _ = _model(tiny_config)
    n, n_modalities = model.n_items, len(model.modalities)
    monkeypatch.setattr(dmae_module, "CACHE_BUILD_BYTES", 3 * n * dmae_module.BUILD_BYTES_PER_PAIR)  # 3 rows a block
    probe = _AllTensors()
    with torch.no_grad(), probe:
        cells, magnitude = model._cell_tables()
    assert cells.dtype == torch.int16 and magnitude.dtype == torch.float32
    others = [numel for shape, numel, _ in probe.tensors if shape != (n, n)]
    assert max(others) <= 3 * n * n_modalities, max(others)
    assert len({pointer for shape, _, pointer in probe.tensors if shape == (n, n)}) == 2  # the two tables, nothing else that size
    budget_mb = (n * n * (4 * n_modalities + 6) + dmae_module.CACHE_BUILD_BYTES) / 2**20
    assert model._fits_cache(n_modalities) == (model.sim_cache_mb >= budget_mb)
    model.sim_cache_mb = budget_mb * 0.999
    assert not model._fits_cache(n_modalities)


def test_hard_negatives_come_from_the_backbones_top_and_skip_the_history(tiny_config):
    model, batch, _ = _model(tiny_config, dmae_hard_negs=4, dmae_hard_pool=8)
    context = model._context(batch)
    positives = batch["item_id"]
    logits = model.score_items(context["user"], model.all_item_ids())
    hard, unusable = model._hard_negatives(logits, positives, context["history"])
    masked = logits.detach().clone()
    masked[:, 0] = -torch.inf
    masked.scatter_(1, torch.cat([context["history"], positives.unsqueeze(1)], 1), -torch.inf)
    top = masked.topk(8, dim=1).indices
    assert hard.shape == (len(positives), 4) and not unusable.any()
    assert (hard.unsqueeze(-1) == top.unsqueeze(1)).any(-1).all()  # drawn from the pool
    assert not (hard.unsqueeze(-1) == context["history"].unsqueeze(1)).any() and not (hard == positives.unsqueeze(1)).any()
    torch.manual_seed(0)
    with_hard = model.calculate_loss(batch)[1]
    model.hard_negs = 0
    torch.manual_seed(0)
    uniform_only = model.calculate_loss(batch)[1]
    assert with_hard > uniform_only  # same uniform draws, more (and harder) negatives in the softmax


def test_self_pair_remap_moves_history_items_out_of_the_identity_cell(tiny_config):
    """The probe gives each self-pair the similarities of the item's nearest other item, in every path."""
    model, _, test = _model(tiny_config)
    model.eval()
    history = test["item_id_list"]
    with torch.no_grad():
        context = model._context(test)
        before = model._cells(context, model.all_item_ids())[0]
        model.remap_self_pairs(True)
        nearest = model.similarity.self_similarity
        after = model._cells(context, model.all_item_ids())[0]  # cached tables, rebuilt
        similarity = model._buckets(context, model.all_item_ids())[0]  # direct lookup path
        model.remap_self_pairs(False)
        restored = model._cells(context, model.all_item_ids())[0]
    rows, positions = (history > 0).nonzero(as_tuple=True)
    items = history[rows, positions]
    identity = before[rows, positions, items]
    assert (identity == identity[0]).all() and not (after[rows, positions, items] == identity[0]).all()
    torch.testing.assert_close(similarity[rows, positions, items], nearest[items])
    assert (nearest[1:] < 1).all() and torch.equal(restored, before)


def test_history_check_scores_every_variant_and_restores_the_model(tiny_config):
    from recbole_mm.bench.dmae import history_check, history_table

    run = build_run("DMAE", tiny_config(), trainer=True)
    model, trainer, test_data = run.model, run.trainer, run.test
    _perturb(model)
    trainer.tot_item_num = test_data._dataset.item_num
    batch = next(iter(test_data))[0]
    model.eval()
    with torch.no_grad():
        before = model.full_sort_predict(batch)
    results = history_check(trainer, test_data, shortlists=(5,))
    assert list(results) == ["as trained", "self-pairs remapped", "backbone alone", "shortlist 5"]
    for row in results.values():
        assert 0 <= row["full_ndcg@10"] <= 1 and 0 <= row["excl_ndcg@10"] <= 1 and 0 <= row["history_in_top10"] <= 10
    assert results["backbone alone"] != results["as trained"]
    assert "| self-pairs remapped |" in history_table(results)
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_predict(batch), before)
    assert model.similarity.self_similarity is None and model.shortlist == run.config["dmae_shortlist"]
