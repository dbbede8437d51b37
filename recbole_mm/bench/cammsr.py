"""``python -m recbole_mm.bench.cammsr``: CAMMSR vs SASRec and SASRecMM, its ablations, category noise.

Every variant trains through RecBole's own pipeline (:func:`recbole_mm.bench.compare.run_model`)
under one protocol (:func:`recbole_mm.bench.profiles.model_config`: same MAX_ITEM_LIST_LENGTH,
hidden size, epochs, batch size, learning rate, seed); the script prints one markdown table with
test Recall@5/10, NDCG@5/10 and training seconds per epoch (also as a ratio to SASRec). Ablations
change one thing of CAMMSR. The robustness variant trains CAMMSR on a copy of the dataset whose
``.item`` file has the category field of ``--noise`` (default 20%) of the items replaced at random
(written into a temporary data folder, the other files linked; the bundled files are never
touched) and the table reports its drop against clean CAMMSR.

Examples::

    python -m recbole_mm.bench.cammsr                                # ml-100k-mm, quick budget
    python -m recbole_mm.bench.cammsr --epochs 5 --max-batches 0 --threads 1
    python -m recbole_mm.bench.cammsr --variants SASRec,CAMMSR,"category noise" --noise 0.3
"""

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
from typing import Dict, Optional, Tuple

import yaml

from recbole_mm import resources
from recbole_mm.bench.compare import run_model
from recbole_mm.bench.profiles import FIRST_SEED, get_profile, model_config

NOISY = "category noise"
# variant name -> (RecBole / plugin model, config overrides)
VARIANTS: Dict[str, Tuple[str, dict]] = {
    "SASRec": ("SASRec", {}),
    "SASRecMM": ("SASRecMM", {}),
    "CAMMSR": ("CAMMSR", {}),
    "w/o category guidance": ("CAMMSR", {"cat_weight": 0.0, "category_prior": False}),
    "w/o swap CL": ("CAMMSR", {"cl_weight": 0.0}),
    "LayerNorm (no DyT)": ("CAMMSR", {"norm": "layernorm"}),
    "w/o gate (mean)": ("CAMMSR", {"gating": "mean"}),
    "single modality": ("CAMMSR", {"modalities": "FIRST"}),  # the dataset's first modality alone
    NOISY: ("CAMMSR", {}),
}
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
REFERENCE = "SASRec"

OPTIONS = (
    ("--dataset", dict(default="ml-100k-mm", help="RecBole dataset with modality feature files and a category_field")),
    ("--data-path", dict(help="folder holding <dataset>/ (the bundled set needs none)")),
    ("--variants", dict(default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")),
    ("--profile", dict(default="quick", help="base budget from recbole_mm.bench.profiles (quick | full)")),
    ("--epochs", dict(type=int, help="maximum epochs")),
    ("--max-len", dict(type=int, help="MAX_ITEM_LIST_LENGTH of every model")),
    ("--max-batches", dict(type=int, help="training batches per epoch at most (0 = whole epochs)")),
    ("--noise", dict(type=float, default=0.2, help="share of items whose category is replaced at random")),
    ("--seed", dict(type=int, default=FIRST_SEED)),
    ("--threads", dict(type=int, help="torch threads per run (1 is often fastest on a busy machine)")),
    ("--timeout", dict(type=float, help="seconds before one run is killed and reported failed")),
    ("--set", dict(dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every variant, repeatable")),
    ("--out", dict(help="write rows (JSON) and the table (markdown) into this folder")),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.cammsr", description=__doc__.split("\n\n")[0])
    for flag, options in OPTIONS:
        parser.add_argument(flag, **options)
    return parser.parse_args(argv)


def dataset_settings(dataset: str) -> dict:
    """The plugin's dataset yaml (modalities, category_field, load_col), or {}."""
    path = resources.dataset_yaml(dataset)
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def variant_config(name: str, profile, dataset: str, shared: dict) -> dict:
    model, overrides = VARIANTS[name]
    config = {**model_config(model, profile), "topk": [5, 10], "metrics": ["Recall", "NDCG"], **overrides, **shared}
    if config.get("modalities") == "FIRST":
        modalities = shared.get("modalities") or dataset_settings(dataset).get("modalities")
        if not modalities:
            raise SystemExit(f"'single modality' needs the dataset's modalities (none in properties/dataset/{dataset}.yaml): pass --set modalities=[...]")
        config["modalities"] = list(modalities)[:1]
    return config


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


def noisy_data_path(args, scratch: str, config: dict) -> str:
    """A temporary data folder holding the perturbed copy of ``args.dataset``."""
    root = args.data_path or resources.bundled_dataset_root(args.dataset)
    if root is None:
        raise SystemExit(f"cannot find {args.dataset}/: pass --data-path")
    field = config.get("category_field") or dataset_settings(args.dataset).get("category_field")
    changed = perturb_categories(os.path.join(root, args.dataset), os.path.join(scratch, args.dataset), args.dataset, field, args.noise, args.seed)
    print(f"[cammsr-bench] {NOISY}: '{field}' of {changed} items replaced at random", file=sys.stderr, flush=True)
    return scratch


# ----- table ----------------------------------------------------------------------------------


def _number(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value, reference) -> str:
    return f"{value / reference:.2f}x" if value and reference else "-"


def _drop(value, clean) -> str:
    return f"{100 * (clean - value) / clean:+.1f}%" if value is not None and clean else "-"


def markdown_table(rows: Dict[str, dict]) -> str:
    """One line per variant; the noise variant's last column is its drop of NDCG@10 vs clean CAMMSR."""
    reference, clean = rows.get(REFERENCE, {}), rows.get("CAMMSR", {})
    header = ["variant", "Recall@5", "Recall@10", "NDCG@5", "NDCG@10", "train s/epoch", "vs SASRec", "NDCG@10 drop vs CAMMSR", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name] + [_number(row.get(key)) for key in METRICS] + [
            _number(row.get("train_s_per_epoch"), 1),
            _ratio(row.get("train_s_per_epoch"), reference.get("train_s_per_epoch")),
            _drop(row.get("ndcg@10"), clean.get("ndcg@10")) if VARIANTS[name][0] == "CAMMSR" and name != "CAMMSR" else "",
            "ok" if row.get("status") == "ok" else f"failed: {row.get('error', '')[:80]}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_text(args, profile) -> str:
    return (f"dataset {args.dataset}, seed {args.seed}, epochs {profile.epochs}, MAX_ITEM_LIST_LENGTH {profile.max_len}, "
            f"hidden {profile.hidden_size}, batch {profile.train_batch_size}, lr {profile.learning_rate}, "
            f"batches/epoch {profile.max_batches or 'all'}, threads {args.threads or 'default'}, category noise {args.noise:.0%}")


# ----- main -----------------------------------------------------------------------------------


def chosen_variants(args):
    names = [part.strip() for part in args.variants.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    profile = get_profile(args.profile).with_overrides(epochs=args.epochs, max_len=args.max_len, max_batches=args.max_batches)
    if args.max_batches == 0:
        profile = dataclasses.replace(profile, max_batches=None)
    shared = {key.strip(): yaml.safe_load(value) for key, _, value in (pair.partition("=") for pair in args.overrides)}
    return [(name, variant_config(name, profile, args.dataset, shared)) for name in names], profile


def run_variant(args, name: str, config: dict, profile, scratch: str) -> dict:
    model = VARIANTS[name][0]
    data_path: Optional[str] = noisy_data_path(args, scratch, config) if name == NOISY else args.data_path
    print(f"[cammsr-bench] {name}: {model} {json.dumps(VARIANTS[name][1])}", file=sys.stderr, flush=True)
    return run_model(model, args.dataset, config, seed=args.seed, data_path=data_path, max_batches=profile.max_batches,
                     threads=args.threads, timeout=args.timeout)


def main(argv=None) -> int:
    args = parse_args(argv)
    chosen, profile = chosen_variants(args)
    with tempfile.TemporaryDirectory(prefix="cammsr_noise_") as scratch:
        rows = {name: run_variant(args, name, config, profile, scratch) for name, config in chosen}
    table = markdown_table(rows) + f"\n\nSettings: {settings_text(args, profile)}.\n"
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "cammsr_rows.json"), "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
        with open(os.path.join(args.out, "cammsr.md"), "w", encoding="utf-8") as handle:
            handle.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
