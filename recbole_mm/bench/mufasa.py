"""``python -m recbole_mm.bench.mufasa``: MUFASA and its ablations vs SASRec and SASRecMM.

Every variant trains through RecBole's own pipeline (:func:`recbole_mm.bench.compare.run_model`)
under one protocol (:func:`recbole_mm.bench.profiles.model_config`: same MAX_ITEM_LIST_LENGTH —
200 by default, MUFASA's long-sequence setting —, hidden size, epochs, batch size, learning rate,
seed) and the script prints one markdown table: test Recall@10 / NDCG@10 / MRR@10 and training
seconds per epoch (also as a ratio to SASRec). Each ablation changes one MUFASA key.

Examples::

    python -m recbole_mm.bench.mufasa                                   # ml-100k-mm, quick budget, L = 200
    python -m recbole_mm.bench.mufasa --epochs 5 --max-batches 0 --threads 1
    python -m recbole_mm.bench.mufasa --variants SASRec,MUFASA,"w/o SAL (dense)" --max-len 100
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Dict, Tuple

import yaml

from recbole_mm.bench.compare import run_model
from recbole_mm.bench.dmae import markdown_table
from recbole_mm.bench.profiles import FIRST_SEED, get_profile, model_config

# variant name -> (RecBole / plugin model, config overrides)
VARIANTS: Dict[str, Tuple[str, dict]] = {
    "SASRec": ("SASRec", {}),
    "SASRecMM": ("SASRecMM", {}),
    "MUFASA": ("MUFASA", {}),
    "w/o cross-genre loss": ("MUFASA", {"cga_weight": 0.0}),
    "w/o collaborative loss": ("MUFASA", {"col_weight": 0.0}),
    "w/o similarity loss": ("MUFASA", {"sim_weight": 0.0}),
    "w/o distribution loss": ("MUFASA", {"dist_weight": 0.0}),
    "w/o SAL (dense)": ("MUFASA", {"attention": "dense"}),
    "w/o fusion (ID only)": ("MUFASA", {"use_mfl": False}),
}
DEFAULT_MAX_LEN = 200


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.mufasa", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k-mm", help="RecBole dataset with a title modality first and a category_field")
    parser.add_argument("--data-path", help="folder holding <dataset>/ (the bundled set needs none)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--profile", default="quick", help="base budget from recbole_mm.bench.profiles (quick | full)")
    parser.add_argument("--epochs", type=int, help="maximum epochs")
    parser.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, help="MAX_ITEM_LIST_LENGTH of every model")
    parser.add_argument("--max-batches", type=int, help="training batches per epoch at most (0 = whole epochs)")
    parser.add_argument("--seed", type=int, default=FIRST_SEED)
    parser.add_argument("--threads", type=int, help="torch threads per run (1 is often fastest on a busy machine)")
    parser.add_argument("--timeout", type=float, help="seconds before one run is killed and reported failed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every variant (yaml value), repeatable")
    parser.add_argument("--out", help="write rows (JSON) and the table (markdown) into this folder")
    return parser.parse_args(argv)


def chosen_variants(args):
    """``([(variant, model, config_dict)], profile)``: every variant under the same protocol."""
    profile = get_profile(args.profile).with_overrides(epochs=args.epochs, max_len=args.max_len, max_batches=args.max_batches)
    if args.max_batches == 0:
        profile = dataclasses.replace(profile, max_batches=None)
    shared = {key.strip(): yaml.safe_load(value) for key, _, value in (pair.partition("=") for pair in args.overrides)}
    names = [part.strip() for part in args.variants.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return [(name, VARIANTS[name][0], {**model_config(VARIANTS[name][0], profile), **VARIANTS[name][1], **shared}) for name in names], profile


def main(argv=None) -> int:
    args = parse_args(argv)
    chosen, profile = chosen_variants(args)
    rows = {}
    for name, model, config in chosen:
        print(f"[mufasa-bench] {name}: {model} {json.dumps(VARIANTS[name][1])}", file=sys.stderr, flush=True)
        rows[name] = run_model(model, args.dataset, config, seed=args.seed, data_path=args.data_path,
                               max_batches=profile.max_batches, threads=args.threads, timeout=args.timeout)
    settings = (f"dataset {args.dataset}, seed {args.seed}, epochs {profile.epochs}, MAX_ITEM_LIST_LENGTH {profile.max_len}, "
                f"hidden {profile.hidden_size}, batch {profile.train_batch_size}, lr {profile.learning_rate}, "
                f"batches/epoch {profile.max_batches or 'all'}, threads {args.threads or 'default'}")
    table = markdown_table(rows) + f"\n\nSettings: {settings}.\n"
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "mufasa_rows.json"), "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
        with open(os.path.join(args.out, "mufasa.md"), "w", encoding="utf-8") as handle:
            handle.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
