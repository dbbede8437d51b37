"""``python -m recbole_mm.bench``: compare models on a RecBole dataset under one protocol.

Examples::

    python -m recbole_mm.bench --dataset ml-100k-mm --quick
    python -m recbole_mm.bench --dataset ml-100k-mm --models SASRec,GRU4Rec,BERT4Rec,FDSA,SASRecF,SASRecMM,MUFASA,DMAE,CAMMSR --seeds 3
    python -m recbole_mm.bench --dataset planted-cold --quick          # the synthetic cold-item set
    python -m recbole_mm.bench --dataset my-data --data-path ./dataset --config-files my-data.yaml --features genre
    python -m recbole_mm.bench --dataset ml-100k-mm --report-only      # rebuild tables / plots from cached runs

Results go to ``<out>/<dataset>/``: results.md, results.csv, runs.csv, valid_ndcg10.png,
quality_vs_time.png, and runs/ (one JSON + log per finished (model, seed); a rerun skips them).
"""

import argparse
import os
import signal
import sys

import yaml

from recbole_mm.bench import synthetic
from recbole_mm.bench.compare import DEFAULT_COLD_MAX_COUNT, run_benchmark
from recbole_mm.bench.profiles import DEFAULT_MODELS, PROFILES, get_profile


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help=f"RecBole dataset name (ml-100k-mm, {synthetic.NAME} = the synthetic set, ...)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated RecBole or plugin model names")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true", help="the quick profile (aimed at under 30 min for the nine default models on 2 idle CPU cores)")
    budget.add_argument("--profile", choices=sorted(PROFILES), default="full", help="settings profile (default: full)")
    parser.add_argument("--seeds", type=int, help="runs per model (seeds 2020, 2021, ...)")
    parser.add_argument("--epochs", type=int, help="maximum epochs")
    parser.add_argument("--stopping-step", type=int, help="early-stopping patience")
    parser.add_argument("--max-len", type=int, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--hidden-size", type=int, help="hidden size of every model")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--max-batches", type=int, help="training batches per epoch at most (smoke runs)")
    parser.add_argument("--features", help="comma-separated categorical item fields for FDSA / SASRecF (default: category_field)")
    parser.add_argument("--data-path", help="folder holding <dataset>/ (bundled and synthetic sets need none)")
    parser.add_argument("--config-files", nargs="*", default=[], help="yaml files with dataset settings (load_col, modalities, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every model (yaml value), repeatable")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="module to import in every run first, e.g. one that registers your own model")
    parser.add_argument("--cold-max-count", type=int, default=DEFAULT_COLD_MAX_COUNT,
                        help="cold test user: target item in at most this many training sequences")
    parser.add_argument("--out", default="results", help="results root (default: results)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached runs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from cached runs")
    parser.add_argument("--in-process", action="store_true", help="run models in this process (no crash / memory isolation)")
    parser.add_argument("--threads", type=int, help="torch threads per run (1 is often fastest on a busy shared machine)")
    parser.add_argument("--timeout", type=float, help="seconds before one run is killed and reported failed")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def _read_yaml(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _parse_overrides(pairs):
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got '{pair}'")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _default_features(dataset, base_config):
    """The dataset's category field, from the given config or the plugin's dataset yaml."""
    field = base_config.get("category_field")
    if not field:
        from recbole_mm import resources

        path = resources.dataset_yaml(dataset)
        field = _read_yaml(path).get("category_field") if path else None
    if not field:
        return []
    return [field] if isinstance(field, str) else list(field)


def build_profile(args):
    profile = get_profile("quick" if args.quick else args.profile)
    return profile.with_overrides(
        seeds=args.seeds, epochs=args.epochs, stopping_step=args.stopping_step, max_len=args.max_len,
        hidden_size=args.hidden_size, train_batch_size=args.batch_size, max_batches=args.max_batches,
    )


def _interrupt_on_sigterm():
    """``kill`` stops a benchmark like Ctrl-C does: the report of the finished runs is still written."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv=None) -> int:
    args = parse_args(argv)
    profile = build_profile(args)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    base_config, notes, data_path, salt = {}, [], args.data_path, None
    for path in args.config_files:
        base_config.update(_read_yaml(path))
    if args.dataset == synthetic.NAME:
        data_path = os.path.join(args.out, synthetic.NAME, "data")
        _, synthetic_config, info = synthetic.build(data_path)
        base_config = dict(synthetic_config, **base_config)
        notes, salt = synthetic.describe(info), info["fingerprint"]
    features = args.features.split(",") if args.features else _default_features(args.dataset, base_config)
    paths = run_benchmark(
        args.dataset, models, profile, out_dir=args.out, data_path=data_path, base_config=base_config,
        overrides=_parse_overrides(args.overrides), features=features, cold_max_count=args.cold_max_count,
        imports=args.imports, threads=args.threads, isolate=not args.in_process, fresh=args.fresh, run_missing=not args.report_only,
        timeout=args.timeout, progress=not args.quiet, notes=notes, cache_salt=salt,
    )
    with open(paths["markdown"], encoding="utf-8") as handle:
        print(handle.read())
    return 0


if __name__ == "__main__":
    _interrupt_on_sigterm()
    sys.exit(main())
