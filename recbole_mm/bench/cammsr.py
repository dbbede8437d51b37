"""``python -m recbole_mm.bench.cammsr``: CAMMSR vs SASRec and SASRecMM, its ablations, category noise.

Every variant trains through RecBole's own pipeline (:func:`recbole_mm.bench.runner.run_model`)
under one protocol (:func:`recbole_mm.bench.profiles.model_config`: same MAX_ITEM_LIST_LENGTH,
hidden size, epochs, batch size, learning rate, seed); the script prints one markdown table with
test Recall@5/10, NDCG@5/10 and training seconds per epoch (also as a ratio to SASRec). Ablations
change one thing of CAMMSR. The robustness variant trains CAMMSR on a copy of the dataset whose
``.item`` file has the category field of ``--noise`` (default 20%) of the items replaced at random
(written into a temporary data folder, the other files linked; the bundled files are never
touched) and the table reports its drop against clean CAMMSR; the same with the label-reading
category prior on, against clean CAMMSR with the prior.

Examples::

    python -m recbole_mm.bench.cammsr                                # ml-100k-mm, quick budget
    python -m recbole_mm.bench.cammsr --epochs 5 --max-batches 0 --threads 1
    python -m recbole_mm.bench.cammsr --variants SASRec,CAMMSR,"category noise" --noise 0.3
"""

import os
import random
import sys
from typing import Optional

import yaml

from recbole_mm import resources
from recbole_mm.bench import ablation

NOISY = "category noise"
NOISY_PRIOR = "category noise (prior on)"
PRIOR = "category prior on"
SINGLE = "single modality"
CLEAN = "CAMMSR"
NOISE_BASELINE = {NOISY: CLEAN, NOISY_PRIOR: PRIOR}  # noisy variant -> the clean variant it is compared with
# The first version's choices (before the scale, ID-path, gate and contrastive fixes), for comparison.
FIRST_VERSION = {
    "dyt_unit_gain": False, "input_norm": "dyt", "id_path": "expert", "id_dropout_prob": 0.5, "gate_norm": False,
    "category_from": "item", "category_prior": True, "cl_false_negatives": False, "cl_warmup_steps": 0,
    "swap_mode": "sources", "synergy_residual": False, "cl_rows": 1.0,
}


def dataset_settings(dataset: str) -> dict:
    """The plugin's dataset yaml (modalities, category_field, load_col), or {}."""
    path = resources.dataset_yaml(dataset)
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def first_modality_only(name: str, config: dict, args) -> dict:
    """The single-modality ablation keeps only the first of the configured (or the dataset's) modalities."""
    if name != SINGLE:
        return config
    modalities = config.get("modalities") or dataset_settings(args.dataset).get("modalities")
    if not modalities:
        raise SystemExit(f"'{SINGLE}' needs the dataset's modalities (none in properties/dataset/{args.dataset}.yaml): pass --set modalities=[...]")
    return {**config, "modalities": list(modalities)[:1]}


# ----- category noise -------------------------------------------------------------------------


def perturb_categories(source_folder: str, target_folder: str, dataset: str, field: str, share: float, seed: int) -> int:
    """Copy ``<dataset>.item`` with ``field`` of ``share`` of the items replaced by a different random
    draw (as many distinct categories as the item had, from the field's vocabulary); link every other
    file of the dataset folder. Returns how many items were changed."""
    os.makedirs(target_folder, exist_ok=True)
    for name in os.listdir(source_folder):
        if name != f"{dataset}.item":
            os.symlink(os.path.abspath(os.path.join(source_folder, name)), os.path.join(target_folder, name))
    with open(os.path.join(source_folder, f"{dataset}.item"), encoding="utf-8") as handle:
        header, *rows = handle.read().splitlines()
    columns = [column.split(":")[0] for column in header.split("\t")]
    if field not in columns:
        raise SystemExit(f"category field '{field}' is not a column of {dataset}.item ({columns})")
    index = columns.index(field)
    cells = [row.split("\t") for row in rows]
    vocabulary = sorted({token for cell in cells for token in cell[index].split()})
    rng = random.Random(seed)
    changed = rng.sample(range(len(cells)), int(round(share * len(cells))))
    for row in changed:
        original = cells[row][index].split()
        count = min(max(1, len(original)), len(vocabulary))
        drawn = rng.sample(vocabulary, count)
        while set(drawn) == set(original) and count < len(vocabulary):  # a replacement must differ
            drawn = rng.sample(vocabulary, count)
        cells[row][index] = " ".join(drawn)
    with open(os.path.join(target_folder, f"{dataset}.item"), "w", encoding="utf-8") as handle:
        handle.write("\n".join([header] + ["\t".join(cell) for cell in cells]) + "\n")
    return len(changed)


def noisy_data_path(args, name: str, config: dict, scratch: str) -> Optional[str]:
    """For the noise variant: a temporary data folder holding the perturbed copy of ``args.dataset``."""
    if name not in NOISE_BASELINE:
        return None
    root = args.data_path or resources.bundled_dataset_root(args.dataset)
    if root is None:
        raise SystemExit(f"cannot find {args.dataset}/: pass --data-path")
    field = config.get("category_field") or dataset_settings(args.dataset).get("category_field")
    scratch = os.path.join(scratch, name.replace(" ", "_").replace(",", ""))
    changed = perturb_categories(os.path.join(root, args.dataset), os.path.join(scratch, args.dataset), args.dataset, field, args.noise, args.seed)
    print(f"[cammsr-bench] {name}: '{field}' of {changed} items replaced at random", file=sys.stderr, flush=True)
    return scratch


def drop_vs_clean(name: str, row: dict, rows: dict) -> str:
    """NDCG@10 drop of a CAMMSR variant against clean CAMMSR (a noisy variant: against its clean
    counterpart; blank for other models)."""
    clean, value = rows.get(NOISE_BASELINE.get(name, CLEAN), {}).get("ndcg@10"), row.get("ndcg@10")
    if SUITE.variants[name][0] != "CAMMSR" or name == CLEAN or value is None or not clean:
        return ""
    return f"{100 * (clean - value) / clean:+.1f}%"


SUITE = ablation.AblationSuite(
    name="cammsr",
    description=__doc__,
    variants={
        "SASRec": ("SASRec", {}),
        "SASRecMM": ("SASRecMM", {}),
        CLEAN: ("CAMMSR", {}),
        "w/o category guidance": ("CAMMSR", {"cat_weight": 0.0}),
        "w/o swap CL": ("CAMMSR", {"cl_weight": 0.0}),
        "LayerNorm (no DyT)": ("CAMMSR", {"norm": "layernorm"}),
        "DyT gamma 1 (no unit gain)": ("CAMMSR", {"dyt_unit_gain": False}),
        "w/o gate (mean)": ("CAMMSR", {"gating": "mean"}),
        "raw gate (no gate_norm)": ("CAMMSR", {"gate_norm": False}),
        "category head on z": ("CAMMSR", {"category_from": "item"}),
        "ID as gated expert": ("CAMMSR", {"id_path": "expert"}),
        "w/o synergy experts": ("CAMMSR", {"synergy_experts": False}),
        "CL w/o false-negative mask": ("CAMMSR", {"cl_false_negatives": False}),
        "swap re-runs experts": ("CAMMSR", {"swap_mode": "sources"}),
        "first-version settings": ("CAMMSR", FIRST_VERSION),
        PRIOR: ("CAMMSR", {"category_prior": True}),
        SINGLE: ("CAMMSR", {}),  # the first modality alone (first_modality_only)
        NOISY: ("CAMMSR", {}),
        NOISY_PRIOR: ("CAMMSR", {"category_prior": True}),
    },
    metrics=("recall@5", "recall@10", "ndcg@5", "ndcg@10"),
    config_extras={"topk": [5, 10], "metrics": ["Recall", "NDCG"]},
    extra_options=(("--noise", dict(type=float, default=0.2, help="share of items whose category is replaced at random")),),
    prepare_config=first_modality_only,
    data_path_for=noisy_data_path,
    extra_column=("NDCG@10 drop vs CAMMSR", drop_vs_clean),
    settings_extra=lambda args: f"category noise {args.noise:.0%}",
)


def main(argv=None) -> int:
    return ablation.main(SUITE, argv)


if __name__ == "__main__":
    sys.exit(main())
