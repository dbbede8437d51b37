"""Target-aware multimodal interest numerics (DMAE): similarities, MIEU buckets, MIFU fusion, decoder.

Shapes: ``B`` users, ``L`` history positions, ``C`` candidates, ``M`` modalities, ``d`` hidden size.
Similarities and buckets are laid out ``[B, L, C, M]`` (a row of the item-item table per history
item); the rerank path's explicit vectors are ``[B, C, L, M, d]``. Every history position carries a bucket per
modality: ``0 .. n_buckets-1`` for a real similarity, ``n_buckets`` ("missing") when either item has
no vector for that modality. ``n_bins = n_buckets + 1`` counts both.

Paper: "Distribution-Guided Auto-Encoder for User Multimodal Interest Cross Fusion" (arXiv 2508.14485).
"""

import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

NEUTRAL_SIMILARITY = 0.5  # (cos + 1) / 2 of orthogonal vectors: "no evidence either way"
MASKED_LOGIT = -1e9  # finite, so a row that is all padding still gives a finite softmax
LOGIT_BOUND = 15.0  # lite attention logits stay in (-15, 15): exp() of their sum fits float32
TINY = 1e-30


# ----- similarities ------------------------------------------------------------------------------


def inverse_norms(matrix: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 / ||x_i||`` for items with a non-zero vector, 0 for missing ones (their cosine is then 0)."""
    norms = matrix.norm(dim=1)
    usable = mask.bool() & (norms > 0)
    return torch.where(usable, 1.0 / norms.clamp_min(1e-12), torch.zeros_like(norms))


class PairSimilarity(nn.Module):
    """``r = (cos + 1) / 2`` between history items and candidates, per modality, from frozen vectors.

    The feature matrices stay on the model (they are passed in at call time); this module keeps only
    ``[N]`` inverse norms and, with ``cache=True``, the whole ``[N, N]`` similarity table per modality,
    so scoring becomes a gather instead of a ``[B, L, D] x [D, C]`` product. Pairs where either item
    lacks the modality get the neutral value 0.5 and ``present = False``.

    ``self_similarity`` (``[N, M]``, ``None`` = off) replaces the similarity of every self-pair
    (candidate = history item, ``r = 1``) by the given values: an inference-time probe of how much a
    model relies on the "candidate is in the history" flag that ``r = 1`` carries.
    """

    def __init__(self, features: Sequence[Tuple[torch.Tensor, torch.Tensor]], cache: bool = False):
        super().__init__()
        self.n_modalities = len(features)
        self.cached = cache
        self.register_buffer("self_similarity", None, persistent=False)
        for index, (matrix, mask) in enumerate(features):
            inverse = inverse_norms(matrix.float(), mask)
            self.register_buffer(f"inverse_norm_{index}", inverse, persistent=False)
            if cache:  # built in place: no [N, N] temporaries besides the table itself
                unit = matrix.float() * inverse.unsqueeze(1)
                self.register_buffer(f"table_{index}", (unit @ unit.t()).add_(1).div_(2).clamp_(0, 1), persistent=False)

    def history_state(self, matrices: Sequence[torch.Tensor], history: torch.Tensor) -> List[torch.Tensor]:
        """Per-user data reused by every candidate chunk: unit history vectors ``[B, L, D_m]`` (or ids)."""
        if self.cached:
            return [history] * self.n_modalities
        return [matrix[history] * getattr(self, f"inverse_norm_{m}")[history].unsqueeze(-1) for m, matrix in enumerate(matrices)]

    def forward(self, matrices, masks, history, state, candidates) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(r, present)``, both ``[B, L, C, M]``; ``candidates`` is ``[C]`` (shared) or ``[B, C]``."""
        similarities, presence = [], []
        for m in range(self.n_modalities):
            if self.cached:
                r = pair_lookup(getattr(self, f"table_{m}"), history, candidates)
            else:
                unit = matrices[m][candidates] * getattr(self, f"inverse_norm_{m}")[candidates].unsqueeze(-1)  # [(B,) C, D]
                r = ((state[m] @ unit.transpose(-1, -2) + 1) / 2).clamp(0, 1)  # [B, L, C]
            if self.self_similarity is not None:
                same = history.unsqueeze(-1) == (candidates if candidates.dim() == 1 else candidates.unsqueeze(1))
                r = torch.where(same, self.self_similarity[history, m].unsqueeze(-1), r)
            present = masks[m][history].unsqueeze(-1) & masks[m][candidates].unsqueeze(-2)
            similarities.append(torch.where(present, r, torch.full_like(r, NEUTRAL_SIMILARITY)))
            presence.append(present.expand_as(r))
        return torch.stack(similarities, -1), torch.stack(presence, -1)

    def table_rows(self, masks, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rows`` of every pair (cached mode): ``(r, present)`` ``[len(rows), N, M]``."""
        similarity = torch.stack([getattr(self, f"table_{m}")[rows] for m in range(self.n_modalities)], -1)
        present = torch.stack([mask[rows].unsqueeze(1) & mask.unsqueeze(0) for mask in masks], -1)
        if self.self_similarity is not None:
            similarity[torch.arange(len(rows), device=rows.device), rows] = self.self_similarity[rows]
        return torch.where(present, similarity, torch.full_like(similarity, NEUTRAL_SIMILARITY)), present


def pair_lookup(table: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``table[h_j, c]`` as ``[B, L, C]`` for history ``[B, L]`` and candidates ``[C]`` or ``[B, C]``."""
    if candidates.dim() == 1:  # two index_selects: far faster than advanced indexing on CPU
        rows = table.index_select(1, candidates).index_select(0, history.reshape(-1))
        return rows.view(*history.shape, len(candidates))
    return table[history.unsqueeze(-1), candidates.unsqueeze(1)]


def similarity_quantiles(similarity: torch.Tensor, present: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per-modality ``(low, high)`` quantiles ``[M, 2]`` of the present entries of ``[..., M]`` similarities."""
    rows = []
    for m in range(similarity.shape[-1]):
        values = similarity[..., m][present[..., m]]
        if values.numel() < 2:
            rows.append(torch.tensor([0.0, 1.0]))
        else:
            values = values[torch.linspace(0, values.numel() - 1, min(values.numel(), 1 << 20)).long()]
            rows.append(torch.quantile(values.float(), torch.tensor([low, high])))
    return torch.stack(rows)


# ----- MIEU: magnitude-preserving similarity buckets ---------------------------------------------


def bucket_index(scaled: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """``floor(r_hat * (n_buckets - 1))``, clamped into ``[0, n_buckets - 1]`` whatever ``r_hat`` is."""
    index = torch.nan_to_num(scaled, nan=0.0).clamp(0, 1) * (n_buckets - 1)
    return index.floor().long().clamp_(0, n_buckets - 1)


def cell_index(index: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Joint cross-modal cell of per-modality buckets ``[..., M]`` (mixed radix, first modality major)."""
    strides = n_bins ** torch.arange(index.shape[-1] - 1, -1, -1, device=index.device)
    return (index * strides).sum(-1)


class SimilarityBuckets(nn.Module):
    """MIEU's discretiser: ``r_hat = clamp(w_m * r + b_m, 0, 1)``, bucket ``floor(r_hat * (N_B - 1))``.

    ``w_m, b_m`` are learnable (one pair per modality). A frozen copy of their initial values defines
    the decoder's target buckets, so that target never moves with training. ``discretize=False``
    (ablation "w/o discretisation") puts every present pair into bucket 0, so ``r_hat * Emb[0]`` is a
    plain linear map of the scalar similarity. Missing pairs: ``r_hat = 0.5``, bucket ``n_buckets``.
    """

    def __init__(self, n_modalities: int, n_buckets: int, discretize: bool = True):
        super().__init__()
        if n_buckets < 2:
            raise ValueError(f"dmae_n_buckets must be >= 2, got {n_buckets}")
        self.n_buckets = n_buckets
        self.n_bins = n_buckets + 1
        self.discretize = discretize
        self.scale = nn.Parameter(torch.ones(n_modalities))
        self.shift = nn.Parameter(torch.zeros(n_modalities))
        self.register_buffer("target_scale", torch.ones(n_modalities))
        self.register_buffer("target_shift", torch.zeros(n_modalities))

    @torch.no_grad()
    def set_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Initial affine (learnable copy and frozen target copy)."""
        for param, buffer, value in ((self.scale, self.target_scale, scale), (self.shift, self.target_shift, shift)):
            param.copy_(value)
            buffer.copy_(value)

    def forward(self, similarity: torch.Tensor, present: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(r_hat, bucket)`` ``[..., M]`` for raw similarities ``[..., M]``."""
        scaled = (similarity * self.scale + self.shift).clamp(0, 1)
        index = bucket_index(scaled, self.n_buckets) if self.discretize else torch.zeros_like(similarity, dtype=torch.long)
        scaled = torch.where(present, scaled, torch.full_like(scaled, NEUTRAL_SIMILARITY))
        return scaled, torch.where(present, index, torch.full_like(index, self.n_buckets))

    @torch.no_grad()
    def target_buckets(self, similarity: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Buckets under the frozen initial affine, always discretised: the decoder's target."""
        index = bucket_index(similarity * self.target_scale + self.target_shift, self.n_buckets)
        return torch.where(present, index, torch.full_like(index, self.n_buckets))


class InterestEncodingUnit(nn.Module):
    """MIEU: per modality ``r_hat * BucketEmb_m[bucket]``, plus a click-time embedding per behaviour."""

    def __init__(self, n_modalities: int, n_buckets: int, n_time_buckets: int, hidden_size: int, discretize: bool = True):
        super().__init__()
        self.buckets = SimilarityBuckets(n_modalities, n_buckets, discretize)
        self.n_modalities = n_modalities
        self.n_bins = self.buckets.n_bins
        self.bucket_embedding = nn.Embedding(n_modalities * self.n_bins, hidden_size)
        self.time_embedding = nn.Embedding(n_time_buckets, hidden_size)
        self.register_buffer("modality_offset", torch.arange(n_modalities) * self.n_bins, persistent=False)

    def bucket_rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows of ``bucket_embedding`` for per-modality buckets ``[..., M]``."""
        return index + self.modality_offset

    def forward(self, scaled: torch.Tensor, index: torch.Tensor, time_bucket: torch.Tensor) -> torch.Tensor:
        """Per-behaviour, per-modality interest ``e`` ``[B, C, L, M, d]`` (time ``[B, L]``)."""
        times = self.time_embedding(time_bucket)[:, None, :, None, :]
        return torch.addcmul(times, scaled.unsqueeze(-1), self.bucket_embedding(self.bucket_rows(index)))


# ----- click time ---------------------------------------------------------------------------------


def time_buckets(
    kind: str, valid: torch.Tensor, n_buckets: int, target_time=None, history_time=None, unit: float = 3600.0
) -> torch.Tensor:
    """Click-time bucket per behaviour ``[B, L]`` (0 at padding).

    ``gap``: ``floor(log2(1 + (t_target - t_j) / unit))``; ``position``: recency rank, 0 = most recent
    (RecBole left-aligns sequences); ``none``: all 0. Clipped to ``n_buckets - 1``.
    """
    if kind == "gap":
        gap = (target_time.unsqueeze(1) - history_time).clamp_min(0).double() / unit
        bucket = torch.log2(1 + gap).floor().long()
    elif kind == "position":
        lengths = valid.sum(1, keepdim=True)
        bucket = lengths - 1 - torch.arange(valid.shape[1], device=valid.device).unsqueeze(0)
    elif kind == "none":
        bucket = torch.zeros_like(valid, dtype=torch.long)
    else:
        raise ValueError(f"dmae_time must be gap | position | none, got {kind!r}")
    return bucket.clamp(0, n_buckets - 1) * valid.long()


def masked_logits(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~valid, MASKED_LOGIT)


# ----- lite path: decoupled joint-bucket interest ---------------------------------------------------


class DecoupledInterest(nn.Module):
    """DMAE-lite: MIEU + MIFU rewritten so a candidate costs O(L) gathers and no ``[B, L, C, d]`` tensor.

    Each behaviour j of a candidate c falls into a joint cross-modal cell ``k(c, j)`` (all modalities'
    buckets together, e.g. "text very similar, image dissimilar") with embedding
    ``X[k] = sum_m BucketEmb_m[k_m] (+ Cross[k])``. The user's interest in c is

        z(c) = sum_j a_j(c) * rbar(c, j) * (X[k(c, j)] + TimeEmb[t_j]),
        a_j(c) = softmax_j(g_j + gamma[k(c, j), t_j]),

    with ``rbar`` the mean of the modalities' ``r_hat`` (MIEU's magnitude factor), ``g_j`` behaviour
    weights computed once per user from the behaviour context and the user vector, and ``gamma`` a
    learned per-(cell, time) attention bias: the candidate-dependent part of the weights. The score is
    ``u'^T z(c)`` with ``u' = W u``. Only ``k(c, j)`` and ``rbar(c, j)`` depend on the candidate, so
    per user we precompute ``E[j, k] = exp(g_j + gamma[k, t_j])`` (0 at padding) and
    ``P[j, k] = E[j, k] * u'^T (X[k] + TimeEmb[t_j])``, both ``[B, L, n_cells]``, and

        score(c) = sum_j rbar(c, j) P[j, k(c, j)] / sum_j E[j, k(c, j)]

    costs two gathers, a product and two sums per (candidate, behaviour). Logits are soft-bounded to
    +-``LOGIT_BOUND`` so ``exp`` stays in float32 range without a max-subtraction. :meth:`interest`
    builds ``z`` explicitly with ``scatter_add`` histograms (decoder input; tests check the identity).

    ``mifu=False`` (ablation "w/o MIFU"): no cross term, no behaviour weights (uniform over the
    history), no candidate-dependent bias: per-modality interests are summed and mean-pooled.
    """

    def __init__(self, encoder: InterestEncodingUnit, hidden_size: int, mifu: bool = True):
        super().__init__()
        self.encoder = encoder
        self.mifu = mifu
        n_bins, n_modalities = encoder.n_bins, encoder.n_modalities
        self.n_cells = n_bins**n_modalities
        self.n_time = encoder.time_embedding.num_embeddings
        cells = torch.arange(self.n_cells)
        digits = torch.stack([(cells // n_bins ** (n_modalities - 1 - m)) % n_bins for m in range(n_modalities)], -1)
        self.register_buffer("cell_rows", encoder.bucket_rows(digits), persistent=False)  # [n_cells, M]
        self.readout = nn.Linear(hidden_size, hidden_size)
        if mifu:
            self.cross_embedding = nn.Embedding(self.n_cells, hidden_size)
            self.cell_time_bias = nn.Embedding(self.n_time, self.n_cells)
            self.behaviour_weight = nn.Sequential(nn.Linear(3 * hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def reset_bias(self) -> None:
        """Start with candidate-independent weights (call after the model's weight init)."""
        if self.mifu:
            nn.init.zeros_(self.cell_time_bias.weight)

    def cell_table(self) -> torch.Tensor:
        """``X`` ``[n_cells, d]``: summed modality buckets (+ the cross-modal cell embedding)."""
        table = self.encoder.bucket_embedding(self.cell_rows).sum(1)
        return table + self.cross_embedding.weight if self.mifu else table

    def user_state(self, user: torch.Tensor, behaviour: torch.Tensor, time_bucket: torch.Tensor, valid: torch.Tensor) -> dict:
        """Everything candidate-independent, once per user: the ``E`` and ``P`` tables ``[B, L, n_cells]``."""
        readout = self.readout(user)  # [B, d]
        cell_value = readout @ self.cell_table().t()  # [B, n_cells]
        time_value = (self.encoder.time_embedding(time_bucket) * readout.unsqueeze(1)).sum(-1)  # [B, L]
        values = cell_value.unsqueeze(1) + time_value.unsqueeze(2)  # [B, L, n_cells]
        weight = valid.unsqueeze(2).to(values.dtype)  # [B, L, 1]
        if self.mifu:  # exp(g_j + gamma[k, t_j]) = exp(g_j) * exp(gamma)[t_j, k]
            context = user.unsqueeze(1).expand_as(behaviour)
            behaviour_logit = self.behaviour_weight(torch.cat([behaviour, context, behaviour * context], -1))  # [B, L, 1]
            weight = (weight * torch.exp(bounded(behaviour_logit))) * torch.exp(bounded(self.cell_time_bias.weight))[time_bucket]
        weight = weight.expand_as(values)  # [B, L, n_cells]
        return dict(readout=readout, weight=weight, weighted_value=weight * values, time=time_bucket)

    def forward(self, state: dict, cells: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, C]`` from joint cells and magnitudes ``[B, L, C]``."""
        numerator = (magnitude * state["weighted_value"].gather(2, cells)).sum(1)
        return numerator / state["weight"].gather(2, cells).sum(1).clamp_min(TINY)

    def attention(self, state: dict, cells: torch.Tensor) -> torch.Tensor:
        """Behaviour weights ``a_j(c)`` ``[B, L, C]``."""
        weight = state["weight"].gather(2, cells)
        return weight / weight.sum(1, keepdim=True).clamp_min(TINY)

    def interest(self, state: dict, cells: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        """``z(c)`` ``[B, C, d]`` via weighted histograms over cells and time buckets."""
        mass = (self.attention(state, cells) * magnitude).transpose(1, 2)  # [B, C, L]
        cell_mass = weighted_histogram(cells.transpose(1, 2), mass, self.n_cells)  # [B, C, n_cells]
        time_mass = weighted_histogram(state["time"].unsqueeze(1).expand_as(mass), mass, self.n_time)  # [B, C, T]
        return cell_mass @ self.cell_table() + time_mass @ self.encoder.time_embedding.weight


def bounded(logits: torch.Tensor) -> torch.Tensor:
    """Soft clip to ``(-LOGIT_BOUND, LOGIT_BOUND)``; near-identity for ordinary values."""
    return LOGIT_BOUND * torch.tanh(logits / LOGIT_BOUND)


def weighted_histogram(index: torch.Tensor, weight: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``H[..., k] = sum_j weight[..., j] * 1[index[..., j] == k]`` (bincount along the last axis)."""
    histogram = weight.new_zeros(*index.shape[:-1], n_bins)
    return histogram.scatter_add_(-1, index, weight)


# ----- rerank path: full MIEU + MIFU ----------------------------------------------------------------


def per_user_lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[b, j, (m,) index[b, c, j, (m)]]`` for a per-behaviour table ``[B, L, (M,) K]`` and
    ``index`` ``[B, C, L, (M)]``; one flat gather per user (no ``[B, C, L, K]`` expansion)."""
    batch, length, n_keys = table.shape[0], table.shape[1], table.shape[-1]
    inner = table.shape[2:-1]
    base = torch.arange(length * inner.numel(), device=index.device).view(length, *inner) * n_keys
    flat = (index + base).reshape(batch, -1)
    return table.reshape(batch, -1).gather(1, flat).view(index.shape)


class BehaviourFusion(nn.Module):
    """MIFU on per-behaviour, per-modality MIEU interests (the rerank path).

    With MIEU's ``e_m(c, j) = r_m BucketEmb[k_m] + TimeEmb[t_j]`` (``r_m`` = ``r_hat``):

    1. Cross fusion per behaviour: modality weights ``beta_m = softmax_m(<Q_m q_j, e_m> / sqrt d)``
       chosen by the behaviour context ``q_j`` (ID + click time), plus an element-wise cross term of
       the similarity parts ``s_m = r_m BucketEmb[k_m]`` (e.g. "title close AND genres far"):
       ``f_j = sum_m beta_m e_m + c * sum_{m<m'} s_m * s_m'``.
    2. Pooling to the candidate: ``a_j = softmax_j(<K q_j + U u, f_j> / sqrt d)``, ``z = sum_j a_j f_j``.

    Computed exactly but without ever building ``e`` or ``f`` (``[B, C, L, M, d]``): every inner
    product is a lookup in a small per-user table (behaviour x bucket, behaviour x bucket pair) scaled
    by the ``r_m``, and ``z`` is a sum of weighted histograms (over buckets, bucket pairs, click time)
    times fixed tables. tests/test_dmae.py checks it against the literal formula.
    ``mifu=False``: ``f_j`` = mean over modalities, ``z`` = mean over the history.
    """

    def __init__(self, encoder: InterestEncodingUnit, hidden_size: int, mifu: bool = True):
        super().__init__()
        self.encoder = encoder
        self.mifu = mifu
        self.n_modalities = encoder.n_modalities
        self.pairs = [(m, n) for m in range(self.n_modalities) for n in range(m + 1, self.n_modalities)]
        self.scale = 1.0 / math.sqrt(hidden_size)
        if mifu:
            self.modality_query = nn.Linear(hidden_size, self.n_modalities * hidden_size)
            self.cross = nn.Parameter(torch.zeros(hidden_size))
            self.behaviour_key = nn.Linear(hidden_size, hidden_size)
            self.user_key = nn.Linear(hidden_size, hidden_size)

    def forward(self, scaled, index, time_bucket, behaviour, user, valid) -> torch.Tensor:
        """``z`` ``[B, C, d]`` from MIEU's ``(r_hat, bucket)`` ``[B, C, L, M]`` and behaviour context ``[B, L, d]``."""
        rows = self.encoder.bucket_rows(index)
        if not self.mifu:
            share = (valid / valid.sum(1, keepdim=True).clamp_min(1)).unsqueeze(1).expand(scaled.shape[:3])  # [B, C, L]
            time_mass = self._time_mass(share, time_bucket)
            return self._bucket_sum(share.unsqueeze(-1) * scaled / self.n_modalities, rows) + time_mass @ self.encoder.time_embedding.weight
        times = self.encoder.time_embedding(time_bucket)  # [B, L, d]
        batch, length, hidden = behaviour.shape
        queries = self.modality_query(behaviour).view(batch, length, self.n_modalities, hidden)
        beta = torch.softmax(self._dot(queries, scaled, rows, times) * self.scale, -1)  # [B, C, L, M]
        key = self.behaviour_key(behaviour) + self.user_key(user).unsqueeze(1)  # [B, L, d]
        logits = (beta * self._dot(key.unsqueeze(2).expand_as(queries), scaled, rows, times)).sum(-1)
        for first, second, pair in self._pair_cells(index):  # <K * c, s_m * s_m'>
            table = (key * self.cross) @ self._bucket_products(first, second).t()  # [B, L, n_bins^2]
            logits = logits + scaled[..., first] * scaled[..., second] * per_user_lookup(table, pair)
        alpha = torch.softmax(masked_logits(logits * self.scale, valid.unsqueeze(1)), -1)  # [B, C, L]
        time_mass = self._time_mass(alpha, time_bucket)  # sum_m beta_m = 1: each behaviour's time vector counts once
        interest = self._bucket_sum(alpha.unsqueeze(-1) * beta * scaled, rows) + time_mass @ self.encoder.time_embedding.weight
        for first, second, pair in self._pair_cells(index):  # c * sum_j a_j s_m * s_m'
            mass = alpha * scaled[..., first] * scaled[..., second]
            interest = interest + self.cross * (weighted_histogram(pair, mass, self.encoder.n_bins**2) @ self._bucket_products(first, second))
        return interest

    def _dot(self, vectors, scaled, rows, times) -> torch.Tensor:
        """``<v_{j,m}, e_m(c, j)>`` ``[B, C, L, M]`` for per-behaviour, per-modality vectors ``[B, L, M, d]``."""
        bucket_part = per_user_lookup(vectors @ self.encoder.bucket_embedding.weight.t(), rows)  # table [B, L, M, rows]
        time_part = (vectors * times.unsqueeze(2)).sum(-1)  # [B, L, M]
        return scaled * bucket_part + time_part.unsqueeze(1)

    def _bucket_products(self, first: int, second: int) -> torch.Tensor:
        """``BucketEmb_first[p] * BucketEmb_second[q]`` for every bucket pair, ``[n_bins * n_bins, d]``."""
        n_bins, table = self.encoder.n_bins, self.encoder.bucket_embedding.weight
        rows = table[first * n_bins : (first + 1) * n_bins].unsqueeze(1) * table[second * n_bins : (second + 1) * n_bins]
        return rows.flatten(0, 1)

    def _pair_cells(self, index):
        """``(m, m', joint bucket k_m * n_bins + k_m')`` for every modality pair, cells ``[B, C, L]``."""
        return [(first, second, index[..., first] * self.encoder.n_bins + index[..., second]) for first, second in self.pairs]

    def _bucket_sum(self, weights, rows) -> torch.Tensor:
        """``sum_{j,m} w_{j,m} BucketEmb[row_{j,m}]`` ``[B, C, d]`` for weights ``[B, C, L, M]``."""
        table = self.encoder.bucket_embedding.weight
        return weighted_histogram(rows.flatten(2), weights.flatten(2), table.shape[0]) @ table

    def _time_mass(self, weights, time_bucket) -> torch.Tensor:
        """Histogram ``[B, C, T]`` of behaviour weights ``[B, C, L]`` over click-time buckets."""
        n_time = self.encoder.time_embedding.num_embeddings
        return weighted_histogram(time_bucket.unsqueeze(1).expand_as(weights), weights, n_time)


# ----- decoder: the similarity distribution ----------------------------------------------------------


def similarity_distribution(buckets: torch.Tensor, valid: torch.Tensor, n_bins: int, smoothing: float = 1e-4) -> torch.Tensor:
    """Per-modality histogram ``[B, M, n_bins]`` of one candidate's buckets ``[B, L, M]`` over valid behaviours."""
    counts = weighted_histogram(buckets.transpose(1, 2), valid.unsqueeze(1).expand(-1, buckets.shape[2], -1).float(), n_bins)
    counts = counts + smoothing
    return counts / counts.sum(-1, keepdim=True).clamp_min(TINY)  # an empty history gives all zeros, not NaN


class DistributionDecoder(nn.Module):
    """Training-only decoder: from the interest ``z`` predict each modality's similarity histogram."""

    def __init__(self, hidden_size: int, n_modalities: int, n_bins: int):
        super().__init__()
        self.shape = (n_modalities, n_bins)
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, n_modalities * n_bins))

    def forward(self, interest: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[B, M, n_bins]``."""
        return torch.log_softmax(self.net(interest).view(-1, *self.shape), -1)

    def loss(self, interest: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``sum_m KL(p_m || p_hat_m)``, averaged over users; ``0 log 0 = 0`` (``xlogy``), so an
        unsmoothed target with empty bins stays finite."""
        return (torch.xlogy(target, target) - target * self(interest)).sum((-1, -2)).mean()

