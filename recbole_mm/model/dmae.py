"""DMAE: target-aware multimodal interest with a distribution-reconstructing decoder, for full ranking.

Paper: "Distribution-Guided Auto-Encoder for User Multimodal Interest Cross Fusion" (Zhang et al.,
CIKM 2025, arXiv 2508.14485). The paper is a CTR model that scores one target item; here it is a
RecBole ``SequentialRecommender`` that ranks the whole catalogue.
"""

import contextlib
import logging
import math

import torch
from torch import nn

from recbole_mm.model.layers.interest import (
    BehaviourFusion,
    DecoupledInterest,
    DistributionDecoder,
    InterestEncodingUnit,
    PairSimilarity,
    cell_index,
    pair_lookup,
    similarity_distribution,
    similarity_quantiles,
    time_buckets,
)
from recbole_mm.model.sasrecmm import SASRecMM

SHORTLIST_MARGIN = 1.0  # the best item outside the shortlist scores this much below the lowest shortlisted one
AFFINE_QUANTILES = (0.01, 0.999)  # data-driven initial affine maps these similarity quantiles to [0, 1]
AFFINE_SAMPLE = 1024  # items sampled (fixed seed) to estimate them
MAX_JOINT_CELLS = 4096  # lite keeps [B, L, cells] tables per user; cell ids fit the int16 cache
CACHE_BUILD_BYTES = 16 * 2**20  # transient memory of one row block while the [N, N] cell tables are built
BUILD_BYTES_PER_PAIR = 96  # upper estimate of the transient bytes per (row, item) pair of that build (similarities, buckets, cells)


class DMAE(SASRecMM):
    """DMAE adapted to next-item full ranking: ``score(c) = backbone(c) + head(c)``.

    Follows the paper: MIEU turns the per-modality similarity ``r = (cos + 1) / 2`` between the
    candidate and every history item (frozen vectors) into ``r_hat * BucketEmb[floor(r_hat (N_B-1))]``
    with a learnable affine ``r_hat = w r + b`` and a click-time embedding; MIFU fuses the modality
    interests per behaviour and pools them into the user's interest in the candidate; a training-only
    decoder reconstructs the user's similarity distribution from that interest (KL).

    Our decisions, where the paper is silent or targets CTR:
    - Backbone = SASRecMM (ID + projected modalities), trained with CE over all items, so every item
      has a cheap, well-defined score; the DMAE head adds to it.
    - ``dmae_mode: lite`` (default): the decoupled head of :class:`DecoupledInterest` -- joint
      cross-modal buckets, behaviour weights once per user plus a per-(cell, time) bias, a score
      linear in the interest vector -- costs O(L) gathers per candidate. At full ranking it rescores
      the backbone's top-``dmae_shortlist`` items per user (``dmae_chunk_size`` at a time; 0 = every
      item), the rest keep their backbone order below them (:func:`merge_shortlist`), so a call's
      memory beyond the ``[B, N]`` output is one chunk whatever the catalogue size. Trained with a
      sampled softmax: ``dmae_train_negs`` shared uniform negatives plus ``dmae_hard_negs`` per
      sequence from the backbone's top ranks. Without gradients, the joint cell and magnitude of
      every item pair are tabulated once (``[N, N]``, when they fit ``dmae_sim_cache_mb``), so
      scoring is lookups and gathers.
    - ``dmae_mode: rerank``: the full MIFU of :class:`BehaviourFusion` (per-behaviour modality
      weights, cross product term, attention pooling; computed exactly via per-user tables and
      histograms instead of ``[B, C, L, M, d]`` tensors) plus an MLP head on the backbone's
      top-``dmae_rerank_size``, merged like the lite shortlist. Trained listwise against hard
      negatives drawn from that top list.
    - Click time: ``log2`` buckets of (target time - click time) from RecBole's ``timestamp_list``;
      reverse position when the dataset has no time field.
    - Affine init from data (similarity quantiles 1 % / 99.9 % -> 0 / 1) so the buckets are used;
      the decoder's target buckets use a frozen copy of that initial affine (nothing learnable).
    - Missing modality: neutral ``r = 0.5`` and a dedicated bucket.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        self.dmae_mode = config["dmae_mode"]
        self.n_buckets = config["dmae_n_buckets"]
        self.time_mode = config["dmae_time"]
        self.n_time_buckets = config["dmae_time_buckets"]
        self.time_unit = float(config["dmae_time_unit"])
        self.discretize = bool(config["dmae_discretize"])
        self.use_mifu = bool(config["dmae_mifu"])
        self.dist_weight = float(config["dmae_dist_weight"])
        self.dist_smoothing = float(config["dmae_dist_smoothing"])
        self.affine_init = config["dmae_affine_init"]
        self.sim_cache_mb = float(config["dmae_sim_cache_mb"])
        self.chunk_size = int(config["dmae_chunk_size"])
        self.train_negs = int(config["dmae_train_negs"])
        self.rerank_size = min(int(config["dmae_rerank_size"]), self.n_items - 1)
        # keys added after the first release: a checkpoint whose config lacks them behaves as before
        self.shortlist = int(_setting(config, "dmae_shortlist", 0))
        self.hard_negs = int(_setting(config, "dmae_hard_negs", 0))
        self.hard_pool = int(_setting(config, "dmae_hard_pool", 100))
        self.rerank_negs = int(config["dmae_rerank_negs"])
        self.rerank_chunk = int(config["dmae_rerank_chunk"])
        self.TIME_FIELD = config["TIME_FIELD"]
        self.TIME_LIST = f"{self.TIME_FIELD}{config['LIST_SUFFIX']}"
        self._check_settings()
        self.time_mode = self._available_time_mode(dataset)

        n_modalities = len(self.modalities)
        self.similarity = PairSimilarity(list(zip(self._feature_matrices(), self._feature_masks())), self._fits_cache(n_modalities))
        self._cell_cache = None
        self._item_table = None
        self.mieu = InterestEncodingUnit(n_modalities, self.n_buckets, self.n_time_buckets, self.hidden_size, self.discretize)
        self.behaviour_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        new_modules = [self.mieu, self.behaviour_norm]
        if self.dmae_mode == "lite":
            self.lite = DecoupledInterest(self.mieu, self.hidden_size, self.use_mifu)
            new_modules.append(self.lite)
        else:
            self.fusion_unit = BehaviourFusion(self.mieu, self.hidden_size, self.use_mifu)
            self.rerank_head = nn.Sequential(nn.Linear(2 * self.hidden_size, self.hidden_size), nn.Tanh(), nn.Linear(self.hidden_size, 1))
            new_modules += [self.fusion_unit, self.rerank_head]
        if self.dist_weight > 0:
            self.decoder = DistributionDecoder(self.hidden_size, n_modalities, self.mieu.n_bins)
            new_modules.append(self.decoder)

        for module in new_modules:
            module.apply(self._init_weights)
        if self.dmae_mode == "lite":
            self.lite.reset_bias()
        self._init_affine()

    # ----- setup ---------------------------------------------------------------------------------

    def _check_settings(self):
        if self.loss_type != "CE":
            raise ValueError(f"DMAE trains its backbone with loss_type 'CE', got {self.loss_type!r}")
        if self.dmae_mode not in ("lite", "rerank"):
            raise ValueError(f"dmae_mode must be 'lite' or 'rerank', got {self.dmae_mode!r}")
        if self.time_mode not in ("gap", "position", "none"):
            raise ValueError(f"dmae_time must be gap | position | none, got {self.time_mode!r}")
        for key, value in (("dmae_dist_weight", self.dist_weight), ("dmae_dist_smoothing", self.dist_smoothing)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if self.affine_init not in ("data", "identity"):
            raise ValueError(f"dmae_affine_init must be 'data' or 'identity', got {self.affine_init!r}")
        if self.dmae_mode == "lite" and (self.n_buckets + 1) ** len(self.modalities) > MAX_JOINT_CELLS:
            raise ValueError(
                f"(dmae_n_buckets + 1) ** {len(self.modalities)} modalities = {(self.n_buckets + 1) ** len(self.modalities)} joint "
                f"cells exceeds {MAX_JOINT_CELLS}; lower dmae_n_buckets"
            )
        for key, value in (("dmae_shortlist", self.shortlist), ("dmae_hard_negs", self.hard_negs)):
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if self.hard_negs > 0 and self.hard_pool < self.hard_negs:
            raise ValueError(f"dmae_hard_pool ({self.hard_pool}) must be >= dmae_hard_negs ({self.hard_negs})")
        if self.dmae_mode == "rerank" and not 0 < self.rerank_negs < self.rerank_size:
            raise ValueError(f"need 0 < dmae_rerank_negs ({self.rerank_negs}) < dmae_rerank_size ({self.rerank_size})")

    def _available_time_mode(self, dataset) -> str:
        """``gap`` needs RecBole's time list field; without one fall back to reverse position."""
        if self.time_mode == "gap" and self.TIME_LIST not in dataset.field2type:
            logging.getLogger().warning(f"DMAE: no '{self.TIME_LIST}' field in the dataset, dmae_time falls back to 'position'")
            return "position"
        return self.time_mode

    def _fits_cache(self, n_modalities) -> bool:
        """Whether the ``[N, N]`` tables fit ``dmae_sim_cache_mb``: similarities per modality (float32,
        built in place), plus, for lite, the joint cell (int16) and magnitude (float32) of every pair
        and the transient memory of building those a row block at a time (``CACHE_BUILD_BYTES``)."""
        bytes_per_pair = 4 * n_modalities + (6 if self.dmae_mode == "lite" else 0)
        build = CACHE_BUILD_BYTES if self.dmae_mode == "lite" else 0
        return self.sim_cache_mb > 0 and bytes_per_pair * self.n_items**2 + build <= self.sim_cache_mb * 2**20

    def _feature_matrices(self):
        return [getattr(self, f"feature_{name}") for name in self.modalities]

    def _feature_masks(self):
        return [getattr(self, f"feature_mask_{name}") for name in self.modalities]

    @torch.no_grad()
    def _init_affine(self):
        """Map the 1 % / 99.9 % similarity quantiles of random item pairs to 0 / 1 (``data``)."""
        if self.affine_init == "identity" or self.n_items < 3:
            return
        generator = torch.Generator().manual_seed(0)
        sample = 1 + torch.randperm(self.n_items - 1, generator=generator)[:AFFINE_SAMPLE]
        sample = sample.to(self.feature_device())
        history = sample.unsqueeze(0)
        similarity, present = self._similarity(history, self.similarity.history_state(self._feature_matrices(), history), sample)
        present = present & ~torch.eye(len(sample), dtype=torch.bool, device=present.device).unsqueeze(-1)  # [1, S, S, M]
        low, high = similarity_quantiles(similarity.cpu(), present.cpu(), *AFFINE_QUANTILES).unbind(-1)
        scale = 1.0 / (high - low).clamp_min(1e-6)
        self.mieu.buckets.set_affine(scale, -low * scale)

    @torch.no_grad()
    def remap_self_pairs(self, enabled: bool = True) -> None:
        """Inference-time probe of history suppression: with ``enabled``, every self-pair (candidate =
        history item, ``r = 1`` in every modality: the "identity cell", which almost no other pair
        reaches) gets the similarities of the history item's nearest *other* item (highest mean ``r``
        over the modalities), so it lands in the cell and magnitude that neighbour would get and
        the head can no longer tell "this is a history item". ``False`` restores the model as trained."""
        self.similarity.self_similarity = None
        self._cell_cache = None
        if enabled:
            self.similarity.self_similarity = self._nearest_other_similarity()

    def _nearest_other_similarity(self) -> torch.Tensor:
        """``[N, M]``: per modality, ``r`` between each item and its nearest other item (by mean ``r``)."""
        ids = self.all_item_ids()
        rows = []
        for block in ids.split(max(1, (1 << 22) // self.n_items)):
            history = block.unsqueeze(0)
            similarity, _ = self._similarity(history, self.similarity.history_state(self._feature_matrices(), history), ids)
            similarity = similarity[0]  # [blk, N, M]
            closeness = similarity.mean(-1).clone()
            closeness[:, 0] = -torch.inf
            closeness[torch.arange(len(block)), block] = -torch.inf
            nearest = closeness.argmax(1)
            rows.append(similarity[torch.arange(len(block)), nearest])
        return torch.cat(rows)

    # ----- per-user context ------------------------------------------------------------------------

    def _similarity(self, history, history_state, candidates):
        return self.similarity(self._feature_matrices(), self._feature_masks(), history, history_state, candidates)

    def _time_buckets(self, interaction, valid):
        mode = self.time_mode
        if mode == "gap" and (self.TIME_LIST not in interaction or self.TIME_FIELD not in interaction):
            mode = "position"  # a bare interaction (e.g. RecBole's FLOPs probe) carries no times
        if mode != "gap":
            return time_buckets(mode, valid, self.n_time_buckets)
        return time_buckets(
            "gap", valid, self.n_time_buckets, interaction[self.TIME_FIELD], interaction[self.TIME_LIST], self.time_unit
        )

    def _context(self, interaction) -> dict:
        """Candidate-independent state of a batch: user vector, behaviour context, time buckets."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        user = self.forward(item_seq, item_seq_len)
        valid = item_seq > 0
        time = self._time_buckets(interaction, valid)
        behaviour = self.behaviour_norm(self.item_embedding(item_seq) + self.mieu.time_embedding(time))
        context = dict(
            user=user, history=item_seq, valid=valid, time=time, behaviour=behaviour,
            history_state=self.similarity.history_state(self._feature_matrices(), item_seq),
        )
        if self.dmae_mode == "lite":
            context["lite"] = self.lite.user_state(user, behaviour, time, valid)
        return context

    def _buckets(self, context, candidates):
        """MIEU inputs of ``candidates`` (``[C]`` shared or ``[B, C]``): ``(r, present, r_hat, bucket)``, ``[B, L, C, M]``."""
        similarity, present = self._similarity(context["history"], context["history_state"], candidates)
        return (similarity, present) + self.mieu.buckets(similarity, present)

    def _cells(self, context, candidates):
        """Lite inputs ``(joint cell, magnitude)`` ``[B, L, C]``: looked up in the per-pair tables when
        no gradient is needed and they fit the cache, else computed from the similarities."""
        if self.similarity.cached and not torch.is_grad_enabled():
            cells, magnitude = self._cell_tables()
            return pair_lookup(cells, context["history"], candidates).long(), pair_lookup(magnitude, context["history"], candidates)
        return self._cells_of(self._buckets(context, candidates))

    def _cells_of(self, buckets):
        """Lite inputs ``(joint cell, magnitude)`` ``[B, L, C]`` of :meth:`_buckets`' output."""
        _, _, scaled, index = buckets
        return cell_index(index, self.mieu.n_bins), scaled.mean(-1)

    def _cell_tables(self):
        """``(cell, magnitude)`` ``[N, N]`` of every (history item, candidate) pair under the current
        affine; rebuilt whenever the affine or a feature mask changed."""
        buckets = self.mieu.buckets
        masks = self._feature_masks()
        key = (tuple(buckets.scale.tolist()), tuple(buckets.shift.tolist()), tuple(mask._version for mask in masks), str(buckets.scale.device))
        if self._cell_cache is None or self._cell_cache[0] != key:
            self._cell_cache = None  # free the old tables before building new ones
            device = buckets.scale.device
            cells = torch.empty(self.n_items, self.n_items, dtype=torch.int16, device=device)
            magnitude = torch.empty(self.n_items, self.n_items, device=device)
            block = max(1, CACHE_BUILD_BYTES // (BUILD_BYTES_PER_PAIR * self.n_items))
            for rows in self.all_item_ids().split(block):
                scaled, index = buckets(*self.similarity.table_rows(masks, rows))
                cells[rows] = cell_index(index, self.mieu.n_bins).to(torch.int16)
                magnitude[rows] = scaled.mean(-1)
            self._cell_cache = (key, cells, magnitude)
        return self._cell_cache[1:]

    # ----- the DMAE head ---------------------------------------------------------------------------

    def _interest(self, context, buckets):
        """The user's multimodal interest ``z`` ``[B, C, d]`` in each candidate (MIEU + MIFU)."""
        _, _, scaled, index = buckets
        if self.dmae_mode == "lite":
            return self.lite.interest(context["lite"], *self._cells_of(buckets))
        scaled, index = scaled.transpose(1, 2).contiguous(), index.transpose(1, 2).contiguous()  # [B, C, L, M]
        return self.fusion_unit(scaled, index, context["time"], context["behaviour"], context["user"], context["valid"])

    def _rerank_scores(self, context, candidates):
        """Full MIEU + MIFU + MLP head on per-user candidates ``[B, C]``, ``dmae_rerank_chunk`` at a time."""
        chunks = candidates.split(self.rerank_chunk or candidates.shape[1], dim=1)
        return torch.cat([self._rerank_head(context, chunk, self._buckets(context, chunk)) for chunk in chunks], 1)

    def _rerank_head(self, context, candidates, buckets):
        """The rerank MLP on candidates ``[B, C]`` given their MIEU inputs."""
        target = context["user"].unsqueeze(1) * self.item_embedding(candidates)
        return self.rerank_head(torch.cat([self._interest(context, buckets), target], -1)).squeeze(-1)

    def _lite_scores(self, context, candidates):
        return self.lite(context["lite"], *self._cells(context, candidates))

    def _lite_all_items(self, context):
        """Lite head over the whole catalogue ``[B, N]``, ``dmae_chunk_size`` items at a time."""
        return self._lite_chunked(context, self.all_item_ids())

    def _lite_chunked(self, context, candidates):
        """Lite head on candidates ``[C]`` (shared) or ``[B, C]`` (per user), ``dmae_chunk_size`` at a time."""
        chunks = candidates.split(self.chunk_size or candidates.shape[-1], dim=-1)
        return torch.cat([self._lite_scores(context, chunk) for chunk in chunks], 1)

    @staticmethod
    def _top_candidates(scores, size, exclude=None):
        """The ``size`` best items per user of ``scores`` ``[B, N]``, never the padding item nor the
        items of ``exclude`` ``[B, K]``. An inference-time ``scores`` is masked in place and restored
        (no ``[B, N]`` copy); a training one (part of the graph) is copied first."""
        with torch.no_grad():
            copy = scores.requires_grad or exclude is not None
            masked = scores.detach().clone() if copy else scores
            padding = masked[:, 0].clone()
            masked[:, 0] = -torch.inf
            if exclude is not None:
                masked.scatter_(1, exclude, -torch.inf)
            top = masked.topk(size, dim=1).indices
            if not copy:
                masked[:, 0] = padding
            return top

    # ----- training ----------------------------------------------------------------------------------

    def loss_names(self):
        """Names of :meth:`calculate_loss`'s terms, in order (the trainer's NaN/Inf message uses them)."""
        return ["backbone CE", f"{self.dmae_mode} head CE"] + (["distribution KL"] if self.dist_weight > 0 else [])

    def calculate_loss(self, interaction):
        """``(backbone CE, head softmax CE[, dmae_dist_weight * KL])``, logged separately by RecBole."""
        self._step_keep = None  # SASRecMM's ID-dropout draw is per training step
        context = self._context(interaction)
        positives = interaction[self.POS_ITEM_ID]
        logits = self.score_items(context["user"], self.all_item_ids())  # [B, N]
        positive = self._buckets(context, positives.unsqueeze(1))  # once per step: the head's and the decoder's input
        losses = [nn.functional.cross_entropy(logits, positives)]
        if self.dmae_mode == "lite":
            losses.append(self._lite_loss(context, logits, positives, positive))
        else:
            losses.append(self._rerank_loss(context, logits, positives, positive))
        if self.dist_weight > 0:
            losses.append(self.dist_weight * self._distribution_loss(context, positive))
        return tuple(losses)

    def _lite_loss(self, context, logits, positives, positive_buckets):
        """Softmax over all items (``dmae_train_negs: 0``) or over the positive + shared uniform negatives."""
        if self.train_negs <= 0:
            return nn.functional.cross_entropy(logits + self._lite_all_items(context), positives)
        negatives = torch.randint(1, self.n_items, (self.train_negs,), device=positives.device)
        positive = logits.gather(1, positives.unsqueeze(1)) + self.lite(context["lite"], *self._cells_of(positive_buckets))
        negative = logits[:, negatives] + self._lite_scores(context, negatives)
        collision = negatives.unsqueeze(0) == positives.unsqueeze(1)
        if self.hard_negs > 0:
            hard, unusable = self._hard_negatives(logits, positives, context["history"])
            negative = torch.cat([negative, logits.gather(1, hard) + self._lite_scores(context, hard)], 1)
            collision = torch.cat([collision.expand(len(hard), -1), unusable], 1)
        return _sampled_softmax(positive, negative, collision)

    def _hard_negatives(self, logits, positives, history):
        """``dmae_hard_negs`` items per sequence drawn uniformly from the backbone's top-``dmae_hard_pool``,
        the positive and the input history left out (items the head must beat once the history is
        excluded). Returns ``(items [B, H], unusable [B, H])``: unusable marks draws that fell on an
        excluded item (only when the catalogue is smaller than pool + history)."""
        exclude = torch.cat([history, positives.unsqueeze(1)], 1)
        pool = min(self.hard_pool, self.n_items - 1)
        top = self._top_candidates(logits, pool, exclude)
        hard = top.gather(1, torch.rand(top.shape, device=top.device).topk(min(self.hard_negs, pool), dim=1).indices)
        unusable = (hard.unsqueeze(-1) == exclude.unsqueeze(1)).any(-1) | (hard == 0)
        return hard, unusable

    def _rerank_loss(self, context, logits, positives, positive_buckets):
        """Listwise softmax of the positive against ``dmae_rerank_negs`` items of the backbone's top list."""
        top = self._top_candidates(logits, self.rerank_size)
        draw = torch.rand(top.shape, device=top.device).masked_fill(top == positives.unsqueeze(1), -1.0)
        negatives = top.gather(1, draw.topk(self.rerank_negs, dim=1).indices)
        positive = logits.gather(1, positives.unsqueeze(1)) + self._rerank_head(context, positives.unsqueeze(1), positive_buckets)
        negative = logits.gather(1, negatives) + self._rerank_scores(context, negatives)
        return _sampled_softmax(positive, negative, negatives == positives.unsqueeze(1))

    def _distribution_loss(self, context, buckets):
        """KL between the positive's similarity histogram (frozen buckets) and the decoded one;
        ``buckets`` are the positive's MIEU inputs ``[B, L, 1, M]``."""
        similarity, present = buckets[0][:, :, 0], buckets[1][:, :, 0]  # [B, L, M]
        target = similarity_distribution(
            self.mieu.buckets.target_buckets(similarity, present), context["valid"], self.mieu.n_bins, self.dist_smoothing
        )
        return self.decoder.loss(self._interest(context, buckets)[:, 0], target)

    # ----- inference ---------------------------------------------------------------------------------

    def item_vectors(self, item_ids):
        """Backbone item vectors; inside :meth:`_item_vectors_once` a row lookup of one all-items table."""
        if self._item_table is not None:
            return self._item_table[item_ids]
        return super().item_vectors(item_ids)

    @contextlib.contextmanager
    def _item_vectors_once(self):
        """Without gradients, project every item's features once per call (``N`` rows) instead of
        once per history position (``B * L`` rows) and again per scored chunk. Skipped when the
        backbone scores in chunks smaller than the catalogue: an ``[N, d]`` table would then outgrow
        the chunk that bounds a scoring call's memory."""
        if torch.is_grad_enabled() or 0 < self.score_chunk_size < self.n_items:
            yield
            return
        self._item_table = super().item_vectors(self.all_item_ids())
        try:
            yield
        finally:
            self._item_table = None

    def predict(self, interaction):
        with self._item_vectors_once():
            return self._predict(interaction)

    def full_sort_predict(self, interaction):
        with self._item_vectors_once():
            return self._full_sort_predict(interaction)

    def _shortlist_size(self) -> int:
        """Items the head rescores per user at full ranking; 0 = every item (lite without shortlist)."""
        return self.rerank_size if self.dmae_mode == "rerank" else min(self.shortlist, self.n_items - 1)

    def _predict(self, interaction):
        items = interaction[self.ITEM_ID]
        if self._shortlist_size():  # the score depends on where the item falls in the backbone's ranking
            return self._full_sort_predict(interaction).gather(1, items.unsqueeze(1))[:, 0]
        context = self._context(interaction)
        backbone = (context["user"] * self.item_vectors(items)).sum(-1)
        return backbone + self._lite_scores(context, items.unsqueeze(1))[:, 0]

    def _full_sort_predict(self, interaction):
        context = self._context(interaction)
        backbone = self.full_sort_scores(context["user"])  # [B, N], score_chunk_size at a time
        size = self._shortlist_size()
        if not size:
            return backbone.add_(self._lite_all_items(context))
        top = self._top_candidates(backbone, size)
        head = self._lite_chunked(context, top) if self.dmae_mode == "lite" else self._rerank_scores(context, top)
        return merge_shortlist(backbone, top, head)


def _setting(config, key, default):
    """``config[key]``, or ``default`` when the config has no such key (RecBole returns None)."""
    value = config[key]
    return default if value is None else value


def merge_shortlist(backbone, top, head, margin: float = SHORTLIST_MARGIN):
    """Full-ranking scores ``[B, N]`` from the backbone's ``[B, N]`` (overwritten in place) and the
    head's scores ``[B, C]`` on the shortlist ``top`` ``[B, C]``: shortlisted items score
    ``backbone + head``; every other item keeps its backbone score shifted, per user, so that the
    best of them sits ``margin`` below the lowest shortlisted score. The shortlist therefore always
    ranks first, the rest follow in the backbone's order, and every score stays on the backbone's
    scale (no large constant, which would turn small float32 differences into ties)."""
    shortlisted = backbone.gather(1, top)
    floor = shortlisted.min(1, keepdim=True).values
    shortlisted = shortlisted + head
    shift = shortlisted.min(1, keepdim=True).values - margin - floor
    return backbone.add_(shift).scatter_(1, top, shortlisted)


def _sampled_softmax(positive, negative, collision):
    """CE of the positive (column 0) against negatives ``[B, K]``; negatives equal to it are masked."""
    scores = torch.cat([positive, negative.masked_fill(collision, -torch.inf)], 1)
    return nn.functional.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
