"""``python -m recbole_mm.bench``: compare models under one protocol; the benchmark regimes.

Regimes (every model tuned alike on ``dense``, then seeds at its best validation point)::

    python -m recbole_mm.bench --regime dense --stage tune --threads 1 --jobs 2   # the grid: lr x dropout, 1 seed
    python -m recbole_mm.bench --regime dense --threads 1 --jobs 2                # 3 seeds at each model's point
    python -m recbole_mm.bench --regime long --threads 1 --jobs 2                 # L=200, 2 seeds, dense's points
    python -m recbole_mm.bench --regime sparse --threads 1 --jobs 2               # most recent ratings only
    python -m recbole_mm.bench --regime cold --threads 1 --jobs 2                 # planted cold items
    python -m recbole_mm.bench --regime cold-valid --threads 1 --jobs 2           # ... cold in validation too
    python -m recbole_mm.bench --regime dense --report-only                       # the tables from the cache
    python -m recbole_mm.bench --regime dense --publish                           # ship the rows with the repo

- ``dense``: ml-100k-mm, histories of 50, whole epochs to early stopping (30 max, patience 3),
  3 seeds; ranked without the input history (``exclude_history: True``, nobody re-rates a movie);
- ``long``: the same at histories of 200, 2 seeds;
- ``sparse``: ``<out>/ml-100k-mm-sparse/``, each user's most recent ratings only (the largest cut
  whose median item has at most 5 training interactions; :mod:`recbole_mm.bench.sparse`);
- ``cold``: ``<out>/planted-cold/``, the planted synthetic set with cold test items, histories of
  20, RecBole's ranking as headline (its users repeat items);
- ``cold-valid``: ``<out>/planted-cold-valid/``, the same training sequences and test targets, with
  half the users' validation targets cold as well, so early stopping sees the cold items.

Both ranking protocols are reported from the same trained models, with the share of test targets
that repeat the input history, and each model's per-user NDCG@10 against SASRec with a paired
bootstrap 95% CI (verdict better / worse / tie from the CI). Runs are cached per (model, seed,
config, data fingerprint, plugin-model source) in ``<out>/<regime>/runs/`` and read back from
``recbole_mm/bench/published/<regime>/runs/`` too (``--publish`` copies finished rows there), so a
checkout reproduces the tables with ``--report-only`` and no training.

Any dataset under one budget (no tuning)::

    python -m recbole_mm.bench --quick                                 # ml-100k-mm, 3 short epochs
    python -m recbole_mm.bench --dataset ml-100k-mm --profile medium --models SASRec,SASRecMM
    python -m recbole_mm.bench --dataset planted-cold --quick
    python -m recbole_mm.bench --dataset my-data --data-path ./dataset --config-files my-data.yaml --features genre

Results go to ``<out>/<regime or dataset>/``: results.md, results.csv, runs.csv, valid_ndcg10.png,
quality_vs_time.png, and runs/ (one JSON + log per finished run; a rerun skips them).
"""

import argparse
import sys

from recbole_mm.bench import synthetic
from recbole_mm.bench.benchmark import MissingTuning, make_table, read_yaml, run_regime, run_table
from recbole_mm.bench.pipeline import exit_status
from recbole_mm.bench.profiles import DEFAULT_MODELS, PROFILES, REGIMES, TUNING_REGIME, get_profile, parse_overrides
from recbole_mm.bench.runner import DEFAULT_COLD_MAX_COUNT

DEFAULT_DATASET = "ml-100k-mm"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--regime", choices=sorted(REGIMES), help="; ".join(f"{name}: {r.summary}" for name, r in REGIMES.items()))
    what.add_argument("--dataset", help=f"RecBole dataset name (default {DEFAULT_DATASET}; {synthetic.NAME} = the synthetic set) "
                                        "under a profile, no tuning")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated RecBole or plugin model names")
    parser.add_argument("--stage", choices=("tune", "seeds", "all"), default="all",
                        help=f"regimes: tune = only the grid ({TUNING_REGIME}), seeds = only the seeds at cached points, all = both")
    parser.add_argument("--untuned", action="store_true", help="regimes: every model at its yaml defaults (no grid)")
    parser.add_argument("--own-grid", action="store_true",
                        help="regimes other than dense: tune on this regime's own validation set (same grid) instead of "
                             "reusing dense's points; the report goes to <out>/<regime>/own-grid/")
    parser.add_argument("--publish", action="store_true", help="regimes: copy the finished rows into recbole_mm/bench/published/<regime>/runs/")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true", help="the quick profile (a smoke comparison of every model)")
    budget.add_argument("--profile", choices=sorted(PROFILES), default="full", help="settings profile without --regime (default: full)")
    parser.add_argument("--seeds", type=int, help="runs per model (seeds 2020, 2021, ...)")
    parser.add_argument("--epochs", type=int, help="maximum epochs")
    parser.add_argument("--stopping-step", type=int, help="early-stopping patience")
    parser.add_argument("--max-len", type=int, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--hidden-size", type=int, help="hidden size of every model")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--max-batches", type=int, help="training batches per epoch at most (smoke runs)")
    parser.add_argument("--features", help="comma-separated categorical item fields for FDSA / SASRecF (default: category_field)")
    parser.add_argument("--data-path", help="folder holding <dataset>/ (bundled and generated sets need none)")
    parser.add_argument("--config-files", nargs="*", default=[], help="yaml files with dataset settings (load_col, modalities, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every model (yaml value), repeatable; e.g. exclude_history=True")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="module to import in every run first, e.g. one that registers your own model")
    parser.add_argument("--cold-max-count", type=int, default=DEFAULT_COLD_MAX_COUNT,
                        help="cold test user: target item in at most this many training sequences")
    parser.add_argument("--out", default="results", help="results root (default: results)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached runs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from cached (and published) runs")
    parser.add_argument("--in-process", action="store_true", help="run models in this process (no crash / memory isolation)")
    parser.add_argument("--threads", type=int, help="torch threads per run (1 is often fastest on a busy shared machine)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time, each its own process (mind --threads x --jobs <= cores)")
    parser.add_argument("--timeout", type=float, help="seconds before one run is killed and reported failed")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def profile_changes(args) -> dict:
    """The budget flags given on the command line (``None``: not given)."""
    return dict(seeds=args.seeds, epochs=args.epochs, stopping_step=args.stopping_step, max_len=args.max_len,
                hidden_size=args.hidden_size, train_batch_size=args.batch_size, max_batches=args.max_batches)


def build_profile(args):
    return get_profile("quick" if args.quick else args.profile).with_overrides(**profile_changes(args))


def _run_options(args) -> dict:
    return dict(overrides=parse_overrides(args.overrides), cold_max_count=args.cold_max_count, imports=args.imports,
                threads=args.threads, isolate=not args.in_process, timeout=args.timeout, progress=not args.quiet,
                jobs=args.jobs, fresh=args.fresh, run_missing=not args.report_only,
                features=args.features.split(",") if args.features else None)


def main(argv=None) -> int:
    args = parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    if args.regime:
        if args.data_path or args.config_files or args.quick or args.profile != "full":
            raise SystemExit("--regime fixes its dataset and budget: drop --data-path / --config-files / --quick / --profile")
        if args.own_grid and args.untuned:
            raise SystemExit("--own-grid tunes and --untuned does not: give one of them")
        changes = {key: value for key, value in profile_changes(args).items() if value is not None}
        try:
            paths = run_regime(args.regime, models, args.out, stage=args.stage, tuned=not args.untuned, own_grid=args.own_grid,
                               publish=args.publish, profile_changes=changes, **_run_options(args))
        except MissingTuning as exc:
            raise SystemExit(str(exc)) from None
        if paths is None:
            return 0
    else:
        base_config = {}
        for path in args.config_files:
            base_config.update(read_yaml(path))
        table = make_table(args.dataset or DEFAULT_DATASET, build_profile(args), args.out, data_path=args.data_path,
                           base_config=base_config, **_run_options(args))
        paths = run_table(table, models)
    with open(paths["markdown"], encoding="utf-8") as handle:
        print(handle.read())
    return 0


def run_cli(argv=None) -> int:
    """``main`` as a command: an interrupt (Ctrl-C, ``kill``) ends with exit status 130 and a line, not a traceback."""
    return exit_status(main, argv)


if __name__ == "__main__":
    sys.exit(run_cli())
