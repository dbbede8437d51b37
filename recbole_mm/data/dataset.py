"""RecBole ``SequentialDataset`` that also carries aligned multimodal item features."""

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.utils import FeatureType, set_color

from recbole_mm.data.features import load_item_features


class MultimodalSequentialDataset(SequentialDataset):
    """Sequential dataset plus per-modality feature matrices aligned to internal item ids.

    Features are read once, after RecBole has filtered and remapped the interactions, so row ``i``
    of every matrix belongs to internal item id ``i``. Dense vectors never enter the interaction
    batches: models look them up by item id from :meth:`item_features`.
    """

    def __init__(self, config):
        super().__init__(config)
        item_tokens = self.field2id_token[self.iid_field]
        self._item_features = load_item_features(config, item_tokens)
        for modality in self._item_features.values():
            self.logger.info(set_color("multimodal features", "pink") + f": {modality.summary()}")

    def item_features(self):
        """``{modality: (float32 tensor [n_items, d], bool tensor [n_items])}`` in config order."""
        return {
            name: (torch.from_numpy(feature.matrix), torch.from_numpy(feature.mask))
            for name, feature in self._item_features.items()
        }

    def item_categories(self, field):
        """Categories of every item as ``(LongTensor [n_items, k] with 0 = none, n_categories)``.

        ``field`` is an item field of type token (one category) or token_seq (several, e.g.
        MovieLens genres). Category ids are RecBole's remapped tokens; 0 is padding.
        """
        if self.item_feat is None or field not in self.item_feat:
            raise ValueError(
                f"category_field '{field}' is not a loaded item field; add it to load_col: item: [...] "
                f"(loaded item fields: {[] if self.item_feat is None else list(self.item_feat.columns)})"
            )
        ftype = self.field2type[field]
        if ftype not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
            raise ValueError(f"category_field '{field}' must be a token or token_seq item field, found {ftype.value}")
        item_ids = torch.as_tensor(np.asarray(self._item_column(self.iid_field)), dtype=torch.long)
        values = self._item_column(field)
        if ftype == FeatureType.TOKEN:
            values = torch.as_tensor(np.asarray(values), dtype=torch.long).unsqueeze(1)
        elif not torch.is_tensor(values):  # DataFrame stage: a column of variable-length arrays
            width = max(1, max((len(row) for row in values), default=1))
            padded = np.zeros((len(values), width), dtype=np.int64)
            for row, cats in enumerate(values):
                padded[row, : len(cats)] = cats
            values = torch.from_numpy(padded)
        categories = torch.zeros(self.item_num, values.shape[1], dtype=torch.long)
        categories[item_ids] = values.long()
        return categories, self.num(field)

    def _item_column(self, field):
        """One item-feature column, whether ``item_feat`` is still a DataFrame or already an Interaction."""
        column = self.item_feat[field]
        return column if torch.is_tensor(column) else column.values
