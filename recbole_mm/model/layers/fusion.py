"""Item encoders that put frozen modality features and a learned ID embedding into one space."""

from typing import Dict, Sequence

import torch
from torch import nn


class ModalityProjection(nn.Module):
    """Map a frozen modality vector (``[..., d_m]``) to the model's hidden size.

    ``kind='linear'``: one Linear; ``kind='mlp'``: Linear -> GELU -> Linear (more capacity
    for large text/image encoders). Dropout on the output regularises the content path.
    """

    def __init__(self, in_dim: int, hidden_size: int, kind: str = "linear", dropout: float = 0.0):
        super().__init__()
        if kind == "linear":
            layers = [nn.Linear(in_dim, hidden_size)]
        elif kind == "mlp":
            layers = [nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        else:
            raise ValueError(f"projection must be 'linear' or 'mlp', got {kind!r}")
        self.net = nn.Sequential(*layers, nn.Dropout(dropout))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class MultimodalItemEncoder(nn.Module):
    """ID embedding plus projected modalities, fused by a plain sum or per-modality gates.

    ``sum``:   v = e + sum_m mask_m * P_m(x_m)
    ``gated``: v = e + sum_m mask_m * sigmoid(G_m[e; P_m(x_m)]) * P_m(x_m)
    Items without a vector for modality m (mask False) get no contribution from it.
    """

    def __init__(self, modality_dims: Dict[str, int], hidden_size: int, fusion: str = "sum", projection: str = "linear", dropout: float = 0.0):
        super().__init__()
        if fusion not in ("sum", "gated"):
            raise ValueError(f"fusion must be 'sum' or 'gated', got {fusion!r}")
        self.fusion = fusion
        self.projections = nn.ModuleDict(
            {name: ModalityProjection(dim, hidden_size, projection, dropout) for name, dim in modality_dims.items()}
        )
        if fusion == "gated":
            self.gates = nn.ModuleDict({name: nn.Linear(2 * hidden_size, hidden_size) for name in modality_dims})

    def project(self, contents: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Projected modality vectors ``{name: [..., hidden]}``."""
        return {name: self.projections[name](vectors) for name, vectors in contents.items()}

    def forward(self, id_embedding: torch.Tensor, contents: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor]) -> torch.Tensor:
        fused = id_embedding
        for name, projected in self.project(contents).items():
            if self.fusion == "gated":
                projected = torch.sigmoid(self.gates[name](torch.cat([id_embedding, projected], dim=-1))) * projected
            fused = fused + projected * masks[name].unsqueeze(-1).to(projected.dtype)
        return fused


def modality_names_valid(names: Sequence[str]) -> None:
    """Modality names become module and buffer keys, so they must be plain identifiers."""
    for name in names:
        if not str(name).replace("_", "a").replace("-", "a").isalnum() or "." in str(name):
            raise ValueError(f"modality name {name!r} must contain only letters, digits, '_' or '-'")
