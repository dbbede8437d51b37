"""MUFASA: multimodal fusion with four alignment losses, and a sparse-attention sequence encoder.

Implements "Multimodal Fusion And Sparse Attention-based Alignment Model for Long Sequential
Recommendation" (Fu, Liu, Li, Wu, Qin, Liu; arXiv 2508.09664) as a RecBole SequentialRecommender.
"""

import logging
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mm.model.abstract import MultimodalSequentialRecommender
from recbole_mm.model.layers import mfl
from recbole_mm.model.layers.sparse_attention import DROPOUT_TYPES, SparseTransformerEncoder, UniformDropout

LOSS_NAMES = ("cga", "col", "sim", "dist")  # order of the auxiliary terms in calculate_loss
FUSION_INITS = ("matched", "normal")  # the fusion layer's weight initialisation (see the class docstring)


class MUFASA(MultimodalSequentialRecommender):
    """Multimodal Fusion Layer (MFL) in cascade with a Sparse Attention Alignment Layer (SAL).

    Follows the paper: the title (first modality) anchors the fusion of every other modality with
    the item ID; four auxiliary losses can train the fused space — (i) cross-modal semantic alignment
    anchored on the title, (ii) alignment to the collaborative (ID) space, (iii) title
    similarity-structure preservation with anti-collapse, (iv) distributional regularisation; a sparse
    attention encoder with windowed, block-level and selective branches models the long history;
    next-item CE.

    Our decisions (the paper's equations are not public):
    - item vector ``v = e_id + W_f f`` with title-gated fusion ``f = h^t + sum_m sigmoid(G_m[h^t; h^m]) h^m``
      (keeps the ID signal for frequent items, content for rare ones);
    - the fusion's Linear layers start from N(0, 1/fan_in), the last one scaled so that ``W_f f``
      starts at the rms of ``e_id`` (``fusion_init: matched``); under the backbone's N(0, 0.02)
      (``normal``) its three stacked layers start it ~70x smaller on ml-100k-mm and the content path
      barely trains early;
    - (i) symmetric InfoNCE between each item's projected title and its own other modalities, against
      the other items of the (genre-mixed) batch. An earlier form took as positives the most
      title-similar items sharing no genre; on ml-100k those were lexical accidents, so it was dropped;
    - (ii) InfoNCE of ``W_f f`` against the ID embeddings of the batch (ID side detached by default,
      so content moves towards the collaborative space rather than the reverse);
    - (iii) MSE between the projected titles' and the frozen titles' cosine matrices (the title
      projection only, so the fused vector may follow metadata / images) + a variance hinge on the
      fused vectors scaled to a fixed norm (scale-free, unlike a hinge on raw vectors);
    - (iv) uniformity on the sphere (default) or Gaussian moment matching (``dist_type``);
    - the auxiliary weights are 0 by default: none has yet shown a gain under the benchmark protocol
      (each is one key away, and the hyper-parameter file searches them);
    - losses on the distinct items of the batch (sequences + targets), at most ``mfl_loss_items``;
    - one fusion per training step: the step's item vectors (the whole catalogue with CE) are built
      once and serve the history, the scores and the auxiliary losses; the frozen unit title vectors
      are a buffer computed at build time;
    - hidden dropout draws its keep mask with ``torch.rand`` (``UniformDropout``: the distribution of
      ``nn.Dropout`` with a cheaper CPU sampler, so a different random stream);
    - SAL is NSA-shaped (see recbole_mm/model/layers/sparse_attention.py); ``attention: dense``,
      ``sal_branches`` and ``select_outside_window`` are its switches, ``use_mfl: False`` the ID-only
      ablation.
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
        self.attn_dropout_type = config["attn_dropout_type"] or "dropkey"
        self.use_mfl = config["use_mfl"]
        self.projection = config["projection"]
        self.feature_dropout_prob = config["feature_dropout_prob"]
        self.fusion_init = config["fusion_init"] or "matched"
        self.loss_weights = {name: float(config[f"{name}_weight"] or 0.0) for name in LOSS_NAMES}
        self.mfl_temperature = config["mfl_temperature"]
        self.mfl_loss_items = int(config["mfl_loss_items"] or 0)
        self.col_detach_id = config["col_detach_id"]
        self.dist_type = config["dist_type"]

        if self.attn_dropout_type not in DROPOUT_TYPES:
            raise ValueError(f"attn_dropout_type must be one of {DROPOUT_TYPES}, got {self.attn_dropout_type!r}")
        if self.fusion_init not in FUSION_INITS:
            raise ValueError(f"fusion_init must be one of {FUSION_INITS}, got {self.fusion_init!r}")
        if self.dist_type not in mfl.DISTRIBUTION_LOSSES:
            raise ValueError(f"dist_type must be one of {sorted(mfl.DISTRIBUTION_LOSSES)}, got {self.dist_type!r}")
        for name, weight in self.loss_weights.items():
            if weight < 0:
                raise ValueError(f"{name}_weight must be >= 0, got {weight}")
        self._warn_if_window_covers_history()

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        if self.use_mfl:
            self.fusion = mfl.MultimodalFusionLayer(
                self.modality_dims, self.hidden_size, self.projection, self.feature_dropout_prob
            )
            title = getattr(self, f"feature_{self.fusion.anchor}")
            self.register_buffer("title_unit", F.normalize(title, dim=-1), persistent=False)  # frozen, once
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
            dropout_type=self.attn_dropout_type,
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = UniformDropout(self.hidden_dropout_prob)

        self.apply(self._init_weights)
        if self.use_mfl and self.fusion_init == "matched":
            self._init_content_scale()

    def _warn_if_window_covers_history(self):
        """SAL's block and select branches exist to reach beyond the window; when the window spans the
        whole history they only re-read what it shows, at extra cost (and lower NDCG@10 on short
        histories in the benchmark's ``cold-valid`` regime), so say so once, at build time."""
        extra = [name for name in self.sal_branches if name != "window"]
        if self.attention == "sparse" and extra and self.max_seq_length <= self.window_size:
            logging.getLogger().warning(
                f"MUFASA: MAX_ITEM_LIST_LENGTH {self.max_seq_length} <= window_size {self.window_size}: the window "
                f"branch already sees the whole history and the {' and '.join(extra)} branches only re-read it; "
                "for histories this short set attention: 'dense' (or sal_branches: ['window'])"
            )

    def _init_content_scale(self, most_items: int = 4096):
        """Start ``W_f f`` at the ID embedding's scale (rms ``initializer_range``), measured on up to
        ``most_items`` evenly spaced items that have a feature vector (no random draws)."""
        ids = torch.linspace(1, self.n_items - 1, min(self.n_items - 1, most_items)).round().long().unique()
        ids = ids.to(self.feature_device())
        present = torch.stack(list(self.modality_lookup(ids)[1].values())).any(0)
        self.fusion.init_content_scale(*self.modality_lookup(ids[present]), self.initializer_range)

    # ----- items ----------------------------------------------------------------------------------

    def fuse(self, item_ids: torch.Tensor) -> mfl.FusedItems:
        contents, masks = self.modality_lookup(item_ids)
        return self.fusion(contents, masks)

    def vectors_from(self, item_ids: torch.Tensor, fused: Optional[mfl.FusedItems]) -> torch.Tensor:
        """``e_id + W_f f`` of ``item_ids`` given their fusion (None: ID-only)."""
        vectors = self.item_embedding(item_ids)
        return vectors if fused is None else vectors + fused.content

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``e_id + W_f f`` (or the bare ID embedding when ``use_mfl`` is off)."""
        return self.vectors_from(item_ids, self.fuse(item_ids) if self.use_mfl else None)

    # ----- sequence -------------------------------------------------------------------------------

    def forward(self, item_seq, item_seq_len, vectors_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        """User vectors ``[B, d]``; ``vectors_of`` maps ids to item vectors already built this step."""
        if vectors_of is None:  # fuse each distinct item once instead of once per position
            distinct, inverse = torch.unique(item_seq, return_inverse=True)
            items = self.item_vectors(distinct)[inverse]
        else:
            items = vectors_of(item_seq)
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        hidden = self.dropout(self.LayerNorm(items + self.position_embedding(position_ids).unsqueeze(0)))
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

    def mfl_losses(self, interaction, step_ids: Optional[torch.Tensor] = None,
                   step_fused: Optional[mfl.FusedItems] = None) -> Dict[str, torch.Tensor]:
        """Unweighted auxiliary losses ``{name: scalar}`` of the active terms, in ``LOSS_NAMES`` order.

        ``step_ids`` (sorted) and ``step_fused``: the items fused this step, to take the loss items'
        rows from instead of fusing them again.
        """
        names = self.active_losses()
        if not names:
            return {}
        items = self.loss_items(interaction)
        if items.numel() < 2:  # nothing to contrast; keep the tuple's length fixed for RecBole's logging
            return {name: self.item_embedding.weight.sum() * 0.0 for name in names}
        if step_fused is None:
            fused = self.fuse(items)
        else:
            fused = self.fusion.select(step_fused, torch.searchsorted(step_ids, items))
        terms = {}
        if "cga" in names:
            terms["cga"] = mfl.cross_modal_alignment_loss(fused, self.fusion.anchor, self.mfl_temperature)
        if "col" in names:
            id_embedding = self.item_embedding(items)
            if self.col_detach_id:
                id_embedding = id_embedding.detach()
            terms["col"] = mfl.collaborative_alignment_loss(fused.content, id_embedding, self.mfl_temperature)
        if "sim" in names:
            terms["sim"] = mfl.similarity_structure_loss(fused.anchor, self.title_unit[items], fused.fused)
        if "dist" in names:
            terms["dist"] = mfl.distribution_loss(fused.fused, self.dist_type)
        return terms

    def loss_names(self):
        """Names of :meth:`calculate_loss`'s terms, in order (the trainer's NaN/Inf message uses them)."""
        return ["rec"] + self.active_losses()

    def step_items(self, interaction) -> torch.Tensor:
        """Sorted ids whose vectors a training step needs: the catalogue with CE, else the batch's items."""
        if self.loss_type == "CE":
            return self.all_item_ids()
        parts = [interaction[self.ITEM_SEQ].flatten(), interaction[self.POS_ITEM_ID].flatten(),
                 interaction[self.NEG_ITEM_ID].flatten()]
        return torch.cat(parts).unique()

    def calculate_loss(self, interaction):
        """Next-item loss, then each active auxiliary loss times its weight (a tuple RecBole sums and logs).

        The step's items are fused once; history, scores and auxiliary losses all read those vectors.
        """
        ids = self.step_items(interaction)
        fused = self.fuse(ids) if self.use_mfl else None
        vectors = self.vectors_from(ids, fused)

        def vectors_of(item_ids):
            return vectors[torch.searchsorted(ids, item_ids)] if self.loss_type != "CE" else vectors[item_ids]

        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], vectors_of)
        rec_loss = self.recommendation_loss(seq_output, interaction, vectors_of)
        aux = self.mfl_losses(interaction, ids, fused) if fused is not None else {}
        if not aux:
            return rec_loss
        return (rec_loss,) + tuple(self.loss_weights[name] * value for name, value in aux.items())
