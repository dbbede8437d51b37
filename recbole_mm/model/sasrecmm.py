"""SASRecMM: SASRec whose item vectors are an ID embedding plus projected modality features.

The multimodal baseline of recbole-mm. It changes exactly one thing in SASRec ("Self-Attentive
Sequential Recommendation", Kang & McAuley, ICDM 2018, arXiv 1808.09781): every item vector, in
the input sequence and in the output scoring alike, is ``MultimodalItemEncoder(id, features)``
instead of the bare ID embedding. Items that are rare in training still get a useful vector from
their content, which is what the seed models (MUFASA, DMAE, CAMMSR) must improve upon.
"""

import torch
from recbole.model.layers import TransformerEncoder
from torch import nn

from recbole_mm.model.abstract import MultimodalSequentialRecommender
from recbole_mm.model.layers.fusion import MultimodalItemEncoder


class SASRecMM(MultimodalSequentialRecommender):
    """SASRec over fused ID + modality item vectors; CE over all items, chunked full ranking."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        self.read_transformer_keys(config)
        self.fusion = config["fusion"]
        self.projection = config["projection"]
        self.feature_dropout_prob = config["feature_dropout_prob"]
        self.id_dropout_prob = config["id_dropout_prob"] or 0.0

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.item_encoder = MultimodalItemEncoder(
            self.modality_dims, self.hidden_size, self.fusion, self.projection, self.feature_dropout_prob
        )
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)

        self._step_keep = None
        self.apply(self._init_weights)

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        contents, masks = self.modality_lookup(item_ids)
        return self.item_encoder(self.id_embedding(item_ids), contents, masks)

    def id_embedding(self, item_ids: torch.Tensor) -> torch.Tensor:
        """ID embeddings; in training each item's is dropped with ``id_dropout_prob`` (whole vector,
        the same item everywhere in the step) so content alone must carry it: the case of items
        that are rare in training, whose ID vectors are barely learned."""
        embedding = self.item_embedding(item_ids)
        if not self.training or self.id_dropout_prob <= 0:
            return embedding
        keep = self._id_keep_mask(embedding.device)
        return embedding * keep[item_ids].unsqueeze(-1)

    def _id_keep_mask(self, device) -> torch.Tensor:
        """One keep/drop draw per item, reused within a training step (reset by ``calculate_loss``)."""
        if self._step_keep is None:
            self._step_keep = (torch.rand(self.n_items, device=device) >= self.id_dropout_prob).float()
        return self._step_keep

    def calculate_loss(self, interaction):
        self._step_keep = None
        return super().calculate_loss(interaction)

    def forward(self, item_seq, item_seq_len):
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        hidden = self.item_vectors(item_seq) + self.position_embedding(position_ids).unsqueeze(0)
        hidden = self.dropout(self.LayerNorm(hidden))
        attention_mask = self.get_attention_mask(item_seq)
        output = self.trm_encoder(hidden, attention_mask, output_all_encoded_layers=True)[-1]
        return self.gather_indexes(output, item_seq_len - 1)  # [B, d]
