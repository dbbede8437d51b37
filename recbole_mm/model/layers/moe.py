"""Mixture of modality experts with attentive per-item gating, the modality swap, the category loss.

Used by CAMMSR ("CAMMSR: Category-Guided Attentive Mixture of Experts for Multimodal Sequential
Recommendation", arXiv 2603.04320). Experts: one per modality and, optionally, one *synergy* expert
per pair of modalities that sees both projections and their element-wise product, i.e. signals that
only exist in combination. The gate gives every item its own convex weights over the experts that
item has (missing modalities get weight 0). The item ID is either a residual path added to the
mixture (``id_path='residual'``: ``z = e_id + sum_k a_k o_k``) or one more gated expert
(``id_path='expert'``: ``z = sum_k a_k o_k`` with ``o_id = E_id(e_id)``).
"""

from itertools import combinations
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mm.model.layers.fusion import ModalityProjection

GATINGS = ("attentive", "mean")
ID_PATHS = ("residual", "expert")
SWAP_MODES = ("experts", "sources")


class Mixture(NamedTuple):
    """What the mixture computed for a set of items (leading dims ``...`` = the items' shape)."""

    experts: torch.Tensor  # [..., K, d] expert outputs (0 where unavailable)
    available: torch.Tensor  # [..., K] bool: the expert's inputs exist for the item
    weights: torch.Tensor  # [..., K] gate weights, sum to 1 over available experts (0 if none)
    mixed: torch.Tensor  # [..., d] the item representation base + sum_k weights_k * experts_k
    base: torch.Tensor  # [..., d] the ID residual e_id (zeros with id_path='expert')
    normed: torch.Tensor  # [..., K, d] expert outputs normalised per expert (what the gate reads)
    sources: List[torch.Tensor]  # [e_id, p_1, ..., p_M], each [..., d]: what the experts read


class Expert(nn.Module):
    """``Linear -> GELU -> Dropout -> Linear`` plus a residual input (``x`` itself when input and
    output sizes match; for a synergy expert the mean of its two modality projections)."""

    def __init__(self, in_dim: int, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(x) if residual is None else residual + self.net(x)


class ModalityMixture(nn.Module):
    """Experts over (ID,) modalities and modality pairs, mixed by an attentive gate.

    Gate (``gating='attentive'``): from the item's context ``c = [e_id; mean of its expert outputs]``
    one query per expert ``q_k = (W c)_k`` scores that expert's output,
    ``a = softmax_k(q_k . o_k / (sqrt(d) * tau) + prior_k)`` over the available experts: weights
    depend on what the item's ID and content say (context-aware, per item); ``q_k . o_k`` is the
    bilinear attention score with one key matrix per expert. With ``gate_norm`` both halves of the
    context and every expert output are layer-normalised (no affine) before the score and ``tau`` is
    learned (``exp`` of a scalar, starts at 1): the logits start at O(0.1-1) whatever the scale of
    the embeddings, so the gate receives gradients from the first step. Without it (the first
    reading) the logits are products of ~0.02-scale vectors, ~1e-5 at init, and the gate stays
    uniform for thousands of steps. ``prior`` is an optional additive logit per item.
    ``gating='mean'`` is the ablation: equal weights over the available experts.

    ``synergy_residual``: a synergy expert adds the mean of its two projections to its MLP output,
    so it starts as their average (like the modality experts start as their input) instead of ~0.
    """

    def __init__(self, modality_dims: Dict[str, int], hidden_size: int, synergy: bool = True, gating: str = "attentive",
                 projection: str = "linear", dropout: float = 0.0, id_path: str = "residual", gate_norm: bool = True,
                 synergy_residual: bool = True):
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
        if id_path not in ID_PATHS:
            raise ValueError(f"id_path must be one of {ID_PATHS}, got {id_path!r}")
        self.modalities = list(modality_dims)
        self.gating = gating
        self.id_expert = id_path == "expert"
        self.gate_norm = gate_norm
        self.synergy_residual = synergy_residual
        self.scale = hidden_size ** -0.5
        self.projections = nn.ModuleDict({m: ModalityProjection(d, hidden_size, projection, dropout) for m, d in modality_dims.items()})
        self.pairs = list(combinations(range(len(self.modalities)), 2)) if synergy else []
        self.first_modality = int(self.id_expert)  # expert index of the first modality expert
        self.expert_names = (["id"] if self.id_expert else []) + self.modalities + [f"{self.modalities[a]}*{self.modalities[b]}" for a, b in self.pairs]
        in_dims = [hidden_size] * (self.first_modality + len(self.modalities)) + [3 * hidden_size] * len(self.pairs)
        self.experts = nn.ModuleList(Expert(in_dim, hidden_size, dropout) for in_dim in in_dims)
        if gating == "attentive":
            self.query = nn.Linear(2 * hidden_size, self.n_experts * hidden_size)
            if gate_norm:
                self.log_temperature = nn.Parameter(torch.zeros(()))

    @property
    def n_experts(self) -> int:
        return len(self.expert_names)

    def forward(self, id_embedding: torch.Tensor, contents: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor], prior: Optional[torch.Tensor] = None) -> Mixture:
        sources = [id_embedding] + [self.projections[m](contents[m]) for m in self.modalities]
        present = [torch.ones_like(masks[self.modalities[0]])] + [masks[m] for m in self.modalities]
        experts, available = self.expert_outputs(sources, present)
        normed = self.normalise(experts, available)
        weights = self.gate(id_embedding, experts, normed, available, prior)
        base = torch.zeros_like(id_embedding) if self.id_expert else id_embedding
        return Mixture(experts, available, weights, base + mix(weights, experts), base, normed, sources)

    def expert_outputs(self, sources: List[torch.Tensor], present: List[torch.Tensor]):
        """``([..., K, d], [..., K] bool)``: every expert's output (zeroed where unavailable) from the
        sources ``[e_id, p_1..p_M]`` and their presence masks."""
        inputs = sources[1 - self.first_modality:]  # the ID embedding is an expert input only with id_path='expert'
        outputs = [expert(x, x) for expert, x in zip(self.experts, inputs)]
        for expert, (a, b) in zip(self.experts[len(inputs):], self.pairs):
            pa, pb = sources[1 + a], sources[1 + b]
            outputs.append(expert(torch.cat([pa, pb, pa * pb], -1), 0.5 * (pa + pb) if self.synergy_residual else None))
        flags = present[1 - self.first_modality:] + [present[1 + a] & present[1 + b] for a, b in self.pairs]
        available = torch.stack(flags, dim=-1)
        experts = torch.stack(outputs, dim=-2)
        return experts * available.unsqueeze(-1).to(experts.dtype), available

    def normalise(self, experts: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Expert outputs layer-normalised per expert (no affine; 0 where unavailable), or as they are
        without ``gate_norm``."""
        if not self.gate_norm:
            return experts
        return F.layer_norm(experts, experts.shape[-1:]) * available.unsqueeze(-1).to(experts.dtype)

    def gate(self, id_embedding, experts, normed, available, prior=None) -> torch.Tensor:
        """Convex weights ``[..., K]`` over the available experts (all 0 for an item with none)."""
        if self.gating == "mean":
            weights = available.to(experts.dtype)
            return weights / weights.sum(-1, keepdim=True).clamp_min(1)
        count = available.sum(-1, keepdim=True).clamp_min(1).to(experts.dtype)
        halves = [id_embedding, normed.sum(-2) / count]
        if self.gate_norm:
            halves = [F.layer_norm(half, half.shape[-1:]) for half in halves]
        queries = self.query(torch.cat(halves, dim=-1)).view(*experts.shape)  # [..., K, d]
        logits = (queries * normed).sum(-1) * self.scale
        if self.gate_norm:
            logits = logits * torch.exp(-self.log_temperature)
        if prior is not None:
            logits = logits + prior
        return masked_softmax(logits, available)

    # ----- the modality swap --------------------------------------------------------------------

    def swapped(self, mixture: Mixture, mode: str = "experts") -> torch.Tensor:
        """Item vectors ``[..., d]`` of the modality-swapped view, the gate weights kept.

        Each item's modalities are shifted cyclically *among the modalities it has* (its text slot
        takes its image content, ...; an item with fewer than two keeps its content). ``mode``:
        ``experts`` moves the computed expert outputs (the synergy experts stay), so nothing is
        recomputed; ``sources`` moves the projections before the experts, which are run again (the
        synergy experts then see their inputs in swapped roles). With a single modality there is no
        other modality to swap in: with the ID residual the view is the item's content alone
        (:func:`content_only`), with the ID expert the ID and the modality swap places.
        """
        if mode not in SWAP_MODES:
            raise ValueError(f"swap_mode must be one of {SWAP_MODES}, got {mode!r}")
        if len(self.modalities) < 2 and not self.id_expert:
            return content_only(mixture, self.id_expert)
        slots = self.swap_slots()  # expert-slot / source-slot offset of the swap pool
        present = mixture.available[..., slots[0]:slots[0] + len(slots)]
        order = present_cycle(present)  # [..., P] pool slot each slot reads from
        if mode == "experts":
            pool = mixture.experts[..., slots[0]:slots[0] + len(slots), :]
            moved = torch.gather(pool, -2, order.unsqueeze(-1).expand_as(pool))
            experts = torch.cat([mixture.experts[..., :slots[0], :], moved, mixture.experts[..., slots[0] + len(slots):, :]], dim=-2)
        else:
            first = 1 if len(self.modalities) >= 2 else 0  # source index of the pool's first slot
            pool = torch.stack(mixture.sources[first:first + len(slots)], dim=-2)
            moved = torch.gather(pool, -2, order.unsqueeze(-1).expand_as(pool)).unbind(-2)
            sources = mixture.sources[:first] + list(moved) + mixture.sources[first + len(slots):]
            flags = [torch.ones_like(mixture.available[..., 0])] + [mixture.available[..., self.first_modality + m] for m in range(len(self.modalities))]
            experts, _ = self.expert_outputs(sources, flags)
        return mixture.base + mix(mixture.weights, experts)

    def swap_slots(self) -> List[int]:
        """Expert slots the swap permutes: the modality experts (at least two modalities), or the ID
        expert and the one modality expert (``id_path='expert'`` with one modality)."""
        if len(self.modalities) >= 2:
            return list(range(self.first_modality, self.first_modality + len(self.modalities)))
        return [0, 1]


def masked_softmax(logits: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Softmax over the available entries of the last dim; rows without any get all-zero weights."""
    any_available = available.any(-1, keepdim=True)
    weights = logits.masked_fill(~available & any_available, float("-inf")).softmax(dim=-1)
    return weights * available.to(weights.dtype)


def present_cycle(present: torch.Tensor) -> torch.Tensor:
    """Index ``[..., P]``: for each present slot, the next present slot in cyclic order (itself when it
    is the only one present); absent slots map to themselves."""
    size = present.shape[-1]
    slots = torch.arange(size, device=present.device).expand(present.shape)
    order, found = slots.clone(), ~present
    for offset in range(1, size):
        candidate = (slots + offset) % size
        take = torch.gather(present, -1, candidate) & ~found
        order = torch.where(take, candidate, order)
        found = found | take
    return order


def content_only(mixture: Mixture, id_expert: bool) -> torch.Tensor:
    """Item vectors ``[..., d]`` without the ID: the residual dropped, or (ID expert) the ID expert's
    weight renormalised away over the remaining available experts (= the gate without that expert).
    Items without any content keep their vector."""
    if not id_expert:
        content = mix(mixture.weights, mixture.experts)
        has_content = mixture.available.any(-1, keepdim=True)
        return torch.where(has_content, content, mixture.mixed)
    weights = mixture.weights.clone()
    weights[..., 0] = 0
    total = weights.sum(-1, keepdim=True)
    renormalised = mix(weights / total.clamp_min(1e-12), mixture.experts)
    return torch.where(total > 0, renormalised, mixture.mixed)


def select(mixture: Mixture, index: torch.Tensor) -> Mixture:
    """The mixture of the items at ``index`` (rows of a mixture over a 1-D item list)."""
    return Mixture(*(field[index] for field in mixture[:6]), [source[index] for source in mixture.sources])


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``sum_k weights_k * experts_k``: ``[..., K]`` x ``[..., K, d]`` -> ``[..., d]``."""
    return (weights.unsqueeze(-1) * experts).sum(-2)


def category_loss(logits: torch.Tensor, categories: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Category prediction loss of items with at least one category.

    ``logits`` ``[n, C]`` (column 0 = padding category, never a target); ``categories`` ``[n, k]``
    RecBole token ids, 0 = none. Multi-label (token_seq, e.g. genres): BCE over the multi-hot
    columns 1..C-1; single label (token): CE against ``categories[:, 0]``.
    """
    labelled = (categories > 0).any(-1)
    if not labelled.any():
        return logits.sum() * 0.0
    logits, categories = logits[labelled], categories[labelled]
    if not multilabel:
        return F.cross_entropy(logits, categories[:, 0])
    target = torch.zeros_like(logits).scatter_(1, categories, 1.0)
    return F.binary_cross_entropy_with_logits(logits[:, 1:], target[:, 1:])


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float, false_negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric InfoNCE between two views ``[B, d]``: row i's positive is row i, the rest of the
    batch are negatives; cosine similarities over ``temperature``. ``false_negatives`` ``[B, B]``
    bool (symmetric): pairs ``(i, j)``, ``i != j``, left out of the negatives (e.g. two sequences of
    one user, or two sequences with the same target)."""
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).t() / temperature
    if false_negatives is not None:
        eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(false_negatives & ~eye, float("-inf"))
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))

