"""The shared machinery of the per-model benchmark scripts (``bench.mufasa``, ``bench.dmae``,
``bench.cammsr``): one command line, one protocol, one table.

A script declares an :class:`AblationSuite`: its variants (name -> model + config overrides), the
metric columns, and optional hooks (an extra CLI option, a per-variant config fix-up, a per-variant
data folder, an extra table column). Every variant then trains through RecBole's own pipeline
(:func:`recbole_mm.bench.runner.run_model`) under :func:`recbole_mm.bench.profiles.model_config`
(same MAX_ITEM_LIST_LENGTH, hidden size, epochs, batch size, learning rate, seed), and the table
gives the metrics, training seconds per epoch and full-sort inference milliseconds per user, the
speeds also as ratios to the reference model (SASRec) measured in the same run.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from recbole_mm.bench.pipeline import exit_status
from recbole_mm.bench.runner import map_stoppable, run_model
from recbole_mm.bench.profiles import FIRST_SEED, REGIMES, get_profile, model_config, parse_overrides

Variants = Dict[str, Tuple[str, dict]]  # variant name -> (RecBole / plugin model, config overrides)


@dataclasses.dataclass
class AblationSuite:
    """What one benchmark script compares; the hooks default to "nothing special"."""

    name: str  # short name: output files <name>.md / <name>_rows.json, log prefix
    description: str  # the script's docstring (its first paragraph is the --help text)
    variants: Variants
    metrics: Sequence[str] = ("recall@10", "ndcg@10", "mrr@10")
    config_extras: dict = dataclasses.field(default_factory=dict)  # added to every variant's config
    default_max_len: Optional[int] = None  # None: the profile's MAX_ITEM_LIST_LENGTH
    reference: str = "SASRec"
    full_variant: str = ""  # the variant the others are compared with under --regime (the model as shipped)
    # (flag, argparse kwargs) of script-specific options
    extra_options: Sequence[Tuple[str, dict]] = ()
    # (variant name, config, args) -> config: fix-ups that need the dataset or the CLI
    prepare_config: Optional[Callable[[str, dict, argparse.Namespace], dict]] = None
    # (args, variant name, config, scratch folder) -> data_path for that variant (None: args.data_path)
    data_path_for: Optional[Callable[[argparse.Namespace, str, dict, str], Optional[str]]] = None
    own_data_variants: Sequence[str] = ()  # variants that data_path_for gives their own copy of the data (under --regime too)
    # (header, (variant name, row, all rows) -> cell text): one more column
    extra_column: Optional[Tuple[str, Callable[[str, dict, Dict[str, dict]], str]]] = None
    # args -> extra text for the settings line
    settings_extra: Optional[Callable[[argparse.Namespace], str]] = None


COMMON_OPTIONS = (
    ("--dataset", dict(default="ml-100k-mm", help="RecBole dataset with modality feature files")),
    ("--data-path", dict(help="folder holding <dataset>/ (the bundled set needs none)")),
    ("--profile", dict(default="quick", help="base budget from recbole_mm.bench.profiles (quick | medium | full)")),
    ("--epochs", dict(type=int, help="maximum epochs (with --regime: a smoke budget, under which the tuned "
                                       "points are looked up too; --set epochs=N keeps the tuned points)")),
    ("--hidden-size", dict(type=int, help="hidden size of every model")),
    ("--max-batches", dict(type=int, help="training batches per epoch at most (0 = whole epochs)")),
    ("--seed", dict(type=int, default=FIRST_SEED)),
    ("--threads", dict(type=int, help="torch threads per run (1 is often fastest on a busy machine)")),
    ("--timeout", dict(type=float, help="seconds before one run is killed and reported failed")),
    ("--jobs", dict(type=int, default=1, help="variants trained at the same time, each in its own process (speed "
                                             "ratios are then taken under shared load; use with --threads on a big machine)")),
    ("--set", dict(dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant (yaml value), repeatable")),
    ("--out", dict(help="write rows (JSON) and the table (markdown) into this folder")),
    ("--regime", dict(choices=sorted(REGIMES), help="run the variants under this benchmark regime instead (its dataset, "
                                                   "budget, protocol, cache and each model's tuned point; several seeds, "
                                                   "paired CI against the full model): see recbole_mm.bench.variants")),
    ("--seeds", dict(type=int, help="--regime: seeds per variant (default 2)")),
    ("--publish", dict(action="store_true", help="--regime: ship the finished rows in recbole_mm/bench/published/")),
    ("--report-only", dict(action="store_true", help="--regime: only the table of the runs already cached")),
    ("--reference", dict(help="--regime: the variant every Δ and step ratio is taken against (default: the full model); "
                              "the table goes to <suite>_ablation_vs_<reference>.md")),
)


def parse_args(suite: AblationSuite, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m recbole_mm.bench.{suite.name}", description=suite.description.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(suite.variants), help=f"comma-separated, from: {', '.join(suite.variants)}")
    parser.add_argument("--max-len", type=int, default=suite.default_max_len, help="MAX_ITEM_LIST_LENGTH of every model")
    for flag, options in (*COMMON_OPTIONS, *suite.extra_options):
        parser.add_argument(flag, **options)
    return parser.parse_args(argv)


def chosen_variants(suite: AblationSuite, args) -> Tuple[List[Tuple[str, str, dict]], object]:
    """``([(variant, model, config_dict)], profile)``: the requested variants under one protocol."""
    profile = get_profile(args.profile).with_overrides(
        epochs=args.epochs, max_len=args.max_len, hidden_size=args.hidden_size, max_batches=args.max_batches
    )
    if args.max_batches == 0:
        profile = dataclasses.replace(profile, max_batches=None)
    names = [part.strip() for part in args.variants.split(",") if part.strip()]
    unknown = [name for name in names if name not in suite.variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(suite.variants)}")
    shared = parse_overrides(args.overrides)
    chosen = []
    for name in names:
        model, overrides = suite.variants[name]
        config = {**model_config(model, profile), **suite.config_extras, **overrides, **shared}
        if suite.prepare_config:
            config = suite.prepare_config(name, config, args)
        chosen.append((name, model, config))
    return chosen, profile


def number(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(value, reference) -> str:
    return f"{value / reference:.2f}x" if value and reference else "-"


def markdown_table(suite: AblationSuite, rows: Dict[str, dict]) -> str:
    """One line per variant: metrics, speed (absolute and as ratios to the reference), extra column, status."""
    reference = rows.get(suite.reference, {})
    header = ["variant", *(metric.replace("recall", "Recall").replace("ndcg", "NDCG").replace("mrr", "MRR") for metric in suite.metrics),
              "train s/epoch", f"train vs {suite.reference}", "infer ms/user", f"infer vs {suite.reference}"]
    if suite.extra_column:
        header.append(suite.extra_column[0])
    header.append("status")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name, *(number(row.get(metric)) for metric in suite.metrics),
                 number(row.get("train_s_per_epoch"), 1), ratio(row.get("train_s_per_epoch"), reference.get("train_s_per_epoch")),
                 number(row.get("infer_ms_per_user"), 3), ratio(row.get("infer_ms_per_user"), reference.get("infer_ms_per_user"))]
        if suite.extra_column:
            cells.append(suite.extra_column[1](name, row, rows))
        cells.append("ok" if row.get("status") == "ok" else f"failed: {row.get('error', '')[:80]}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_text(suite: AblationSuite, args, profile) -> str:
    text = (f"dataset {args.dataset}, seed {args.seed}, epochs {profile.epochs}, MAX_ITEM_LIST_LENGTH {profile.max_len}, "
            f"hidden {profile.hidden_size}, batch {profile.train_batch_size}, lr {profile.learning_rate}, "
            f"batches/epoch {profile.max_batches or 'all'}, threads {args.threads or 'default'}")
    return text + (", " + suite.settings_extra(args) if suite.settings_extra else "")


def write_outputs(suite: AblationSuite, out: str, rows: Dict[str, dict], table: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{suite.name}_rows.json"), "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=1)
    with open(os.path.join(out, f"{suite.name}.md"), "w", encoding="utf-8") as handle:
        handle.write(table)


def run_suite(suite: AblationSuite, args, isolate: bool = True) -> Tuple[Dict[str, dict], str]:
    """Train every chosen variant (``args.jobs`` at a time); return ``(rows, table)``, the table
    ending with the settings line. Rows keep the variants' order whatever order they finish in."""
    chosen, profile = chosen_variants(suite, args)
    jobs = max(1, getattr(args, "jobs", 1) or 1) if isolate else 1  # in-process runs cannot overlap

    def train(name, model, config, data_path):
        print(f"[{suite.name}-bench] {name}: {model} {json.dumps(suite.variants[name][1])}", file=sys.stderr, flush=True)
        return run_model(model, args.dataset, config, seed=args.seed, data_path=data_path or args.data_path,
                         isolate=isolate, max_batches=profile.max_batches, threads=args.threads, timeout=args.timeout)

    with tempfile.TemporaryDirectory(prefix=f"{suite.name}_bench_") as scratch:
        runs = [(name, model, config, suite.data_path_for(args, name, config, scratch) if suite.data_path_for else None)
                for name, model, config in chosen]
        rows = dict(zip([run[0] for run in runs], map_stoppable(lambda run: train(*run), runs, jobs)))
    settings = settings_text(suite, args, profile) + (f", {jobs} variants at a time" if jobs > 1 else "")
    return rows, markdown_table(suite, rows) + f"\n\nSettings: {settings}.\n"


def main(suite: AblationSuite, argv=None) -> int:
    """A suite's command line; an interrupt (Ctrl-C, ``kill``) stops the runs in flight and ends with
    exit status 130 and a line, not a traceback."""
    return exit_status(_run, suite, parse_args(suite, argv))


def _run(suite: AblationSuite, args) -> int:
    if args.regime:
        from recbole_mm.bench import variants  # the regime machinery is only loaded when asked for

        return variants.main(suite, args)
    rows, table = run_suite(suite, args)
    print(table)
    if args.out:
        write_outputs(suite, args.out, rows, table)
    return 0
