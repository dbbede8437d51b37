"""Base class of the plugin's models: RecBole's SequentialRecommender plus aligned item features."""

from abc import ABCMeta, abstractmethod
from typing import Callable, Dict, Optional, Tuple

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_mm.data.dataset import MultimodalSequentialDataset
from recbole_mm.model.layers.fusion import modality_names_valid


LOSS_TYPES = ("CE", "BPR")


class MultimodalSequentialRecommender(SequentialRecommender, metaclass=ABCMeta):
    """Holds each modality's aligned features as frozen buffers and offers the shared plumbing.

    Subclasses implement ``forward(item_seq, item_seq_len) -> [B, d]`` and
    ``item_vectors(item_ids) -> [..., d]``; the base then supplies RecBole's ``calculate_loss``
    (CE over all items or BPR), ``predict`` and a ``full_sort_predict`` that scores the catalogue
    in chunks of ``score_chunk_size`` items so no ``[B, N, d]`` tensor is ever built.

    Feature buffers are not saved in checkpoints (``persistent=False``): they are data, rebuilt
    from the feature files with the dataset, and may be large.
    """

    dataset_class = MultimodalSequentialDataset
    trainer_class = None

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.loss_type = config["loss_type"]
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"{type(self).__name__}: loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        self.initializer_range = config["initializer_range"] or 0.02
        self.score_chunk_size = int(config["score_chunk_size"] or 0)
        self.modality_dims = self._register_features(dataset)

    TRANSFORMER_KEYS = ("n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob",
                        "attn_dropout_prob", "hidden_act", "layer_norm_eps")

    def read_transformer_keys(self, config) -> None:
        """Set the SASRec-style encoder keys (``n_layers`` ... ``layer_norm_eps``) as attributes,
        under RecBole's names, for the models built on a Transformer encoder."""
        for key in self.TRANSFORMER_KEYS:
            setattr(self, key, config[key])

    # ----- features --------------------------------------------------------------------------

    def _register_features(self, dataset) -> Dict[str, int]:
        if not hasattr(dataset, "item_features"):
            raise TypeError(
                f"{type(self).__name__} needs a MultimodalSequentialDataset (got {type(dataset).__name__}); "
                "import recbole_mm before creating the dataset so RecBole picks the plugin's dataset class"
            )
        features = dataset.item_features()
        self.modalities = list(features)  # config order; the first is the anchor modality
        modality_names_valid(self.modalities)
        dims = {}
        for name in self.modalities:
            matrix, mask = features[name]
            self.register_buffer(f"feature_{name}", matrix.float(), persistent=False)
            self.register_buffer(f"feature_mask_{name}", mask.bool(), persistent=False)
            dims[name] = int(matrix.shape[1])
        return dims

    def modality_lookup(self, item_ids: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Frozen vectors ``{m: [..., d_m]}`` and masks ``{m: [...]}`` of the given items."""
        contents = {name: getattr(self, f"feature_{name}")[item_ids] for name in self.modalities}
        masks = {name: getattr(self, f"feature_mask_{name}")[item_ids] for name in self.modalities}
        return contents, masks

    def category_table(self, dataset, field) -> Tuple[torch.Tensor, int]:
        """Register ``item_categories`` ``[n_items, k]`` (0 = none) for ``field``; returns it and the count."""
        if not field:
            raise ValueError(f"{type(self).__name__} needs 'category_field' (an item token / token_seq field, e.g. class)")
        categories, n_categories = dataset.item_categories(field)
        self.register_buffer("item_categories", categories, persistent=False)
        return categories, n_categories

    # ----- layers shared by the models ----------------------------------------------------------

    def _init_weights(self, module):
        """SASRec's initialisation: normal(0, initializer_range) weights, zero biases, unit LayerNorm."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def all_item_ids(self) -> torch.Tensor:
        return torch.arange(self.n_items, device=self.feature_device())

    def feature_device(self) -> torch.device:
        return getattr(self, f"feature_{self.modalities[0]}").device

    # ----- RecBole contract -------------------------------------------------------------------

    @abstractmethod
    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Item representations ``[..., d]`` of ``item_ids``, in the space of the user vectors."""

    def score_items(self, seq_output: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n]`` of the user vectors against the items ``item_ids`` (1-D)."""
        return seq_output @ self.item_vectors(item_ids).t()

    def recommendation_loss(self, seq_output: torch.Tensor, interaction,
                            vectors_of: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """Next-item loss: CE over the whole catalogue, or BPR against RecBole's sampled negative.

        ``vectors_of`` maps item ids to their vectors (default :meth:`item_vectors`); a model that
        already built its batch's item vectors passes a lookup into them.
        """
        vectors_of = vectors_of or self.item_vectors
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "CE":
            return nn.functional.cross_entropy(seq_output @ vectors_of(self.all_item_ids()).t(), pos_items)
        pos_score = (seq_output * vectors_of(pos_items)).sum(-1)
        neg_score = (seq_output * vectors_of(interaction[self.NEG_ITEM_ID])).sum(-1)
        return -nn.functional.logsigmoid(pos_score - neg_score).mean()

    def calculate_loss(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.recommendation_loss(seq_output, interaction)

    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        test_items = interaction[self.ITEM_ID]
        return (seq_output * self.item_vectors(test_items)).sum(-1)

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.full_sort_scores(seq_output)

    def full_sort_scores(self, seq_output: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n_items]``, computed ``score_chunk_size`` items at a time (0 = all at once)."""
        all_ids = self.all_item_ids()
        chunk = self.score_chunk_size or self.n_items
        return torch.cat([self.score_items(seq_output, ids) for ids in all_ids.split(chunk)], dim=1)
