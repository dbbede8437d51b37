"""``python -m recbole_mm.bench.dmae``: DMAE (lite, rerank, ablations) vs SASRec and SASRecMM.

Every variant trains through RecBole's own pipeline (:func:`recbole_mm.bench.compare.run_model`)
with the same protocol (:func:`recbole_mm.bench.profiles.model_config`: MAX_ITEM_LIST_LENGTH,
hidden size, epochs, batch size, learning rate, seed) and prints one markdown table: test
Recall@10 / NDCG@10 / MRR@10, training seconds per epoch and full-sort inference milliseconds per
user, both also as ratios to SASRec. Ablations (research/dmae.md section 7.4) change one DMAE key.

Examples::

    python -m recbole_mm.bench.dmae                                  # ml-100k-mm, quick profile
    python -m recbole_mm.bench.dmae --epochs 5 --max-len 50 --max-batches 0 --threads 1
    python -m recbole_mm.bench.dmae --variants SASRec,DMAE-lite --out results
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Dict, Tuple

from recbole_mm.bench.compare import run_model
from recbole_mm.bench.profiles import FIRST_SEED, get_profile, model_config

# variant name -> (RecBole / plugin model, config overrides)
VARIANTS: Dict[str, Tuple[str, dict]] = {
    "SASRec": ("SASRec", {}),
    "SASRecMM": ("SASRecMM", {}),
    "DMAE-lite": ("DMAE", {"dmae_mode": "lite"}),
    "DMAE-rerank": ("DMAE", {"dmae_mode": "rerank"}),
    "lite w/o discretisation": ("DMAE", {"dmae_mode": "lite", "dmae_discretize": False}),
    "lite w/o time": ("DMAE", {"dmae_mode": "lite", "dmae_time": "none"}),
    "lite w/o MIFU": ("DMAE", {"dmae_mode": "lite", "dmae_mifu": False}),
    "lite w/o decoder": ("DMAE", {"dmae_mode": "lite", "dmae_dist_weight": 0.0}),
}
REFERENCE = "SASRec"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.dmae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k-mm", help="RecBole dataset with modality feature files")
    parser.add_argument("--data-path", help="folder holding <dataset>/ (the bundled set needs none)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--profile", default="quick", help="base budget from recbole_mm.bench.profiles (quick | full)")
    parser.add_argument("--epochs", type=int, help="maximum epochs")
    parser.add_argument("--max-len", type=int, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--hidden-size", type=int, help="hidden size of every model")
    parser.add_argument("--max-batches", type=int, help="training batches per epoch at most (0 = whole epochs)")
    parser.add_argument("--seed", type=int, default=FIRST_SEED)
    parser.add_argument("--threads", type=int, help="torch threads per run (1 is often fastest on a busy machine)")
    parser.add_argument("--timeout", type=float, help="seconds before one run is killed and reported failed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every variant (yaml value), repeatable")
    parser.add_argument("--out", help="write rows (JSON) and the table (markdown) into this folder")
    return parser.parse_args(argv)


def variant_configs(args):
    """``([(variant, model, config_dict)], profile)`` for the requested variants, all under one protocol."""
    import yaml

    profile = get_profile(args.profile).with_overrides(
        epochs=args.epochs, max_len=args.max_len, hidden_size=args.hidden_size, max_batches=args.max_batches
    )
    if args.max_batches == 0:
        profile = dataclasses.replace(profile, max_batches=None)
    shared = {}
    for pair in args.overrides:
        key, _, value = pair.partition("=")
        shared[key.strip()] = yaml.safe_load(value)
    chosen = []
    for name in (part.strip() for part in args.variants.split(",") if part.strip()):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant '{name}'; choose from {', '.join(VARIANTS)}")
        model, overrides = VARIANTS[name]
        chosen.append((name, model, dict(model_config(model, profile), **overrides, **shared)))
    return chosen, profile


def _ratio(value, reference):
    return f"{value / reference:.2f}x" if value and reference else "-"


def _number(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: Dict[str, dict]) -> str:
    """One line per variant; speed as seconds / milliseconds and as ratios to SASRec."""
    reference = rows.get(REFERENCE, {})
    header = ["variant", "Recall@10", "NDCG@10", "MRR@10", "train s/epoch", "train vs SASRec", "infer ms/user", "infer vs SASRec", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        ok = row.get("status") == "ok"
        cells = [
            name,
            _number(row.get("recall@10")),
            _number(row.get("ndcg@10")),
            _number(row.get("mrr@10")),
            _number(row.get("train_s_per_epoch"), 1),
            _ratio(row.get("train_s_per_epoch"), reference.get("train_s_per_epoch")),
            _number(row.get("infer_ms_per_user"), 3),
            _ratio(row.get("infer_ms_per_user"), reference.get("infer_ms_per_user")),
            "ok" if ok else f"failed: {row.get('error', '')[:80]}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    chosen, profile = variant_configs(args)
    rows = {}
    for name, model, config in chosen:
        print(f"[dmae-bench] {name}: {model} {json.dumps({k: v for k, v in config.items() if k.startswith('dmae_')})}", file=sys.stderr, flush=True)
        rows[name] = run_model(model, args.dataset, config, seed=args.seed, data_path=args.data_path, max_batches=profile.max_batches,
                               threads=args.threads, timeout=args.timeout)
    settings = (f"dataset {args.dataset}, seed {args.seed}, epochs {profile.epochs}, MAX_ITEM_LIST_LENGTH {profile.max_len}, "
                f"hidden {profile.hidden_size}, batch {profile.train_batch_size}, lr {profile.learning_rate}, "
                f"batches/epoch {profile.max_batches or 'all'}, threads {args.threads or 'default'}")
    table = markdown_table(rows) + f"\n\nSettings: {settings}.\n"
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "dmae_rows.json"), "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
        with open(os.path.join(args.out, "dmae.md"), "w", encoding="utf-8") as handle:
            handle.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
