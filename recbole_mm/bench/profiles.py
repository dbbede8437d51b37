"""Benchmark settings: the shared protocol, the budgets (profiles), the regimes, the tuning
grid, and the few per-model keys a fair comparison needs.

Every model of a table gets the same ``protocol_config``: leave-one-out by time, full ranking
(with or without the input history, ``exclude_history``), the same ``MAX_ITEM_LIST_LENGTH``,
hidden size, epochs, early stopping, batch sizes, learning rate and seed. ``model_config`` then
adds only what a model cannot run without (CE without negative sampling, GRU4Rec's embedding
size, the categorical fields of FDSA / SASRecF). A regime's tuning grid (:func:`grid_points`)
varies the learning rate and each model's own dropout keys (:data:`DROPOUT_KEYS`) alike for
every model; every other hyper-parameter stays at the model's yaml default.
"""

from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence

import yaml

# RecBole baselines that read categorical item fields through ``selected_features``.
CATEGORY_FEATURE_MODELS = ("FDSA", "SASRecF")
# The reference model of the speed ratios.
SPEED_REFERENCE = "SASRec"
MULTIMODAL_REFERENCE = "SASRecMM"  # the feature models are also compared with SASRec plus features
# The models of the published tables; RecBole's other sequential baselines (BERT4Rec, FDSA, SASRecF, ...)
# join a table with --models.
DEFAULT_MODELS = ("SASRec", "GRU4Rec", "SASRecMM", "CAMMSR", "DMAE", "MUFASA")
FIRST_SEED = 2020


@dataclass(frozen=True)
class Profile:
    """One budget: what every model of a table is trained with."""

    name: str
    seeds: int  # runs per model, seeds FIRST_SEED, FIRST_SEED + 1, ...
    epochs: int  # maximum epochs
    stopping_step: int  # early-stopping patience in evaluations
    max_len: int  # MAX_ITEM_LIST_LENGTH
    hidden_size: int  # hidden / embedding size of every model
    train_batch_size: int
    eval_batch_size: int
    learning_rate: float
    max_batches: Optional[int]  # training batches per epoch (None = the whole epoch)
    exclude_history: bool = False  # rank without the user's input items (valid and test)

    def with_overrides(self, **changes) -> "Profile":
        """A copy with the given fields replaced (``None`` values keep the profile's own)."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})

    def seed_list(self) -> List[int]:
        return [FIRST_SEED + index for index in range(self.seeds)]

    def as_dict(self) -> dict:
        return asdict(self)


# ~20-40 s of training per model on ml-100k-mm on 2 CPU cores: a smoke comparison that shows
# every model runs and roughly where it lands, not converged numbers.
QUICK = Profile(
    name="quick", seeds=1, epochs=3, stopping_step=3, max_len=20, hidden_size=64,
    train_batch_size=512, eval_batch_size=1024, learning_rate=0.001, max_batches=40,
)
PROFILES: Dict[str, Profile] = {
    "quick": QUICK,
    # Whole epochs until early stopping on short histories, one seed: converged numbers in about
    # 50 min of one core for SASRec, GRU4Rec, SASRecMM, MUFASA, DMAE and CAMMSR on ml-100k-mm.
    "medium": replace(QUICK, name="medium", epochs=20, max_batches=None),
    # The plugin's overall.yaml budget, 3 seeds, no tuning (the published comparison is the
    # regimes below). SASRec needs about 3 min per epoch on ml-100k on 2 CPU cores.
    "full": replace(
        QUICK, name="full", seeds=3, epochs=30, stopping_step=5, max_len=50, train_batch_size=256, max_batches=None,
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile '{name}'; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def protocol_config(profile: Profile) -> dict:
    """The config every model of a table shares."""
    return {
        "MAX_ITEM_LIST_LENGTH": profile.max_len,
        "hidden_size": profile.hidden_size,
        "inner_size": 4 * profile.hidden_size,
        "epochs": profile.epochs,
        "stopping_step": profile.stopping_step,
        "eval_step": 1,
        "train_batch_size": profile.train_batch_size,
        "eval_batch_size": profile.eval_batch_size,
        "learning_rate": profile.learning_rate,
        "exclude_history": profile.exclude_history,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "repeatable": True,
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "reproducibility": True,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
    }


def model_config(model: str, profile: Profile, features: Optional[List[str]] = None) -> dict:
    """``protocol_config`` plus the keys ``model`` needs to run under it.

    ``features`` are the dataset's categorical item fields (e.g. ``['class']`` on ml-100k-mm);
    FDSA and SASRecF read them through ``selected_features`` and cannot run without one.
    """
    config = protocol_config(profile)
    if model == "GRU4Rec":
        config["embedding_size"] = profile.hidden_size
    if model in CATEGORY_FEATURE_MODELS:
        if not features:
            raise ValueError(
                f"{model} needs the dataset's categorical item fields (selected_features); "
                "pass --features FIELD or set category_field in the dataset config"
            )
        config["selected_features"] = list(features)
    return config


# ----- regimes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regime:
    """One named benchmark of ``python -m recbole_mm.bench --regime NAME``: a dataset and a budget."""

    name: str
    dataset: str  # RecBole dataset name (sparse / cold are built under <out>/ by the CLI)
    profile: Profile  # the budget; profile.seeds = seeds at the tuned point
    summary: str  # one line for the report and --help


# Whole epochs until early stopping; headline ranking without the input history on ml-100k-mm,
# where nobody rates a movie twice (the other protocol is measured from the same rankings).
DENSE = Profile(
    name="dense", seeds=3, epochs=30, stopping_step=3, max_len=50, hidden_size=64, train_batch_size=512,
    eval_batch_size=1024, learning_rate=0.001, max_batches=None, exclude_history=True,
)
REGIMES: Dict[str, Regime] = {
    "dense": Regime("dense", "ml-100k-mm", DENSE, "ml-100k-mm, histories of 50, history-excluded ranking; where every model is tuned"),
    # 3 seeds like the others: a better / worse needs them (an attention model's run takes hours on a CPU core)
    "long": Regime("long", "ml-100k-mm", replace(DENSE, name="long", max_len=200),
                   "ml-100k-mm, histories of 200 (149 of 943 users have 200+ ratings), history-excluded ranking"),
    "sparse": Regime("sparse", "ml-100k-mm-sparse", replace(DENSE, name="sparse"),
                     "each ml-100k-mm user's most recent ratings only: the median item has at most 5 training "
                     "interactions, so content carries most items; history-excluded ranking"),
    "cold": Regime("cold", "planted-cold", replace(DENSE, name="cold", max_len=20, exclude_history=False),
                   "the planted synthetic set with cold test items (histories of at most 24, which repeat "
                   "items: RecBole's ranking is the headline)"),
    # the same training sequences and test targets, half the validation targets cold as well
    "cold-valid": Regime("cold-valid", "planted-cold-valid", replace(DENSE, name="cold-valid", max_len=20, exclude_history=False),
                         "the planted set of `cold` whose validation targets are cold for half the users too, so "
                         "early stopping sees what the cold-item column measures"),
}
TUNING_REGIME = "dense"  # the regime whose grid picks every model's point for all regimes

# ----- the tuning grid ------------------------------------------------------------------------

GRID_LEARNING_RATES = (0.001, 0.003)
GRID_DROPOUTS = (0.2, 0.5)
_TRANSFORMER_DROPOUT = ("hidden_dropout_prob", "attn_dropout_prob")
# Each model's own dropout keys, all set to the grid's dropout value (from the models' yaml files).
# A model not listed is tuned on the learning rate only.
DROPOUT_KEYS: Dict[str, tuple] = {
    "SASRec": _TRANSFORMER_DROPOUT,
    "BERT4Rec": _TRANSFORMER_DROPOUT,
    "FDSA": _TRANSFORMER_DROPOUT,
    "SASRecF": _TRANSFORMER_DROPOUT,
    "GRU4Rec": ("dropout_prob",),
    "SASRecMM": _TRANSFORMER_DROPOUT,
    "MUFASA": _TRANSFORMER_DROPOUT,
    "DMAE": _TRANSFORMER_DROPOUT,
    "CAMMSR": _TRANSFORMER_DROPOUT,
}


def grid_points(model: str) -> List[Dict[str, float]]:
    """The tuning points of ``model``: ``{"learning_rate": lr, "dropout": p}`` (lr only when the
    model's dropout keys are unknown), in a fixed order (the first best wins ties)."""
    if model not in DROPOUT_KEYS:
        return [{"learning_rate": lr} for lr in GRID_LEARNING_RATES]
    return [{"learning_rate": lr, "dropout": p} for lr in GRID_LEARNING_RATES for p in GRID_DROPOUTS]


def point_config(model: str, point: Optional[Dict[str, float]]) -> dict:
    """A grid point as config keys: ``dropout`` becomes the model's own dropout keys."""
    config = {}
    for key, value in (point or {}).items():
        if key == "dropout":
            config.update({name: value for name in DROPOUT_KEYS[model]})
        else:
            config[key] = value
    return config


def get_regime(name: str) -> Regime:
    if name not in REGIMES:
        raise ValueError(f"unknown regime '{name}'; choose one of {sorted(REGIMES)}")
    return REGIMES[name]


# ----- command-line overrides ------------------------------------------------------------------


def parse_overrides(pairs: Sequence[str]) -> dict:
    """``["KEY=VALUE", ...]`` -> ``{KEY: yaml value}``."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set expects KEY=VALUE, got '{pair}'")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
