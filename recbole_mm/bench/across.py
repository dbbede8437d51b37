"""The same models under two regimes of one dataset, paired per user by input history length.

``python -m recbole_mm.bench.across --regimes dense,long`` reads both regimes' finished runs (the cache
under ``--out`` and the published runs; nothing is trained), each model at its tuned point, and prints,
per model and history-length group, the seed-mean NDCG@10 (headline ranking) under each regime and the
paired per-user difference (second regime minus first) with its bootstrap 95% CI and verdict (3 seeds
a side for a claim, as in the reports). The groups follow the shorter regime's input: users whose
whole history fits it read the same items under both regimes, so a difference there comes from how
the model was trained (for example on longer contexts), not from what it reads at test time.
"""

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

from recbole_mm.bench import benchmark, report, stats
from recbole_mm.bench.measure import PER_USER_KEY, PROTOCOL_NAMES
from recbole_mm.bench.profiles import DEFAULT_MODELS, TUNING_REGIME, get_regime


def headline_rows(regime: str, out: str, models: Sequence[str]) -> List[dict]:
    """The finished (and missing) rows of ``regime``'s seeds, each model at its tuned point; runs nothing."""
    table = benchmark.prepare_regime(regime, out, run_missing=False, progress=False)
    tuning = benchmark.tuned_points(benchmark.prepare_regime(TUNING_REGIME, out, run_missing=False, progress=False), models)
    plan = [(model, seed, tuning[model]["chosen"]) for model in models if tuning[model]["chosen"] is not None
            for seed in table.profile.seed_list()]
    return table.run(plan)


def _seed_mean(rows: Sequence[dict], model: str, protocol: str):
    ok = [row for row in rows if row["model"] == model and row.get("status") == "ok"]
    return len(ok), stats.seed_average([row.get(PER_USER_KEY) for row in ok], protocol)


def length_groups(lengths: Dict[str, int], max_len: int, window: int) -> List[tuple]:
    """:func:`recbole_mm.bench.report.history_length_groups` at the shorter input ``max_len``; the last
    group (histories that fill it) is labelled ``<max_len>+``: the longer regime reads more of them."""
    groups = report.history_length_groups({user: min(length, max_len) for user, length in lengths.items()}, max_len, window)
    return [(f"{max_len}+" if label == str(max_len) else label, users) for label, users in groups]


def across_table(first: Sequence[dict], second: Sequence[dict], names: Sequence[str], models: Sequence[str],
                 groups: Sequence[tuple], protocol: str) -> List[str]:
    """Markdown rows: per model and group, NDCG@10 under each regime and the paired second-minus-first Δ."""
    header = ["Model", "Seeds"]
    for label, users in groups:
        header += [f"{label} items ({len(users)} users): {names[0]} -> {names[1]}", f"{label}: Δ [95% CI]"]
    body = []
    for model in models:
        (seeds_a, values_a), (seeds_b, values_b) = _seed_mean(first, model, protocol), _seed_mean(second, model, protocol)
        if not values_a or not values_b:
            continue
        cells = [model, f"{seeds_a} / {seeds_b}"]
        for _, users in groups:
            result = stats.seed_rule(report.paired_values(values_b, values_a, users), min(seeds_a, seeds_b))
            if result is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{result['mean_b']:.4f} -> {result['mean_a']:.4f}")
            cells.append(f"{report.ci_text(result)} {stats.verdict_text(result)}")
        body.append(cells)
    return report.markdown_table(header, body)


def compare(regimes: Sequence[str], out: str, models: Sequence[str]) -> str:
    """The markdown of ``--regimes A,B``: the table and what it compares."""
    profiles = [get_regime(name).profile for name in regimes]
    datasets = {get_regime(name).dataset for name in regimes}
    if len(datasets) != 1:
        raise SystemExit(f"--regimes must share a dataset (users are paired across them), got {sorted(datasets)}")
    protocols = {report.headline_protocol({"profile": profile.as_dict()}) for profile in profiles}
    if len(protocols) != 1:
        raise SystemExit("--regimes must share a headline ranking (history left out or not)")
    dataset, protocol = datasets.pop(), protocols.pop()
    shorter = min(profile.max_len for profile in profiles)
    user_field = benchmark.dataset_setting(dataset, {}, "USER_ID_FIELD") or "user_id"  # as the regime reports read it
    lengths = benchmark.input_history_lengths(benchmark.dataset_folder(dataset, None, {}), dataset, user_field,
                                              max(profile.max_len for profile in profiles))
    if not lengths:
        raise SystemExit(f"no user histories found for {dataset}")
    groups = length_groups(lengths, shorter, report.mufasa_window())
    first, second = (headline_rows(name, out, models) for name in regimes)
    intro = (f"`{regimes[0]}` (histories of {profiles[0].max_len}) against `{regimes[1]}` (histories of "
             f"{profiles[1].max_len}) on `{dataset}`: test NDCG@10 ({PROTOCOL_NAMES[protocol]}, seed means), each "
             f"model at its tuned point, grouped by input history length; Δ = {regimes[1]} minus {regimes[0]}, paired "
             f"per user, bootstrap 95% CI. Users with at most {shorter - 1} items read the same input under both.")
    return "\n".join([intro, ""] + across_table(first, second, regimes, models, groups, protocol)) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.across", description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", default="dense,long", help="two regimes of one dataset, comma-separated")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated models")
    parser.add_argument("--out", default="results", help="the benchmark's cache folder (published runs are read too)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    regimes = [name.strip() for name in args.regimes.split(",") if name.strip()]
    if len(regimes) != 2:
        raise SystemExit(f"--regimes takes two regimes, got {regimes}")
    print(compare(regimes, args.out, [model.strip() for model in args.models.split(",") if model.strip()]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
