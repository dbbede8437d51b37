"""Ablation variants under a benchmark regime: each variant at its model's tuned point, several
seeds, compared with the full model on paired per-user NDCG@10.

``python -m recbole_mm.bench.cammsr --regime dense`` (and ``bench.mufasa`` / ``bench.dmae``) runs
the suite's variants through the regime's own table: its dataset, budget and ranking protocol, the
point each model chose on the tuning regime's grid, the regime's cache (finished runs are reused,
a run in flight resumes, ``--publish`` ships the rows). A variant changes only its overrides on top
of that; the full model's runs are the regime's own rows. The table gives, per variant, NDCG@10
(mean +- std over seeds) and the seed-averaged per-user difference to the full model with its paired
bootstrap 95% CI and verdict (:mod:`recbole_mm.bench.stats`), the training step time as a ratio, and,
where the runs record the regime's cold-item users, each variant's cold-item NDCG@10 with the paired
difference on those users alone.
``--reference NAME`` takes the differences and ratios against another variant instead (for example
SASRecMM, the model a multimodal variant has to beat), from the same cached runs.
``--set KEY=VALUE`` changes every variant alike; ``--set learning_rate=0.003 --set dropout=0.5``
moves them all to that grid point (the runs are the same as a variant that names the point itself).

A variant that trains on its own copy of the data (CAMMSR's category noise: the regime's dataset with
a share of the items' categories replaced) gets that copy under ``<out>/<regime>/data/``; its runs
are keyed by the copy's fingerprint, and its test users are the regime's, so the paired comparison
with the clean model holds.
"""

import argparse
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_mm import resources
from recbole_mm.bench import benchmark, stats
from recbole_mm.bench.folders import build_and_install, data_fingerprint
from recbole_mm.bench.measure import same_machine
from recbole_mm.bench.pipeline import say
from recbole_mm.bench.report import cold_user_set
from recbole_mm.bench.profiles import FIRST_SEED, TUNING_REGIME, parse_overrides
from recbole_mm.bench.runner import RunSpec, execute, model_fingerprint

DEFAULT_SEEDS = 2


def model_defaults(model: str) -> dict:
    """The plugin's yaml defaults of ``model`` ({} for RecBole's models)."""
    path = resources.model_yaml(model)
    return benchmark.read_yaml(path) if path else {}


def effective_overrides(model: str, overrides: dict) -> dict:
    """``overrides`` without the keys that only restate the model's default (so a variant equal to
    the full model shares its cached runs)."""
    defaults = model_defaults(model)
    return {key: value for key, value in overrides.items() if key not in defaults or defaults[key] != value}


OWN_DATA_FOLDER = "data"  # <out>/<regime>/data/<variant>/<dataset>/: the copies own-data variants train on


def own_data_paths(suite, table, names: Sequence[str], args) -> Dict[str, str]:
    """``{variant: data_path}`` for the variants that train on their own copy of the regime's data
    (CAMMSR's category noise), built by the suite's ``data_path_for`` hook under
    ``<results_dir>/data/``. A copy is built in a staging folder and replaces the kept one only when
    its files differ, so a run reading the kept copy is never disturbed and the cache key (which holds
    the copy's fingerprint) stays the same from one invocation to the next."""
    own = [name for name in names if name in suite.own_data_variants]
    if not own:
        return {}
    hook_args = argparse.Namespace(**{**vars(args), "data_path": table.data_path})
    folder = os.path.join(table.results_dir, OWN_DATA_FOLDER)
    paths = {}
    for name in own:
        config = {**table.base_config, **suite.variants[name][1]}
        paths[name] = build_and_install(folder, lambda staging: suite.data_path_for(hook_args, name, config, staging),
                                        compare=table.dataset)
    return paths


def shared_overrides(args) -> dict:
    """``--set KEY=VALUE`` pairs: applied to every variant, like a variant's own overrides (a grid key,
    ``learning_rate`` or ``dropout``, moves the point every variant runs at)."""
    return parse_overrides(getattr(args, "overrides", None) or [])


def variant_specs(suite, table, tuning: Dict[str, dict], names: Sequence[str], seeds: Sequence[int], args,
                  own_data: Optional[Dict[str, str]] = None) -> List[Tuple[str, RunSpec]]:
    """``[(variant, spec)]``: every variant x seed at its model's tuned point, under the regime's config
    (a variant of ``own_data`` on its own copy of the data, which its data fingerprint names)."""
    own_data = own_data or {}
    shared = shared_overrides(args)
    specs = []
    for name in names:
        model, overrides = suite.variants[name]
        overrides = {**overrides, **shared}
        chosen = tuning[model]["chosen"]
        point = None if chosen is None else {key: overrides.get(key, value) for key, value in chosen.items()}  # a variant may move a grid key
        model_overrides = {key: value for key, value in overrides.items() if key not in (point or {})}  # grid keys act via the point
        config = {**table.config(model, point), **effective_overrides(model, model_overrides)}
        if suite.prepare_config:
            config = suite.prepare_config(name, config, args)
        data = data_fingerprint(os.path.join(own_data[name], table.dataset)) if name in own_data else table.data_fingerprint
        fingerprints = {"data": data, "model": model_fingerprint(model)}
        specs += [(name, RunSpec(model, table.dataset, config, seed, point, fingerprints)) for seed in seeds]
    return specs


def execute_specs(table, specs: Sequence[Tuple[str, RunSpec]], own_data: Dict[str, str]) -> List[dict]:
    """Rows of ``specs`` in their order; the runs of an own-data variant read their copy's folder."""
    rows: List[Optional[dict]] = [None] * len(specs)
    for data_path in [None, *sorted(set(own_data.values()))]:
        members = [index for index, (name, _) in enumerate(specs) if own_data.get(name) == data_path]
        if not members:
            continue
        options = table.options if data_path is None else dict(table.options, data_path=data_path)
        done = execute([specs[index][1] for index in members], table.cache, options, jobs=table.jobs, fresh=table.fresh,
                       run_missing=table.run_missing)
        for index, row in zip(members, done):
            rows[index] = row
    return rows


def _headline(row: dict) -> str:
    return "excl" if row.get("exclude_history") else "full"


def summarize_variant(rows: List[dict]) -> dict:
    """Seeds finished, NDCG@10 mean / std under the run's headline protocol, per-user seed average, step time."""
    ok = [row for row in rows if row.get("status") == "ok"]
    summary = {"seeds": len(rows), "seeds_ok": len(ok), "errors": sorted({row.get("error", "") for row in rows if row not in ok})}
    if not ok:
        return summary
    protocol = _headline(ok[0])
    scores = [row[f"{protocol}_ndcg@10"] for row in ok]
    summary.update(
        protocol=protocol,
        ndcg_mean=float(np.mean(scores)),
        ndcg_std=float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
        per_user=stats.seed_average([row.get("per_user") for row in ok], protocol),
        ms_per_step=float(np.mean([row["train_ms_per_step"] for row in ok])),
        machines={row.get("machine") for row in ok},
        cold_users=cold_user_set(ok, ok[0].get("cold_max_count")),
    )
    cold = [row["cold_ndcg@10"] for row in ok if row.get("cold_ndcg@10") is not None]
    if len(cold) == len(ok):
        summary["cold_ndcg_mean"] = float(np.mean(cold))
    return summary


def step_ratio_text(summary: dict, reference: dict) -> str:
    """``summary``'s train step time over ``reference``'s, or why there is none. Runs that record their
    machine (:func:`recbole_mm.bench.measure.machine_id`) are compared only when all of both variants'
    runs share one; two variants that both predate the record keep the plain ratio."""
    if not reference.get("ms_per_step"):
        return "-"
    if not same_machine(summary["machines"], reference["machines"]):
        return "other machine"
    return f"{summary['ms_per_step'] / reference['ms_per_step']:.2f}x"


def compare_with(summary: dict, reference: dict, users=None):
    """Paired comparison of two variants' seed-averaged per-user NDCG@10 (on ``users`` only, when
    given), its verdict under the seed rule (:func:`recbole_mm.bench.stats.seed_rule`), or None."""
    if not summary.get("per_user") or not reference.get("per_user"):
        return None
    mine = summary["per_user"] if users is None else {user: value for user, value in summary["per_user"].items() if user in users}
    a, b = stats.paired_arrays(mine, reference["per_user"])
    return stats.seed_rule(stats.compare_paired(a, b), min(summary["seeds_ok"], reference["seeds_ok"])) if len(a) else None


def _change_text(suite, name: str, args, limit: int = 80) -> str:
    """The variant's config change; an own-data variant names its data change first (``settings_extra``)."""
    parts = [f"{key}={value}" for key, value in suite.variants[name][1].items()]
    if name in suite.own_data_variants and suite.settings_extra and args is not None:
        parts.insert(0, suite.settings_extra(args))
    text = ", ".join(parts) or "-"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _difference_text(result) -> str:
    return f"{result['diff']:+.4f} [{result['ci_low']:+.4f}, {result['ci_high']:+.4f}]"


def _cold_cells(name: str, summary: dict, reference_name: str, reference: dict, cold_users: set) -> List[str]:
    """Cold-item NDCG@10 (seed mean) and the paired difference to the reference on the cold-item users
    (a property of the regime's data: the same users for every variant, runs that predate the list included)."""
    if summary.get("cold_ndcg_mean") is None:
        return ["-", "-"]
    if name == reference_name:
        return [f"{summary['cold_ndcg_mean']:.4f}", "reference"]
    result = compare_with(summary, reference, users=cold_users)
    return [f"{summary['cold_ndcg_mean']:.4f}", f"{_difference_text(result)} {stats.verdict_text(result)}" if result else "-"]


def markdown(suite, summaries: Dict[str, dict], reference: str, regime: str, seeds: Sequence[int], args=None) -> str:
    header = ["Variant", "Change", "Seeds", "NDCG@10", f"Δ vs {reference} [95% CI]", "Wilcoxon p", "Verdict",
              "Train ms/step", f"vs {reference}"]
    ref = summaries.get(reference, {})
    cold_users = next((s["cold_users"] for s in summaries.values() if s.get("cold_users")), None)
    if cold_users:
        header += ["Cold-item NDCG@10", f"cold Δ vs {reference} [95% CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in summaries.items():
        cells = [name, _change_text(suite, name, args), f"{summary['seeds_ok']}/{summary['seeds']}"]
        if not summary["seeds_ok"]:
            blank = ["-"] * (len(header) - len(cells) - 1)
            lines.append("| " + " | ".join(cells + blank + ["; ".join(summary["errors"])[:120] or "not run"]) + " |")
            continue
        cells.append(f"{summary['ndcg_mean']:.4f} ± {summary['ndcg_std']:.4f}")
        result = None if name == reference else compare_with(summary, ref)
        if name == reference:
            cells += ["reference", "-", "-"]
        elif result is not None:
            p_value = "-" if result["wilcoxon_p"] is None else f"{result['wilcoxon_p']:.2g}"
            cells += [_difference_text(result), p_value, stats.verdict_text(result)]
        else:
            cells += ["-", "-", "-"]
        cells.append(f"{summary['ms_per_step']:.1f}")
        cells.append(step_ratio_text(summary, ref))
        if cold_users:
            cells += _cold_cells(name, summary, reference, ref, cold_users)
        lines.append("| " + " | ".join(cells) + " |")
    protocol = next((s["protocol"] for s in summaries.values() if s.get("protocol")), "full")
    cold_note = (f" Cold-item NDCG@10: on the {len(cold_users)} test users whose target item is rare in training "
                 "(the regime report's cold users), with the paired difference on those users." if cold_users else "")
    shared = shared_overrides(args)
    moved = "".join(f", {key}={value}" for key, value in shared.items())
    lines += ["", f"Regime `{regime}`, seeds {', '.join(map(str, seeds))}, each model at its tuned point{moved and ' with' + moved[1:] + ' for every variant'}; NDCG@10 under "
              f"{'history-excluded' if protocol == 'excl' else 'RecBole'} ranking. Δ: per-user NDCG@10 minus {reference}'s "
              "(each averaged over seeds first), paired bootstrap 95% CI over test users; the verdict comes from the CI, "
              f"and a better / worse needs {stats.MIN_CLAIM_SEEDS} seeds of both rows (\"tie (2 seeds)\": the CI excludes 0 "
              "with fewer). "
              "Step times are means of whole runs that may have shared the CPU; a ratio needs both variants' runs "
              "on one machine (\"other machine\" otherwise)." + cold_note]
    return "\n".join(lines) + "\n"


def regime_tables(regime: str, out: str, args):
    """The regime's table and its tuning points (read from the tuning regime's cache)."""
    changes = {key: value for key, value in dict(epochs=args.epochs, max_batches=args.max_batches).items() if value}
    options = dict(threads=args.threads, timeout=args.timeout, jobs=args.jobs, run_missing=not args.report_only,
                   profile_changes=changes)
    table = benchmark.prepare_regime(regime, out, **options)
    tuning_table = benchmark.prepare_regime(TUNING_REGIME, out, **dict(options, run_missing=False))
    return table, tuning_table


def missing_point_message(models: Sequence[str], args) -> str:
    """Why a variant table cannot start: the tuning grid lacks ``models``. ``--epochs`` / ``--max-batches``
    look the points up under that budget (a smoke run's grid); ``--set epochs=N`` keeps the tuned points."""
    budget = [f"--{flag.replace('_', '-')} {value}" for flag, value in
              (("epochs", getattr(args, "epochs", None)), ("max_batches", getattr(args, "max_batches", None))) if value]
    message = (f"no tuned point for {', '.join(models)}: run python -m recbole_mm.bench --regime {TUNING_REGIME} "
               f"--models {','.join(models)}{''.join(' ' + flag for flag in budget)} first")
    if budget:
        message += (f" ({' and '.join(budget)} look the tuned points up under that budget; to keep the "
                    f"{TUNING_REGIME} regime's points and only change the cap, give --set epochs=N instead)")
    return message


def run(suite, table, tuning_table, names: Sequence[str], seeds: Sequence[int], args, publish: bool = False) -> Tuple[dict, str]:
    """Train (or read) every variant x seed; return ``(summaries, markdown)``. ``publish`` ships the rows."""
    if not suite.full_variant or suite.full_variant not in names:
        raise SystemExit(f"--regime compares with the full model: include '{suite.full_variant}' in --variants")
    reference = reference_of(suite, args)
    if reference not in names:
        raise SystemExit(f"--reference '{reference}' is not among --variants")
    models = sorted({suite.variants[name][0] for name in names})
    tuning = benchmark.tuned_points(tuning_table, models)
    lacking = benchmark.missing_tuning(tuning) + [model for model, entry in tuning.items() if entry["chosen"] is None]
    if lacking:
        raise SystemExit(missing_point_message(sorted(set(lacking)), args))
    own_data = own_data_paths(suite, table, names, args)
    specs = variant_specs(suite, table, tuning, names, seeds, args, own_data)
    rows = execute_specs(table, specs, own_data)
    if publish:
        say(f"published {table.cache.publish([row['key'] for row in rows if row.get('key')])} runs to {table.cache.published_dir}")
    grouped = {name: [] for name in names}
    for (name, _), row in zip(specs, rows):
        grouped[name].append(row)
    summaries = {name: summarize_variant(group) for name, group in grouped.items()}
    return summaries, markdown(suite, summaries, reference, os.path.basename(table.results_dir), seeds, args)


def reference_of(suite, args) -> str:
    """The variant a regime table compares with: ``--reference``, else the full model."""
    return getattr(args, "reference", None) or suite.full_variant


def table_name(suite, args) -> str:
    """``<suite>_ablation.md``, or ``<suite>_ablation_vs_<reference>.md`` for another reference."""
    reference = reference_of(suite, args)
    if reference == suite.full_variant:
        return f"{suite.name}_ablation.md"
    return f"{suite.name}_ablation_vs_{re.sub(r'[^A-Za-z0-9]+', '_', reference).strip('_')}.md"


def main(suite, args) -> int:
    """``--regime`` mode of a suite's command line: run, print and write ``<out>/<regime>/<suite>_ablation.md``."""
    names = [part.strip() for part in args.variants.split(",") if part.strip()]
    unknown = [name for name in names if name not in suite.variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(suite.variants)}")
    out = args.out or "results"
    if args.data_path or args.hidden_size:
        raise SystemExit("--regime fixes the dataset and the model sizes: drop --data-path / --hidden-size")
    table, tuning_table = regime_tables(args.regime, out, args)
    args.dataset = table.dataset  # hooks (e.g. the single-modality variant) read the regime's dataset
    seeds = list(range(FIRST_SEED, FIRST_SEED + (args.seeds or DEFAULT_SEEDS)))
    _, text = run(suite, table, tuning_table, names, seeds, args, publish=args.publish)
    print(text)
    path = os.path.join(table.results_dir, table_name(suite, args))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    say(f"table: {path}")
    return 0
