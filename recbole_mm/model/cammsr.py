"""CAMMSR: category-guided attentive mixture of experts, modality-swap contrast, DyT Transformer.

Implements "CAMMSR: Category-Guided Attentive Mixture of Experts for Multimodal Sequential
Recommendation" (Xu, Chen, Yang, Li, Wang, Li, Tang, Liu, Ngai; arXiv 2603.04320) as a RecBole
SequentialRecommender. The encoder's normalisation is DynamicTanh ("Transformers without
Normalization", arXiv 2503.10622).
"""

import math

import torch
from recbole.utils import FeatureType
from torch import nn

from recbole_mm.model.abstract import MultimodalSequentialRecommender
from recbole_mm.model.layers.dyt import make_norm, norm_factory
from recbole_mm.model.layers.moe import ID_PATHS, SWAP_MODES, ModalityMixture, category_loss, content_only, info_nce, mix, select
from recbole_mm.model.layers.transformer import TransformerEncoder

INPUT_NORMS = ("layernorm", "dyt")
CATEGORY_INPUTS = ("gate", "item")


def _choice(key: str, value, choices):
    if value not in choices:
        raise ValueError(f"CAMMSR: {key} must be one of {choices}, got {value!r}")
    return value


def _in_range(key: str, value, low: float, high: float, low_open: bool = False):
    value = float(value)
    if not ((low < value) if low_open else (low <= value)) or value > high:
        raise ValueError(f"CAMMSR: {key} must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    return value


class CAMMSR(MultimodalSequentialRecommender):
    """CAMoE item representations, a DyT Transformer over the sequence, next-item CE + two aux losses.

    Follows the paper: experts learn specialised item representations from each modality and their
    inter-modal synergy; an attentive gate allocates modality weights per item; an auxiliary
    category-prediction task guides those weights; modality-swap contrastive learning aligns a
    sequence with its modality-swapped view; DyT replaces LayerNorm in the Transformer. The paper's
    equations are not public; what follows is our reading, every choice behind a yaml key.

    - item vector ``z = e_id + sum_k a_k o_k`` (``id_path: residual``): modality experts
      ``o_m = E_m(P_m x_m)`` (residual MLPs, ``o_m ~ P_m x_m`` at init), one synergy expert per
      modality pair on ``[p_a; p_b; p_a * p_b]``, gate weights ``a`` over them. The abstract says the
      gate allocates *modality* weights, and with a mean gate this is SASRecMM's item vector up to a
      factor per modality, so CAMMSR contains the multimodal baseline. ``id_path: expert`` (the first
      reading) makes the ID one more gated expert: the ID then competes with content for weight and
      an item's ID signal is scaled down by the gate. The same ``z`` is used in the input sequence
      and for scoring, so full ranking stays one matrix product.
    - ``id_dropout_prob`` (default 0, the paper has none): in training, the input-side vectors of
      that share of items lose their ID (content only). Never applied to the scored catalogue or
      the targets: dropping IDs there trains other vectors than those ranked at inference.
    - gate (``layers/moe.py``): per-expert queries from ``[e_id; mean expert output]`` dotted with
      each expert output. ``gate_norm`` (default on) layer-normalises both and learns a
      temperature: embeddings start at ~0.02 scale, so raw bilinear logits start at ~1e-5 and the
      gate would stay uniform for thousands of steps. No sequence context in the gate, because the
      same ``z`` must score the whole catalogue. ``gating: mean`` is the no-gate ablation.
    - category guidance: ``category_from: gate`` (default) predicts the item's category from
      ``sum_k a_k LN(o_k)``, the gate-weighted normalised expert outputs, i.e. every expert votes
      for categories with its gate weight; the loss can then only fall by moving weight to the
      experts that reveal the category, which is how the task guides the modality weights.
      ``category_from: item`` reads ``z`` (the first reading: its gradient mostly reshaped the ID
      embeddings and experts, the gate got <1e-6). CE for a token field, BCE over the multi-hot for
      token_seq (genres), on the distinct items of the batch. ``category_prior`` (off) adds a learned
      per-category expert preference to the gate logits: it reads each item's true category at
      inference, which the abstract ("guided by an auxiliary category prediction task") and its
      robustness to category noise do not suggest.
    - modality swap (``swap_mode: experts``): at ``swap_rate`` of the valid positions (at least one
      per sequence) each item's modality expert outputs are shifted cyclically among the modalities
      the item has (the gate weights stay: text weight x image output, ...; an item with one
      modality keeps its content). It reuses the expert outputs already computed, so the view costs
      one more encoder pass over ``cl_rows`` of the batch. ``swap_mode: sources`` re-runs the
      experts on the swapped projections (the first reading; the synergy expert then sees swapped
      roles). With one modality the view carries the swapped items by their content alone.
    - contrastive loss: InfoNCE between the last-position vectors of the original and the swapped
      sequence, in-batch negatives, ``cl_temperature``; with ``cl_false_negatives`` the pairs of rows
      of the same user or the same target are not negatives (RecBole's augmented training batches
      hold many prefixes of one user's history); its weight ramps up linearly over the first
      ``cl_warmup_steps`` training steps, while the item vectors are still near their init. The
      view is encoded for a random ``cl_rows`` share of the batch (default a quarter): the second
      encoder pass over all rows costs about one SASRec step (CAMMSR ~1.9-2.0x SASRec's step time,
      ~1.3x with a quarter; CPU time on ml-100k-mm), and a quarter of a 512-row batch still leaves
      ~127 in-batch negatives.
    - encoder: SASRec's post-norm blocks, every block norm from ``norm``. ``dyt_unit_gain`` (default
      on) starts each DyT's gamma at ``1 / alpha``: DyT at alpha 0.5 with gamma 1 halves its input,
      and the four norms of two post-norm blocks shrank the user vector ~75x below SASRec's at init.
      ``input_norm: layernorm`` normalises the embedding sum like SASRec (embeddings start at ~0.02,
      a scale DyT cannot undo); ``input_norm: dyt`` uses a DyT with ``dyt_input_alpha_init``.
    - optional log-scaled time-gap embedding (``n_time_buckets``; the abstract mentions timestamps);
    - ``L = L_CE + cat_weight * L_cat + ramp * cl_weight * L_cl``; a weight of 0 skips the term.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        self.read_transformer_keys(config)
        self.norm = config["norm"]
        self.dyt_alpha_init = config["dyt_alpha_init"]
        self.dyt_unit_gain = bool(config["dyt_unit_gain"])
        self.input_norm_kind = _choice("input_norm", config["input_norm"] or "layernorm", INPUT_NORMS)
        self.dyt_input_alpha_init = config["dyt_input_alpha_init"] or self.dyt_alpha_init
        self.projection = config["projection"]
        self.feature_dropout_prob = config["feature_dropout_prob"]
        self.id_path = _choice("id_path", config["id_path"] or "residual", ID_PATHS)
        self.id_dropout_prob = _in_range("id_dropout_prob", config["id_dropout_prob"] or 0.0, 0.0, 1.0)
        self.synergy_experts = config["synergy_experts"]
        self.gating = config["gating"]
        self.use_category_prior = bool(config["category_prior"]) and self.gating == "attentive"  # a mean gate has no logits
        self.category_from = _choice("category_from", config["category_from"] or "gate", CATEGORY_INPUTS)
        self.cat_weight = float(config["cat_weight"] or 0.0)
        self.cl_weight = float(config["cl_weight"] or 0.0)
        self.cl_temperature = float(config["cl_temperature"])  # not checked: 0 is the fault tests' way to a non-finite term
        self.cl_warmup_steps = int(_in_range("cl_warmup_steps", config["cl_warmup_steps"] or 0, 0, math.inf))
        self.cl_rows = _in_range("cl_rows", config["cl_rows"] if config["cl_rows"] is not None else 1.0, 0.0, 1.0, low_open=True)
        self.cl_false_negatives = bool(config["cl_false_negatives"])
        self.swap_mode = _choice("swap_mode", config["swap_mode"] or "experts", SWAP_MODES)
        self.swap_rate = _in_range("swap_rate", config["swap_rate"], 0.0, 1.0)
        self.n_time_buckets = int(config["n_time_buckets"] or 0)
        self.time_unit = float(config["time_unit"] or 1.0)
        self.TIME_LIST = f"{config['TIME_FIELD']}{config['LIST_SUFFIX']}" if config["TIME_FIELD"] else None

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.mixture = ModalityMixture(
            self.modality_dims, self.hidden_size, self.synergy_experts, self.gating, self.projection, self.feature_dropout_prob,
            id_path=self.id_path, gate_norm=bool(config["gate_norm"]), synergy_residual=bool(config["synergy_residual"]),
        )
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
            norm=norm_factory(self.norm, self.hidden_size, self.layer_norm_eps, self.dyt_alpha_init, self.dyt_unit_gain),
            hidden_dropout=self.hidden_dropout_prob,
            attn_dropout=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
        )
        if self.input_norm_kind == "layernorm":
            self.input_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        else:
            self.input_norm = make_norm("dyt", self.hidden_size, self.layer_norm_eps, self.dyt_input_alpha_init)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # drives the CL warm-up; saved with the model

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
        """``(L_CE, cat_weight * L_cat, ramp * cl_weight * L_cl)`` (the active terms; RecBole sums and logs them)."""
        if self.training:
            self.train_steps += 1
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        times = self.sequence_times(interaction)
        items, rows = self.batch_items(interaction)
        mixture = self.item_mixture(items)
        inputs = self.input_vectors(mixture)
        user = self.encode(inputs[rows[item_seq]], item_seq, item_seq_len, times)
        losses = [self.recommendation_loss(user, interaction, lambda ids: mixture.mixed[rows[ids]])]
        if self.cat_weight > 0:
            labelled = torch.cat([item_seq.flatten(), interaction[self.POS_ITEM_ID]]).unique()
            labelled = labelled[labelled > 0]
            losses.append(self.cat_weight * self.category_loss(select(mixture, rows[labelled]), labelled))
        if self.cl_weight > 0:
            losses.append(self.cl_weight * self.cl_ramp() * self.swap_loss(interaction, user, mixture, inputs, rows, times))
        return tuple(losses) if len(losses) > 1 else losses[0]

    def input_vectors(self, mixture) -> torch.Tensor:
        """Vectors the input sequence reads, one per mixture row: ``mixture.mixed``, except that in
        training ``id_dropout_prob`` of the items (one draw per item and step) carry their content
        alone. The scored catalogue and the targets always use ``mixture.mixed``."""
        if not self.training or self.id_dropout_prob <= 0:
            return mixture.mixed
        drop = torch.rand(mixture.mixed.shape[:-1], device=mixture.mixed.device) < self.id_dropout_prob
        return torch.where(drop.unsqueeze(-1), content_only(mixture, self.mixture.id_expert), mixture.mixed)

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

    def category_loss(self, mixture, item_ids: torch.Tensor) -> torch.Tensor:
        """Unweighted auxiliary category-prediction loss of ``item_ids`` from their mixture (rows of
        ``mixture`` align with ``item_ids``): from the gate-weighted normalised expert outputs
        (``category_from: gate``) or from the item vectors (``item``)."""
        features = mix(mixture.weights, mixture.normed) if self.category_from == "gate" else mixture.mixed
        return category_loss(self.category_head(features), self.item_categories[item_ids], self.category_multilabel)

    # ----- modality-swap contrastive learning ---------------------------------------------------

    def cl_ramp(self) -> float:
        """Linear warm-up factor of the contrastive weight: ``min(1, step / cl_warmup_steps)``."""
        if self.cl_warmup_steps <= 0:
            return 1.0
        return min(1.0, float(self.train_steps) / self.cl_warmup_steps)

    def swap_loss(self, interaction, user, mixture, inputs, rows, times) -> torch.Tensor:
        """Unweighted InfoNCE between ``user`` and the swapped view, on ``cl_rows`` of the batch."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        chosen = self.cl_row_subset(len(item_seq), item_seq.device)
        if chosen is not None:
            item_seq, item_seq_len, user = item_seq[chosen], item_seq_len[chosen], user[chosen]
            times = times[chosen] if times is not None else None
        view = self.swapped_sequence(mixture, inputs, rows, item_seq, item_seq_len)
        swapped_user = self.encode(view, item_seq, item_seq_len, times)
        mask = self.false_negatives(interaction, chosen) if self.cl_false_negatives else None
        return info_nce(user, swapped_user, self.cl_temperature, mask)

    def cl_row_subset(self, batch: int, device):
        """Random ``cl_rows`` share of the batch rows (at least 2), or None for all rows."""
        count = max(2, int(math.ceil(self.cl_rows * batch)))
        if count >= batch:
            return None
        return torch.randperm(batch, device=device)[:count]

    def false_negatives(self, interaction, chosen=None) -> torch.Tensor:
        """Bool ``[B, B]``: rows of the same user or with the same target (never negatives of each other)."""
        keys = [interaction[self.POS_ITEM_ID]] + ([interaction[self.USER_ID]] if self.USER_ID in interaction else [])
        same = None
        for key in keys:
            key = key if chosen is None else key[chosen]
            pairs = key.unsqueeze(0) == key.unsqueeze(1)
            same = pairs if same is None else same | pairs
        return same

    def swapped_sequence(self, mixture, inputs, rows, item_seq, item_seq_len) -> torch.Tensor:
        """Item vectors ``[B, L, d]`` of the modality-swapped view: swapped at :meth:`swap_positions`,
        the input vectors elsewhere (the swap is computed for the sequences' distinct items only)."""
        distinct, inverse = torch.unique(item_seq, return_inverse=True)
        swapped = self.mixture.swapped(select(mixture, rows[distinct]), self.swap_mode)[inverse]
        return torch.where(self.swap_positions(item_seq, item_seq_len).unsqueeze(-1), swapped, inputs[rows[item_seq]])

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
