"""CAMMSR: category-guided attentive mixture of experts, modality-swap contrast, DyT Transformer.

Implements "CAMMSR: Category-guided Attentive Mixture of Experts for Multimodal Sequential
Recommendation" (Xu, Chen, Yang, Li, Wang, Li, Tang, Liu, Ngai; arXiv 2603.04320) as a RecBole
SequentialRecommender. The encoder's normalisation is DynamicTanh ("Transformers without
Normalization", arXiv 2503.10622).
"""

import torch
from recbole.utils import FeatureType
from torch import nn

from recbole_mm.model.abstract import MultimodalSequentialRecommender
from recbole_mm.model.layers.dyt import make_norm, norm_factory
from recbole_mm.model.layers.moe import ModalityMixture, category_loss, info_nce, select, swap_pool
from recbole_mm.model.layers.transformer import TransformerEncoder


class CAMMSR(MultimodalSequentialRecommender):
    """CAMoE item representations, a DyT Transformer over the sequence, next-item CE + two aux losses.

    Follows the paper: experts learn specialised item representations from ID / each modality and
    their inter-modal synergy; an attentive gate weights them per item; an auxiliary category
    prediction task guides those weights; modality-swap contrastive learning aligns a sequence with
    its modality-swapped view; DyT replaces LayerNorm in the Transformer.

    Our decisions (the paper's equations are not public; see research/cammsr.md):
    - experts: ``E_id(e)``, ``E_m(P_m x_m)`` per modality, and one synergy expert per modality pair
      on ``[p_a; p_b; p_a * p_b]`` (``synergy_experts``); item vector ``z = sum_k a_k o_k``, used both
      in the input sequence and for scoring (dot product), so full ranking stays one matrix product;
    - gate: per-expert queries from ``[e_id; mean expert output]`` dotted with each expert output
      (``layers/moe.py``): the weights depend on the item's own ID and content. No sequence context
      in the gate, because the same ``z`` must score the whole catalogue. ``gating: mean`` is the
      no-gate ablation;
    - category guidance, two paths: (1) a linear head predicts the item's category from ``z`` (CE
      for a token field, BCE over the multi-hot for token_seq such as genres) on the distinct items
      of the batch; its gradient reaches the gate through ``a_k``; (2) ``category_prior``: a learned
      per-category expert preference added to the gate logits (mean over an item's categories),
      zero at start. (2) is on by default: on the planted set of ``data/synthetic_cammsr.py``, where
      the category alone says which modality to trust, it lifted Recall@10 from ~0.32-0.39 to 0.45;
      the cost is that the gate reads the category label at inference (as FDSA / SASRecF do);
    - ``id_dropout_prob``: in training an item's ID expert is dropped from its mixture at this rate,
      otherwise the gate settles on the ID expert for every item and content stays weak (planted
      set: Recall@10 0.23 -> 0.29-0.33 at 0.5);
    - modality swap: at ``swap_rate`` of the valid positions (at least one per sequence) the modality
      experts' outputs are cyclically shifted while the gate weights stay (text weight x image
      output, ...); InfoNCE (in-batch negatives, ``cl_temperature``) between the last-position
      representations of the original and the swapped sequence. With one modality the swap is
      between the ID and that modality;
    - encoder: SASRec's post-norm blocks with every norm (and the embedding norm) from ``norm``. The
      input DyT starts at ``dyt_input_alpha_init`` (10), not 0.5: item and position embeddings start
      at ~0.02 scale (RecBole's init), where LayerNorm rescales by ~50 and DyT with alpha 0.5 would
      pass ~100x smaller signals on (planted set: Recall@10 0.07 at 0.5, 0.22 at 5-20);
    - optional log-scaled time-gap embedding (``n_time_buckets``; the abstract mentions timestamps);
    - ``L = L_CE + cat_weight * L_cat + cl_weight * L_cl``; a weight of 0 skips the term's computation.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        self.read_transformer_keys(config)
        self.norm = config["norm"]
        self.dyt_alpha_init = config["dyt_alpha_init"]
        self.dyt_input_alpha_init = config["dyt_input_alpha_init"] or self.dyt_alpha_init
        self.projection = config["projection"]
        self.feature_dropout_prob = config["feature_dropout_prob"]
        self.id_dropout_prob = config["id_dropout_prob"] or 0.0
        self.synergy_experts = config["synergy_experts"]
        self.gating = config["gating"]
        self.use_category_prior = bool(config["category_prior"]) and self.gating == "attentive"  # a mean gate has no logits
        self.cat_weight = float(config["cat_weight"] or 0.0)
        self.cl_weight = float(config["cl_weight"] or 0.0)
        self.cl_temperature = config["cl_temperature"]
        self.swap_rate = config["swap_rate"]
        self.n_time_buckets = int(config["n_time_buckets"] or 0)
        self.time_unit = float(config["time_unit"] or 1.0)
        self.TIME_LIST = f"{config['TIME_FIELD']}{config['LIST_SUFFIX']}" if config["TIME_FIELD"] else None

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.mixture = ModalityMixture(
            self.modality_dims, self.hidden_size, self.synergy_experts, self.gating, self.projection, self.feature_dropout_prob,
            self.id_dropout_prob,
        )
        self.swap_pool = swap_pool(self.modalities)
        if self.cat_weight > 0 or self.use_category_prior:
            _, self.n_categories = self.category_table(dataset, config["category_field"])
            self.category_multilabel = dataset.field2type[config["category_field"]] == FeatureType.TOKEN_SEQ
        if self.cat_weight > 0:
            self.category_head = nn.Linear(self.hidden_size, self.n_categories)
        if self.use_category_prior:
            self.category_prior = nn.Embedding(self.n_categories, self.mixture.n_experts, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        if self.n_time_buckets > 0:
            self.time_embedding = nn.Embedding(self.n_time_buckets + 1, self.hidden_size, padding_idx=0)
        self.encoder = TransformerEncoder(
            self.n_layers,
            self.hidden_size,
            self.n_heads,
            self.inner_size,
            norm=norm_factory(self.norm, self.hidden_size, self.layer_norm_eps, self.dyt_alpha_init),
            hidden_dropout=self.hidden_dropout_prob,
            attn_dropout=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
        )
        self.input_norm = make_norm(self.norm, self.hidden_size, self.layer_norm_eps, self.dyt_input_alpha_init)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)

        self.apply(self._init_weights)
        if self.use_category_prior:
            nn.init.zeros_(self.category_prior.weight)  # start from the content-only gate

    # ----- items: the category-guided mixture of experts --------------------------------------

    def item_mixture(self, item_ids: torch.Tensor):
        """The :class:`~recbole_mm.model.layers.moe.Mixture` (experts, gate weights, vector) of items."""
        contents, masks = self.modality_lookup(item_ids)
        prior = self.category_gate_prior(item_ids) if self.use_category_prior else None
        return self.mixture(self.item_embedding(item_ids), contents, masks, prior)

    def category_gate_prior(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Mean learned expert preference ``[..., K]`` over each item's categories (0 without any)."""
        categories = self.item_categories[item_ids]
        count = (categories > 0).sum(-1, keepdim=True).clamp_min(1)
        return self.category_prior(categories).sum(-2) / count

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.item_mixture(item_ids).mixed

    def gate_weights(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Gate weights ``[..., K]`` of items, experts in ``self.mixture.expert_names`` order."""
        return self.item_mixture(item_ids).weights

    # ----- sequence ---------------------------------------------------------------------------

    def forward(self, item_seq, item_seq_len, time_seq=None):
        # Mix each distinct item once instead of once per position (histories repeat items).
        distinct, inverse = torch.unique(item_seq, return_inverse=True)
        return self.encode(self.item_vectors(distinct)[inverse], item_seq, item_seq_len, time_seq)

    def encode(self, item_hidden, item_seq, item_seq_len, time_seq=None):
        """Last-position output ``[B, d]`` of the Transformer over item vectors ``[B, L, d]``."""
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        hidden = item_hidden + self.position_embedding(position_ids).unsqueeze(0)
        if self.n_time_buckets > 0 and time_seq is not None:
            hidden = hidden + self.time_embedding(self.gap_buckets(time_seq, item_seq > 0))
        hidden = self.dropout(self.input_norm(hidden))
        output = self.encoder(hidden, item_seq > 0)
        return self.gather_indexes(output, item_seq_len - 1)

    def gap_buckets(self, time_seq: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Bucket ``1 + floor(log2(1 + gap / time_unit))`` of the time since the previous item (0 = padding)."""
        gap = (time_seq - torch.cat([time_seq[:, :1], time_seq[:, :-1]], dim=1)).clamp_min(0).double() / self.time_unit
        bucket = 1 + torch.log2(1 + gap).floor().long()
        return bucket.clamp(1, self.n_time_buckets) * valid.long()

    def sequence_times(self, interaction):
        """The batch's timestamp lists when the time embedding is on and the batch carries them."""
        if self.n_time_buckets > 0 and self.TIME_LIST and self.TIME_LIST in interaction:
            return interaction[self.TIME_LIST]
        return None

    def user_vectors(self, interaction) -> torch.Tensor:
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], self.sequence_times(interaction))

    # ----- training ---------------------------------------------------------------------------

    def loss_names(self):
        """Names of :meth:`calculate_loss`'s terms, in order (the trainer's NaN/Inf message uses them)."""
        return ["next-item CE"] + (["category"] if self.cat_weight > 0 else []) + (["swap CL"] if self.cl_weight > 0 else [])

    def calculate_loss(self, interaction):
        """``(L_CE, cat_weight * L_cat, cl_weight * L_cl)`` (the active terms; RecBole sums and logs them)."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        times = self.sequence_times(interaction)
        items, rows = self.batch_items(interaction)
        mixture = self.item_mixture(items)
        user = self.encode(mixture.mixed[rows[item_seq]], item_seq, item_seq_len, times)
        losses = [self.recommendation_loss(user, interaction, lambda ids: mixture.mixed[rows[ids]])]
        if self.cat_weight > 0:
            labelled = torch.cat([item_seq.flatten(), interaction[self.POS_ITEM_ID]]).unique()
            labelled = labelled[labelled > 0]
            losses.append(self.cat_weight * self.category_loss(mixture.mixed[rows[labelled]], labelled))
        if self.cl_weight > 0:
            swapped_user = self.encode(self.swapped_sequence(mixture, rows, item_seq, item_seq_len), item_seq, item_seq_len, times)
            losses.append(self.cl_weight * info_nce(user, swapped_user, self.cl_temperature))
        return tuple(losses) if len(losses) > 1 else losses[0]

    def batch_items(self, interaction):
        """Items whose mixture the step needs, and a row lookup ``[n_items]`` (item id -> row).

        CE scores the whole catalogue, so every item is mixed once and the lookup is the identity;
        BPR needs only the batch's sequence, positive and negative items.
        """
        if self.loss_type == "CE":
            items = self.all_item_ids()
            return items, items
        parts = [interaction[self.ITEM_SEQ].flatten(), interaction[self.POS_ITEM_ID], interaction[self.NEG_ITEM_ID]]
        items = torch.cat(parts).unique()
        rows = torch.zeros(self.n_items, dtype=torch.long, device=items.device)
        rows[items] = torch.arange(items.numel(), device=items.device)
        return items, rows

    def category_loss(self, item_vectors: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """Unweighted auxiliary category-prediction loss of ``item_ids`` from their mixed vectors."""
        return category_loss(self.category_head(item_vectors), self.item_categories[item_ids], self.category_multilabel)

    def swapped_sequence(self, mixture, rows, item_seq, item_seq_len) -> torch.Tensor:
        """Item vectors ``[B, L, d]`` of the modality-swapped view: swapped at :meth:`swap_positions`,
        original elsewhere (the swap is computed for the sequences' distinct items only)."""
        distinct, inverse = torch.unique(item_seq, return_inverse=True)
        swapped = self.mixture.swapped(select(mixture, rows[distinct]), self.swap_pool)[inverse]
        return torch.where(self.swap_positions(item_seq, item_seq_len).unsqueeze(-1), swapped, mixture.mixed[rows[item_seq]])

    def swap_positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, L]``: valid positions drawn with ``swap_rate``; a sequence that drew none swaps
        its last item, so every swapped view differs from its original."""
        valid = item_seq > 0
        chosen = (torch.rand(item_seq.shape, device=item_seq.device) < self.swap_rate) & valid
        last = nn.functional.one_hot(item_seq_len - 1, item_seq.shape[1]).bool()
        return chosen | (last & ~chosen.any(-1, keepdim=True))

    # ----- inference --------------------------------------------------------------------------

    def predict(self, interaction):
        return (self.user_vectors(interaction) * self.item_vectors(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self.full_sort_scores(self.user_vectors(interaction))

