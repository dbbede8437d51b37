"""MUFASA's Multimodal Fusion Layer: title-anchored gated fusion and its four auxiliary losses.

The fusion follows "Multimodal Fusion And Sparse Attention-based Alignment Model for Long
Sequential Recommendation" (arXiv 2508.09664): the title is the semantic anchor, every other
modality is projected and joined to it, and four losses shape the fused space. The paper's
equations are not available; the exact forms below are our choices (see recbole_mm/model/mufasa.py).
All losses take a batch of ``n`` distinct items and return a scalar.
"""

from typing import Dict, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mm.model.layers.fusion import ModalityProjection


class FusedItems(NamedTuple):
    """What the fusion layer produces for a set of items (all ``[..., hidden]``)."""

    anchor: torch.Tensor  # projected title h^t
    fused: torch.Tensor  # fused content f = h^t + sum_m gate_m * h^m
    content: torch.Tensor  # W_f f, the content part of the item vector (lives in the ID space)


class MultimodalFusionLayer(nn.Module):
    """Title-anchored gated fusion: ``f = h^t + sum_m sigmoid(G_m[h^t; h^m]) * h^m``.

    The first modality is the anchor (the title); each other modality ``m`` enters through a gate
    conditioned on the title, so the title decides how much of the image / metadata to trust.
    Missing vectors (mask False) contribute nothing. ``content = W_f f`` is added to the ID
    embedding by the model.
    """

    def __init__(self, modality_dims: Dict[str, int], hidden_size: int, projection: str = "mlp", dropout: float = 0.0):
        super().__init__()
        names = list(modality_dims)
        self.anchor, self.others = names[0], names[1:]
        self.projections = nn.ModuleDict(
            {name: ModalityProjection(dim, hidden_size, projection, dropout) for name, dim in modality_dims.items()}
        )
        self.gates = nn.ModuleDict({name: nn.Linear(2 * hidden_size, hidden_size) for name in self.others})
        self.to_id_space = nn.Linear(hidden_size, hidden_size)

    def forward(self, contents: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor]) -> FusedItems:
        anchor = self._project(self.anchor, contents, masks)
        fused = anchor
        for name in self.others:
            projected = self._project(name, contents, masks)
            fused = fused + torch.sigmoid(self.gates[name](torch.cat([anchor, projected], dim=-1))) * projected
        return FusedItems(anchor, fused, self.to_id_space(fused))

    def _project(self, name, contents, masks):
        return self.projections[name](contents[name]) * masks[name].unsqueeze(-1).to(contents[name].dtype)


# ----- the four auxiliary losses -------------------------------------------------------------------


def multi_positive_info_nce(queries: torch.Tensor, keys: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with a set of positives per query: mean over positives of ``-log softmax`` (cosine / tau).

    ``queries``, ``keys`` ``[n, d]``; ``positives`` bool ``[n, n]`` with at least one True per row.
    """
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).t() / temperature
    log_prob = logits.log_softmax(dim=-1)
    weights = positives.to(log_prob.dtype)
    return -((log_prob * weights).sum(-1) / weights.sum(-1)).mean()


def genres_overlap(genres: torch.Tensor) -> torch.Tensor:
    """``[n, n]`` bool: items i and j share at least one genre (``genres`` ``[n, k]``, 0 = none)."""
    multi_hot = torch.zeros(genres.shape[0], int(genres.max()) + 1, device=genres.device)
    multi_hot = multi_hot.scatter_(1, genres, 1.0)[:, 1:]
    return (multi_hot @ multi_hot.t()) > 0


def cross_genre_positives(title: torch.Tensor, genres: torch.Tensor, top_k: int) -> torch.Tensor:
    """Positives of the cross-genre alignment: the item itself plus, among items that share no
    genre with it, the ``top_k`` whose frozen titles are most similar (cosine).

    Items without any genre are never cross-genre positives (their genre is unknown).
    """
    n = title.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=title.device)
    if top_k <= 0 or n < 2:
        return eye
    similarity = F.normalize(title, dim=-1) @ F.normalize(title, dim=-1).t()
    known = (genres > 0).any(-1)
    eligible = ~genres_overlap(genres) & known[:, None] & known[None, :] & ~eye
    scores = similarity.masked_fill(~eligible, float("-inf"))
    values, indices = scores.topk(min(top_k, n - 1), dim=-1)
    chosen = torch.zeros_like(eye).scatter_(1, indices, torch.isfinite(values))
    return eye | chosen


def cross_genre_alignment_loss(fused, anchor, title, genres, top_k: int, temperature: float) -> torch.Tensor:
    """(i) Pull each fused item towards its own projected title and the titles of semantically
    close items of *other* genres, away from the rest, so genre boundaries do not split the space."""
    return multi_positive_info_nce(fused, anchor, cross_genre_positives(title, genres, top_k), temperature)


def collaborative_alignment_loss(content, id_embedding, temperature: float) -> torch.Tensor:
    """(ii) InfoNCE matching each item's content vector ``W_f f`` to its own ID embedding among the batch."""
    eye = torch.eye(content.shape[0], dtype=torch.bool, device=content.device)
    return multi_positive_info_nce(content, id_embedding, eye, temperature)


def variance_hinge(x: torch.Tensor, target: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's anti-collapse term: ``mean_d relu(target - std_d(x))`` over the batch dimension."""
    return F.relu(target - torch.sqrt(x.var(dim=0) + eps)).mean()


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    return matrix.flatten()[1:].view(n - 1, n + 1)[:, :-1]


def similarity_structure_loss(fused, title) -> torch.Tensor:
    """(iii) MSE between the off-diagonal cosine-similarity matrices of the fused vectors and of the
    frozen titles (keep the title-defined neighbourhoods), plus the variance hinge (no collapse)."""
    fused_sim = F.normalize(fused, dim=-1) @ F.normalize(fused, dim=-1).t()
    title_sim = F.normalize(title, dim=-1) @ F.normalize(title, dim=-1).t()
    return F.mse_loss(off_diagonal(fused_sim), off_diagonal(title_sim)) + variance_hinge(fused)


def uniformity_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` on the unit sphere ("Understanding Contrastive
    Representation Learning through Alignment and Uniformity on the Hypersphere", arXiv 2005.10242)."""
    return torch.pdist(F.normalize(x, dim=-1)).pow(2).mul(-t).exp().mean().log()


def gaussian_moment_loss(x: torch.Tensor) -> torch.Tensor:
    """Moment matching to N(0, I): ``||mean||^2 + ||cov - I||_F^2``, both divided by the dimension."""
    centred = x - x.mean(dim=0)
    cov = centred.t() @ centred / max(x.shape[0] - 1, 1)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return (x.mean(dim=0).pow(2).sum() + (cov - eye).pow(2).sum()) / x.shape[1]


DISTRIBUTION_LOSSES = {"uniformity": uniformity_loss, "gaussian": gaussian_moment_loss}


def distribution_loss(fused, kind: str = "uniformity") -> torch.Tensor:
    """(iv) Keep the fused space spread out: ``uniformity`` on the sphere or ``gaussian`` moments."""
    if kind not in DISTRIBUTION_LOSSES:
        raise ValueError(f"mfl dist_type must be one of {sorted(DISTRIBUTION_LOSSES)}, got {kind!r}")
    return DISTRIBUTION_LOSSES[kind](fused)
