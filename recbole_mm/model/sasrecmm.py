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

        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.fusion = config["fusion"]
        self.projection = config["projection"]
        self.feature_dropout_prob = config["feature_dropout_prob"]

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

        self.apply(self._init_weights)

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        contents, masks = self.modality_lookup(item_ids)
        return self.item_encoder(self.item_embedding(item_ids), contents, masks)

    def forward(self, item_seq, item_seq_len):
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        hidden = self.item_vectors(item_seq) + self.position_embedding(position_ids).unsqueeze(0)
        hidden = self.dropout(self.LayerNorm(hidden))
        attention_mask = self.get_attention_mask(item_seq)
        output = self.trm_encoder(hidden, attention_mask, output_all_encoded_layers=True)[-1]
        return self.gather_indexes(output, item_seq_len - 1)  # [B, d]
