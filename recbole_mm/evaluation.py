"""History-excluded full ranking: ``exclude_history: True`` for any RecBole trainer.

RecBole ranks every item for sequential models, the items of the user's input sequence included.
On data where users never consume an item twice (ml-100k: nobody re-rates a movie) a model that
keeps those items out of its top k wins slots that others lose, whatever it learned about the next
item. With ``exclude_history: True`` full-ranking evaluation (validation for early stopping and
test) scores every item of the eval batch's ``item_id_list`` (padding excluded) ``-inf`` before
top-k, for every model alike. A target that repeats an item of the input is then a miss: that is
what the policy costs when it is served on data with repeats.

The default (key missing or ``False``) is RecBole's ranking, unchanged. :class:`HistoryExclusion`
is mixed into the plugin's trainer; :func:`with_history_exclusion` derives the same behaviour
from any trainer class (RecBole's ``Trainer`` for SASRec, GRU4Rec, ...).
"""

import torch

CONFIG_KEY = "exclude_history"


def item_sequence_field(config, model=None) -> str:
    """The eval batch's input-sequence field (``item_id_list`` for RecBole's defaults)."""
    field = getattr(model, "ITEM_SEQ", None)
    return field or f"{config['ITEM_ID_FIELD']}{config['LIST_SUFFIX']}"


def history_mask(item_seq, n_items: int):
    """``[B, n_items]`` bool: True where the item is in the row's input sequence (id 0 = padding is never set)."""
    seen = torch.zeros((item_seq.shape[0], n_items), dtype=torch.bool, device=item_seq.device)
    seen.scatter_(1, item_seq.long(), True)
    seen[:, 0] = False
    return seen


def mask_history(scores, item_seq):
    """Set ``scores[b, i] = -inf`` for every item ``i`` of row ``b``'s input sequence, in place."""
    scores.masked_fill_(history_mask(item_seq.to(scores.device), scores.shape[1]), float("-inf"))
    return scores


def exclude_history_enabled(config) -> bool:
    """The config value as a bool; RecBole's ``Config`` returns None for a key nobody set (= off)."""
    value = config[CONFIG_KEY]
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{CONFIG_KEY} must be True or False, got {value!r}")
    return value


class HistoryExclusion:
    """Trainer mixin: ``_full_sort_batch_eval`` drops the input history when ``exclude_history`` is on.

    ``exclude_history`` (the attribute, read from the config at construction) can be switched off
    on a live trainer to rank the same model under RecBole's protocol.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.exclude_history = exclude_history_enabled(config)
        self.item_seq_field = item_sequence_field(config, model)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.exclude_history and self.item_seq_field in interaction:
            mask_history(scores, interaction[self.item_seq_field])
        return interaction, scores, positive_u, positive_i


def with_history_exclusion(trainer_class):
    """``trainer_class`` with :class:`HistoryExclusion` mixed in (itself when it already has it)."""
    if issubclass(trainer_class, HistoryExclusion):
        return trainer_class
    return type(f"{trainer_class.__name__}HistoryExclusion", (HistoryExclusion, trainer_class), {"__module__": __name__})
