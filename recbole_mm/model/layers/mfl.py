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
    others: Dict[str, torch.Tensor]  # projected other modalities h^m (zero where missing)
    masks: Dict[str, torch.Tensor]  # [...] bool per modality (anchor included): the item has a vector


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
        fused, others = anchor, {}
        for name in self.others:
            others[name] = projected = self._project(name, contents, masks)
            fused = fused + torch.sigmoid(self.gates[name](torch.cat([anchor, projected], dim=-1))) * projected
        return FusedItems(anchor, fused, self.to_id_space(fused), others, masks)

    def init_content_scale(self, contents: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor], target_rms: float):
        """Draw every Linear from N(0, 1/fan_in) (biases zero), so that no layer shrinks its input, then
        scale ``to_id_space`` so that ``content`` has rms ``target_rms`` on the given items (whatever the
        features' own scale). Under the backbone's N(0, 0.02) the three stacked layers start ``content``
        ~70x below the ID embedding on ml-100k-mm, and the content path barely trains early."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features ** -0.5)
                nn.init.zeros_(module.bias)
        training = self.training
        self.eval()  # no feature dropout in the measurement
        with torch.no_grad():
            rms = self(contents, masks).content.pow(2).mean().sqrt()
            if rms > 0:
                self.to_id_space.weight.mul_(target_rms / rms)
        self.train(training)

    def _project(self, name, contents, masks):
        return self.projections[name](contents[name]) * masks[name].unsqueeze(-1).to(contents[name].dtype)

    def select(self, items: FusedItems, index: torch.Tensor) -> FusedItems:
        """The rows ``index`` of every field (for the loss items among a step's fused items)."""
        return FusedItems(items.anchor[index], items.fused[index], items.content[index],
                          {k: v[index] for k, v in items.others.items()}, {k: v[index] for k, v in items.masks.items()})


# ----- the four auxiliary losses -------------------------------------------------------------------


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE matching row ``i`` of ``queries`` to row ``i`` of ``keys`` among all rows (cosine / tau)."""
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def cross_modal_alignment_loss(items: FusedItems, anchor: str, temperature: float) -> torch.Tensor:
    """(i) Semantic alignment with the title as anchor: for every other modality ``m``, symmetric InfoNCE
    between each item's projected title ``h^t`` and its own ``h^m`` against the other items of the batch
    (items that have both vectors). The batch mixes genres, so titles and images / metadata of every
    genre meet in one space instead of splitting by genre. 0 when no other modality has two such items.
    """
    terms = []
    for name, projected in items.others.items():
        both = items.masks[name] & items.masks[anchor]
        if int(both.sum()) < 2:
            continue
        title, other = items.anchor[both], projected[both]
        terms.append(0.5 * (info_nce(title, other, temperature) + info_nce(other, title, temperature)))
    return torch.stack(terms).mean() if terms else items.anchor.sum() * 0.0


def collaborative_alignment_loss(content, id_embedding, temperature: float) -> torch.Tensor:
    """(ii) InfoNCE matching each item's content vector ``W_f f`` to its own ID embedding among the batch."""
    return info_nce(content, id_embedding, temperature)


def variance_hinge(x: torch.Tensor, target: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's anti-collapse term: ``mean_d relu(target - std_d(x))`` over the batch dimension."""
    return F.relu(target - torch.sqrt(x.var(dim=0) + eps)).mean()


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    return matrix.flatten()[1:].view(n - 1, n + 1)[:, :-1]


def similarity_structure_loss(anchor, title_unit, fused) -> torch.Tensor:
    """(iii) MSE between the off-diagonal cosine matrices of the projected titles and of the frozen title
    vectors (``title_unit``, already unit length): the title projection keeps the title neighbourhoods,
    while the fused vector stays free to follow the other modalities; plus the variance hinge on the fused
    vectors scaled to norm ``sqrt(d)`` (no dimension collapses, whatever the vectors' scale: on raw vectors
    the hinge would inflate them to unit spread).
    """
    anchor_unit = F.normalize(anchor, dim=-1)
    mse = F.mse_loss(off_diagonal(anchor_unit @ anchor_unit.t()), off_diagonal(title_unit @ title_unit.t()))
    return mse + variance_hinge(F.normalize(fused, dim=-1) * fused.shape[-1] ** 0.5)


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
