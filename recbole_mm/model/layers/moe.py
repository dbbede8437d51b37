"""Mixture of modality experts with attentive per-item gating, the modality swap, the category loss.

Used by CAMMSR ("CAMMSR: Category-guided Attentive Mixture of Experts for Multimodal Sequential
Recommendation", arXiv 2603.04320). Experts: one per source (the ID embedding, each modality) and,
optionally, one *synergy* expert per pair of modalities that sees both projections and their
element-wise product, i.e. signals that only exist in combination. The gate gives every item its
own convex weights over the experts that item has (missing modalities get weight 0).
"""

from itertools import combinations
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mm.model.layers.fusion import ModalityProjection

GATINGS = ("attentive", "mean")


class Mixture(NamedTuple):
    """What the mixture computed for a set of items (leading dims ``...`` = the items' shape)."""

    experts: torch.Tensor  # [..., K, d] expert outputs (0 where unavailable)
    available: torch.Tensor  # [..., K] bool: the expert's inputs exist for the item
    weights: torch.Tensor  # [..., K] gate weights, sum to 1 over available experts
    mixed: torch.Tensor  # [..., d] the item representation sum_k weights_k * experts_k
    sources: List[torch.Tensor]  # [e_id, p_1, ..., p_M], each [..., d]: what the experts read


class Expert(nn.Module):
    """``Linear -> GELU -> Dropout -> Linear``; residual when input and output sizes match."""

    def __init__(self, in_dim: int, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.residual = in_dim == hidden_size
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x) if self.residual else self.net(x)


class ModalityMixture(nn.Module):
    """Experts over ID / modalities / modality pairs, mixed by an attentive gate.

    Gate (``gating='attentive'``): from the item's context ``c = [e_id; mean of its expert outputs]``
    one query per expert ``q_k = (W c)_k`` scores that expert's output,
    ``a = softmax_k(q_k . o_k / sqrt(d) + prior_k)`` over the available experts, so weights depend
    on what the item's ID and content say (context-aware, per item); ``q_k . o_k = c^T W_k^T o_k`` is
    the bilinear attention score with one key matrix per expert. ``prior`` is an optional additive
    logit per item (CAMMSR's category prior). ``gating='mean'`` is the ablation: equal weights over
    the available experts.

    ``id_dropout``: in training, each item's ID expert is left out with this probability (see
    :func:`drop_id_expert`). Without it the gate learns to trust the ID expert for every item early
    on (its per-item parameters fit the training data fastest) and the content experts stay weak,
    which is what items rare in training then get.
    """

    def __init__(self, modality_dims: Dict[str, int], hidden_size: int, synergy: bool = True, gating: str = "attentive", projection: str = "linear", dropout: float = 0.0, id_dropout: float = 0.0):
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
        self.modalities = list(modality_dims)
        self.gating = gating
        self.id_dropout = id_dropout
        self.scale = hidden_size ** -0.5
        self.projections = nn.ModuleDict({m: ModalityProjection(d, hidden_size, projection, dropout) for m, d in modality_dims.items()})
        self.pairs = list(combinations(range(len(self.modalities)), 2)) if synergy else []
        self.expert_names = ["id"] + self.modalities + [f"{self.modalities[a]}*{self.modalities[b]}" for a, b in self.pairs]
        in_dims = [hidden_size] * (1 + len(self.modalities)) + [3 * hidden_size] * len(self.pairs)
        self.experts = nn.ModuleList(Expert(in_dim, hidden_size, dropout) for in_dim in in_dims)
        if gating == "attentive":
            self.query = nn.Linear(2 * hidden_size, self.n_experts * hidden_size)

    @property
    def n_experts(self) -> int:
        return len(self.expert_names)

    def forward(self, id_embedding: torch.Tensor, contents: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor], prior: Optional[torch.Tensor] = None) -> Mixture:
        sources = [id_embedding] + [self.projections[m](contents[m]) for m in self.modalities]
        present = [torch.ones_like(masks[self.modalities[0]])] + [masks[m] for m in self.modalities]
        if self.training and self.id_dropout > 0:
            present[0] = keep_id_expert(present, self.id_dropout)
        experts, available = self.expert_outputs(sources, present)
        weights = self.gate(id_embedding, experts, available, prior)
        return Mixture(experts, available, weights, mix(weights, experts), sources)

    def expert_outputs(self, sources: List[torch.Tensor], present: List[torch.Tensor]):
        """``([..., K, d], [..., K] bool)``: every expert's output (zeroed where unavailable) from the
        sources ``[e_id, p_1..p_M]`` and their presence masks."""
        pair_inputs = [torch.cat([sources[1 + a], sources[1 + b], sources[1 + a] * sources[1 + b]], -1) for a, b in self.pairs]
        available = torch.stack(present + [present[1 + a] & present[1 + b] for a, b in self.pairs], dim=-1)
        experts = torch.stack([expert(x) for expert, x in zip(self.experts, sources + pair_inputs)], dim=-2)
        return experts * available.unsqueeze(-1).to(experts.dtype), available

    def swapped(self, mixture: Mixture, pool: Sequence[int]) -> torch.Tensor:
        """Item vectors ``[..., d]`` with the sources of ``pool`` cyclically shifted before the experts
        (the text expert reads the image projection, the image expert the text one, the synergy
        expert sees them in swapped roles) and the original gate weights kept."""
        order = cyclic_order(len(mixture.sources), pool)
        present = [mixture.available[..., index] for index in range(len(mixture.sources))]
        experts, _ = self.expert_outputs([mixture.sources[i] for i in order], [present[i] for i in order])
        return mix(mixture.weights, experts)

    def gate(self, id_embedding, experts, available, prior=None) -> torch.Tensor:
        """Convex weights ``[..., K]`` over the available experts."""
        if self.gating == "mean":
            weights = available.to(experts.dtype)
            return weights / weights.sum(-1, keepdim=True)
        count = available.sum(-1, keepdim=True).clamp_min(1).to(experts.dtype)
        context = torch.cat([id_embedding, experts.sum(-2) / count], dim=-1)
        queries = self.query(context).view(*experts.shape)  # [..., K, d]
        logits = (queries * experts).sum(-1) * self.scale
        if prior is not None:
            logits = logits + prior
        return logits.masked_fill(~available, float("-inf")).softmax(dim=-1)


def select(mixture: Mixture, index: torch.Tensor) -> Mixture:
    """The mixture of the items at ``index`` (rows of a mixture over a 1-D item list)."""
    return Mixture(*(field[index] for field in mixture[:4]), [source[index] for source in mixture.sources])


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``sum_k weights_k * experts_k``: ``[..., K]`` x ``[..., K, d]`` -> ``[..., d]``."""
    return (weights.unsqueeze(-1) * experts).sum(-2)


def keep_id_expert(present: List[torch.Tensor], rate: float) -> torch.Tensor:
    """Presence of the ID expert ``[...]`` with a random ``rate`` of the items dropped (only items
    that have a modality), so content must carry those items alone and the gate learns to weigh it."""
    has_content = torch.stack(present[1:], dim=-1).any(-1)
    drop = (torch.rand(has_content.shape, device=has_content.device) < rate) & has_content
    return present[0] & ~drop


def swap_pool(modalities: Sequence[str]) -> List[int]:
    """Source slots the modality swap permutes: the modalities (slots 1..M) when there are at least
    two, else the ID embedding and the one modality."""
    return list(range(1, 1 + len(modalities))) if len(modalities) >= 2 else [0, 1]


def cyclic_order(size: int, pool: Sequence[int]) -> List[int]:
    """Index map of ``size`` slots where each slot of ``pool`` takes the next pool slot's content."""
    pool = list(pool)
    order = list(range(size))
    for slot, source in zip(pool, pool[1:] + pool[:1]):
        order[slot] = source
    return order


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


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views ``[B, d]``: row i's positive is row i, the rest of the
    batch are negatives; cosine similarities over ``temperature``."""
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).t() / temperature
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
