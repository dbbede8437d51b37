"""MUFASA: multimodal fusion with four alignment losses, and a sparse-attention sequence encoder.

Implements "Multimodal Fusion And Sparse Attention-based Alignment Model for Long Sequential
Recommendation" (Fu, Liu, Li, Wu, Qin, Liu; arXiv 2508.09664) as a RecBole SequentialRecommender.
"""

from typing import Dict

import torch
from torch import nn

from recbole_mm.model.abstract import MultimodalSequentialRecommender
from recbole_mm.model.layers import mfl
from recbole_mm.model.layers.sparse_attention import SparseTransformerEncoder

LOSS_NAMES = ("cga", "col", "sim", "dist")  # order of the auxiliary terms in calculate_loss


class MUFASA(MultimodalSequentialRecommender):
    """Multimodal Fusion Layer (MFL) in cascade with a Sparse Attention Alignment Layer (SAL).

    Follows the paper: the title (first modality) anchors the fusion of every other modality with
    the item ID; four auxiliary losses train the fused space — (i) cross-genre semantic alignment,
    (ii) alignment to the collaborative (ID) space, (iii) title similarity-structure preservation
    with anti-collapse, (iv) distributional regularisation; a sparse attention encoder with
    windowed, block-level and selective branches models the long history; next-item CE.

    Our decisions (the paper's equations are not public):
    - item vector ``v = e_id + W_f f`` with title-gated fusion ``f = h^t + sum_m sigmoid(G_m[h^t; h^m]) h^m``
      (keeps the ID signal for frequent items, content for rare ones);
    - (i) multi-positive InfoNCE of f against projected titles; positives are the item's own title
      and the ``cga_topk`` most title-similar items sharing no genre with it;
    - (ii) InfoNCE of ``W_f f`` against the ID embeddings of the batch (ID side detached by default,
      so content moves towards the collaborative space rather than the reverse);
    - (iii) MSE between fused and frozen-title cosine matrices + VICReg variance hinge;
    - (iv) uniformity on the sphere (default: scale-free, complements the hinge of (iii)) or
      Gaussian moment matching (``dist_type``);
    - losses on the distinct items of the batch (sequences + targets), at most ``mfl_loss_items``;
    - SAL is NSA-shaped (see recbole_mm/model/layers/sparse_attention.py); ``attention: dense``
      and ``sal_branches`` are the ablation switches, ``use_mfl: False`` the ID-only ablation.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        self.read_transformer_keys(config)
        self.attention = config["attention"]
        self.sal_branches = tuple(config["sal_branches"])
        self.window_size = config["window_size"]
        self.block_size = config["block_size"]
        self.top_blocks = config["top_blocks"]
        self.select_outside_window = config["select_outside_window"]
        self.use_mfl = config["use_mfl"]
        self.projection = config["projection"]
        self.feature_dropout_prob = config["feature_dropout_prob"]
        self.loss_weights = {name: float(config[f"{name}_weight"] or 0.0) for name in LOSS_NAMES}
        self.mfl_temperature = config["mfl_temperature"]
        self.mfl_loss_items = int(config["mfl_loss_items"] or 0)
        self.cga_topk = config["cga_topk"]
        self.col_detach_id = config["col_detach_id"]
        self.dist_type = config["dist_type"]

        if self.dist_type not in mfl.DISTRIBUTION_LOSSES:
            raise ValueError(f"dist_type must be one of {sorted(mfl.DISTRIBUTION_LOSSES)}, got {self.dist_type!r}")

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        if self.use_mfl:
            self.fusion = mfl.MultimodalFusionLayer(
                self.modality_dims, self.hidden_size, self.projection, self.feature_dropout_prob
            )
            if self.loss_weights["cga"] > 0:
                self.category_table(dataset, config["category_field"])
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.encoder = SparseTransformerEncoder(
            n_layers=self.n_layers,
            hidden_size=self.hidden_size,
            n_heads=self.n_heads,
            inner_size=self.inner_size,
            hidden_dropout=self.hidden_dropout_prob,
            attn_dropout=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            window_size=self.window_size,
            block_size=self.block_size,
            top_blocks=self.top_blocks,
            attention=self.attention,
            branches=self.sal_branches,
            select_outside_window=self.select_outside_window,
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)

        self.apply(self._init_weights)

    # ----- items ----------------------------------------------------------------------------------

    def fuse(self, item_ids: torch.Tensor) -> mfl.FusedItems:
        contents, masks = self.modality_lookup(item_ids)
        return self.fusion(contents, masks)

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``e_id + W_f f`` (or the bare ID embedding when ``use_mfl`` is off)."""
        vectors = self.item_embedding(item_ids)
        if self.use_mfl:
            vectors = vectors + self.fuse(item_ids).content
        return vectors

    # ----- sequence -------------------------------------------------------------------------------

    def forward(self, item_seq, item_seq_len):
        # Fuse each distinct item once instead of once per position (histories repeat items).
        distinct, inverse = torch.unique(item_seq, return_inverse=True)
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        hidden = self.item_vectors(distinct)[inverse] + self.position_embedding(position_ids).unsqueeze(0)
        hidden = self.dropout(self.LayerNorm(hidden))
        output = self.encoder(hidden, item_seq > 0)
        return self.gather_indexes(output, item_seq_len - 1)  # [B, d]

    # ----- losses ---------------------------------------------------------------------------------

    def active_losses(self):
        """Names of the auxiliary terms that run (weight > 0 and the fusion layer present)."""
        return [name for name in LOSS_NAMES if self.use_mfl and self.loss_weights[name] > 0]

    def loss_items(self, interaction) -> torch.Tensor:
        """Distinct items of the batch that have a title vector, at most ``mfl_loss_items`` (random)."""
        items = torch.cat([interaction[self.ITEM_SEQ].flatten(), interaction[self.POS_ITEM_ID].flatten()]).unique()
        items = items[getattr(self, f"feature_mask_{self.fusion.anchor}")[items] & (items > 0)]
        if 0 < self.mfl_loss_items < items.numel():
            items = items[torch.randperm(items.numel(), device=items.device)[: self.mfl_loss_items]]
        return items

    def mfl_losses(self, interaction) -> Dict[str, torch.Tensor]:
        """Unweighted auxiliary losses ``{name: scalar}`` of the active terms, in ``LOSS_NAMES`` order."""
        names = self.active_losses()
        if not names:
            return {}
        items = self.loss_items(interaction)
        if items.numel() < 2:  # nothing to contrast; keep the tuple's length fixed for RecBole's logging
            return {name: self.item_embedding.weight.sum() * 0.0 for name in names}
        fused = self.fuse(items)
        title = getattr(self, f"feature_{self.fusion.anchor}")[items]
        terms = {}
        if "cga" in names:
            genres = self.item_categories[items]
            terms["cga"] = mfl.cross_genre_alignment_loss(
                fused.fused, fused.anchor, title, genres, self.cga_topk, self.mfl_temperature
            )
        if "col" in names:
            id_embedding = self.item_embedding(items)
            if self.col_detach_id:
                id_embedding = id_embedding.detach()
            terms["col"] = mfl.collaborative_alignment_loss(fused.content, id_embedding, self.mfl_temperature)
        if "sim" in names:
            terms["sim"] = mfl.similarity_structure_loss(fused.fused, title)
        if "dist" in names:
            terms["dist"] = mfl.distribution_loss(fused.fused, self.dist_type)
        return terms

    def loss_names(self):
        """Names of :meth:`calculate_loss`'s terms, in order (the trainer's NaN/Inf message uses them)."""
        return ["rec"] + self.active_losses()

    def calculate_loss(self, interaction):
        """Next-item CE, then each active auxiliary loss times its weight (a tuple RecBole sums and logs)."""
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        rec_loss = self.recommendation_loss(seq_output, interaction)
        aux = self.mfl_losses(interaction)
        if not aux:
            return rec_loss
        return (rec_loss,) + tuple(self.loss_weights[name] * value for name, value in aux.items())
