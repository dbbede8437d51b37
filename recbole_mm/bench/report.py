"""Benchmark report: per-model mean +- std over seeds, paired significance against SASRec, the
tuning grid, speed ratios, plots; markdown and CSV.

``write_report(results_dir, rows, models, settings, tuning=None)`` writes into ``results_dir``:

- ``results.md``: the headline table (NDCG@10 of each model at its tuned point under the regime's
  ranking protocol, seed mean +- std, mean per-user difference to SASRec with its paired bootstrap
  95% CI, Wilcoxon p, verdict better / worse when the CI excludes 0 and both sides have 3+ seeds, else tie), the feature models against SASRecMM
  the same way (when it is in the table), each better / worse verdict of those two tables checked
  seed by seed (recomputed with either side cut to one of its seeds: the CI resamples users with the
  seeds fixed and does not see how far seeds spread), the same under the other protocol,
  the share of test targets that repeat the input history, the full quality table (Recall / NDCG
  @10 @20, MRR@10, params, train s/epoch, inference ms/user, peak RSS), each run seed by seed (test
  NDCG@10, best validation NDCG@10 and its epoch), cold items, history items,
  NDCG@10 by input history length (when ``settings["history_lengths"]`` gives each test user's),
  features vs ID-only, speed ratios, the tuning grid, MUFASA's attention scaling results file
  when present, settings;
- ``results.csv`` (one row per model) and ``runs.csv`` (one row per (model, seed) run);
- ``valid_ndcg10.png`` and ``quality_vs_time.png`` when matplotlib is installed.

A failed run shows as ``failed: <error>`` in the table; the other models are reported as usual.
Runs only read here: the report never imports the scripts that wrote the results files.
"""

import collections
import os
import platform
import time
from typing import Dict, List, Optional, Sequence

import pandas as pd
import yaml

from recbole_mm import resources
from recbole_mm.bench import stats
from recbole_mm.bench.measure import (
    COLD_KEYS, COLD_USERS_KEY, HISTORY_KEYS, METRIC_KEYS, NOT_RUN, PER_USER_KEY, PROTOCOL_NAMES, PROTOCOLS, same_machine,
)
from recbole_mm.bench.profiles import MULTIMODAL_REFERENCE, PROFILES, REGIMES, SPEED_REFERENCE

# numeric run fields aggregated over seeds (mean, std)
NUMERIC_KEYS = METRIC_KEYS + COLD_KEYS + HISTORY_KEYS + (
    "best_valid",
    "epochs",
    "params",
    "train_s_per_epoch",
    "train_ms_per_step",
    "infer_ms_per_user",
    "peak_rss_mb",
    "cold_users",
    "wall_s",
)
QUALITY_COLUMNS = (("Recall@10", "recall@10"), ("Recall@20", "recall@20"), ("NDCG@10", "ndcg@10"), ("NDCG@20", "ndcg@20"), ("MRR@10", "mrr@10"))
SIGNIFICANCE_FIELDS = ("diff", "ci_low", "ci_high", "wilcoxon_p", "verdict", "ci_verdict", "seeds")
SUMMARY_FIELDS = (
    ["model", "status", "seeds_ok", "seeds_run", "uses_features", "point", "error"]
    + [f"{key}_{stat}" for key in NUMERIC_KEYS for stat in ("mean", "std")]
    + [f"{protocol}_vs_{reference}_{field}" for reference in (SPEED_REFERENCE, MULTIMODAL_REFERENCE)
       for protocol in PROTOCOLS for field in SIGNIFICANCE_FIELDS]
    + ["train_step_ratio", "infer_ratio"]
)
RUN_FIELDS = (
    ["model", "seed", "status", "error", "uses_features", "point", "exclude_history"]
    + list(METRIC_KEYS)
    + ["best_valid", "best_epoch", "epochs", "train_steps", "train_s_per_epoch", "train_ms_per_step", "infer_ms_per_user",
       "test_users", "params", "peak_rss_mb", "cold_max_count", "cold_users"]
    + list(COLD_KEYS)
    + list(HISTORY_KEYS)
    + ["device", "threads", "machine", "torch", "epoch_cpu", "wall_s", "finished_at", "key", "valid_curve"]
)
PLOT_FILES = {"valid_curves": "valid_ndcg10.png", "quality_vs_time": "quality_vs_time.png"}
# results files of the standalone scripts, under the results root, shown when present
# (``python -m recbole_mm.bench.attention --out results/attention`` writes attention.md)
EXTRA_RESULTS = (("MUFASA attention scaling", "attention", "attention.md"),)


# ----- aggregation ----------------------------------------------------------------------------


def _status(runs: List[dict], ok: List[dict]) -> str:
    if ok:
        return "ok" if len(ok) == len(runs) else "partial"
    return "missing" if runs and all(row.get("status") == "missing" for row in runs) else "failed"


def _numeric_stats(ok: List[dict]) -> dict:
    """``<key>_mean`` / ``<key>_std`` (sample std; 0 for one seed) of every numeric field, via pandas."""
    frame = pd.DataFrame([{key: row.get(key) for key in NUMERIC_KEYS} for row in ok], columns=list(NUMERIC_KEYS))
    frame = frame.apply(pd.to_numeric, errors="coerce")
    means, stds = frame.mean(), frame.std(ddof=1).fillna(0.0)
    result = {}
    for key in NUMERIC_KEYS:
        present = frame[key].notna().any()
        result[f"{key}_mean"] = float(means[key]) if present else None
        result[f"{key}_std"] = float(stds[key]) if present else None
    return result


def summarize(rows: Sequence[dict], models: Sequence[str]) -> List[dict]:
    """One summary per model (in ``models`` order): status, seeds, tuning point, mean / std of every
    numeric field, the seed-averaged per-user NDCG@10 of each protocol, the mean validation curve."""
    summaries = []
    for model in models:
        runs = [row for row in rows if row["model"] == model]
        ok = [row for row in runs if row.get("status") == "ok"]
        errors = sorted({row.get("error") or "" for row in runs if row.get("status") != "ok"} - {""})
        summary = {
            "model": model,
            "status": _status(runs, ok),
            "seeds_ok": len(ok),
            "seeds_run": len(runs),
            "uses_features": next((row.get("uses_features") for row in runs if row.get("uses_features") is not None), None),
            "point": next((row.get("point") for row in runs if row.get("point")), None),
            "error": "; ".join(errors),
            "machines": {row.get("machine") for row in ok},
        }
        summary.update(_numeric_stats(ok))
        for protocol in PROTOCOLS:
            summary[f"per_user_{protocol}"] = stats.seed_average([row.get(PER_USER_KEY) for row in ok], protocol)
            per_seed = {row["seed"]: stats.seed_average([row.get(PER_USER_KEY)], protocol) for row in ok}
            summary[f"per_seed_{protocol}"] = {seed: values for seed, values in sorted(per_seed.items()) if values}
        summary["valid_curve"] = _mean_curve([row.get("valid_curve") or [] for row in ok])
        summaries.append(summary)
    _add_speed_ratios(summaries)
    _add_significance(summaries)
    _add_significance(summaries, MULTIMODAL_REFERENCE)
    return summaries


def _mean_curve(curves):
    """Per-epoch mean over the seeds that reached that epoch (early stopping ends curves early)."""
    length = max((len(curve) for curve in curves), default=0)
    return [float(pd.Series([curve[epoch] for curve in curves if len(curve) > epoch]).mean()) for epoch in range(length)]


def _add_speed_ratios(summaries, reference=SPEED_REFERENCE):
    """Time ratios to ``reference``; None where either has no time or their runs ran on other machines."""
    ref = next((s for s in summaries if s["model"] == reference and s["seeds_ok"]), None)
    for summary in summaries:
        comparable = ref is not None and same_machine(summary["machines"], ref["machines"])
        for ratio, key in (("train_step_ratio", "train_ms_per_step_mean"), ("infer_ratio", "infer_ms_per_user_mean")):
            value, base = summary.get(key), ref.get(key) if comparable else None
            summary[ratio] = value / base if value is not None and base else None


def paired(a: dict, b: dict, protocol: str, users=None) -> Optional[dict]:
    """:func:`recbole_mm.bench.stats.compare_paired` of two summaries' seed-averaged per-user NDCG@10
    (on ``users`` only, when given), its verdict under the seed rule (:func:`recbole_mm.bench.stats.seed_rule`)."""
    result = paired_values(a.get(f"per_user_{protocol}"), b.get(f"per_user_{protocol}"), users)
    return stats.seed_rule(result, min(a["seeds_ok"], b["seeds_ok"]))


def paired_values(left: Optional[dict], right: Optional[dict], users=None) -> Optional[dict]:
    """:func:`recbole_mm.bench.stats.compare_paired` of two ``{user: NDCG@10}`` maps; None when either is empty."""
    if not left or not right:
        return None
    if users is not None:
        left = {user: value for user, value in left.items() if user in users}
    x, y = stats.paired_arrays(left, right)
    return stats.compare_paired(x, y) if len(x) else None


def cold_user_set(rows, cold_max_count) -> Optional[set]:
    """The cold-item test users of a table (a property of its data, the same for every model and seed),
    from the first finished run at this threshold whose per-user record lists them; None when no run
    does (runs made before the list was recorded), and then the cold comparisons have no CI."""
    for row in rows:
        record = row.get(PER_USER_KEY) or {}
        if row.get("status") == "ok" and row.get("cold_max_count") == cold_max_count and COLD_USERS_KEY in record:
            return set(record[COLD_USERS_KEY])
    return None


def _add_significance(summaries, reference=SPEED_REFERENCE):
    """``<protocol>_vs_<reference>_{diff, ci_low, ci_high, wilcoxon_p, verdict}`` of every model."""
    ref = next((s for s in summaries if s["model"] == reference), None)
    for summary in summaries:
        for protocol in PROTOCOLS:
            result = paired(summary, ref, protocol) if ref is not None and summary is not ref else None
            for field in SIGNIFICANCE_FIELDS:
                summary[f"{protocol}_vs_{reference}_{field}"] = result.get(field) if result else None


# ----- markdown -------------------------------------------------------------------------------


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(summary, key, digits=4, with_std=True):
    mean, std = summary.get(f"{key}_mean"), summary.get(f"{key}_std")
    if mean is None:
        return "-"
    if with_std and summary["seeds_ok"] > 1:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _status_text(summary, limit=160):
    if summary["status"] == "ok":
        return "ok"
    error = summary["error"][:limit] + ("..." if len(summary["error"]) > limit else "")
    if summary["status"] == "partial":
        rest = "the rest" if error == NOT_RUN else "failed"
        return f"ok {summary['seeds_ok']}/{summary['seeds_run']} seeds; {rest}: {error}"
    return f"{summary['status']}: {error}" if error else summary["status"]


def _features_mark(summary):
    return {True: "yes", False: "no"}.get(summary["uses_features"], "?")


def markdown_table(header, rows) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def quality_table(summaries) -> List[str]:
    header = ["Model", "Features"] + [name for name, _ in QUALITY_COLUMNS] + [
        "Params", "Train s/epoch", "Infer ms/user", "Peak RSS MB", "Epochs", "Seeds", "Status"]
    rows = []
    for s in summaries:
        params = "-" if s["params_mean"] is None else f"{int(round(s['params_mean'])):,}"
        rows.append(
            [s["model"], _features_mark(s)] + [_fmt(s, key) for _, key in QUALITY_COLUMNS]
            + [params, _fmt(s, "train_s_per_epoch", 1), _fmt(s, "infer_ms_per_user", 3), _fmt(s, "peak_rss_mb", 0),
               _fmt(s, "epochs", 1, with_std=False), f"{s['seeds_ok']}/{s['seeds_run']}", _status_text(s)]
        )
    return markdown_table(header, rows)


def cold_table(summaries, cold_max_count, protocol: str = "full", cold_users=None) -> List[str]:
    """Cold-item metrics per model; with the cold users known, each model's paired Δ on them against
    SASRec and SASRecMM, and which models are within the CI of the best."""
    header = ["Model", "Features", "Cold users", "Cold Recall@10", "Cold NDCG@10", "All Recall@10", "All NDCG@10"]
    references = [next((s for s in summaries if s["model"] == name and s["seeds_ok"]), None)
                  for name in (SPEED_REFERENCE, MULTIMODAL_REFERENCE)] if cold_users else []
    references = [reference for reference in references if reference is not None]
    header += [f"Cold Δ vs {reference['model']} [95% CI]" for reference in references]
    rows = []
    for s in summaries:
        cells = [s["model"], _features_mark(s), _fmt(s, "cold_users", 0, with_std=False), _fmt(s, "cold_recall@10"),
                 _fmt(s, "cold_ndcg@10"), _fmt(s, "recall@10"), _fmt(s, "ndcg@10")]
        for reference in references:
            result = None if s is reference else paired(s, reference, protocol, cold_users)
            cells.append("reference" if s is reference else ("-" if result is None else f"{ci_text(result)} {stats.verdict_text(result)}"))
        rows.append(cells)
    intro = (
        f"Test users whose target item is the target of at most {cold_max_count} training sequences "
        "(items rare in training); the same users for every model."
    )
    if references:
        intro += (" Δ: the paired per-user difference of cold NDCG@10 on those users (seed means first), bootstrap 95% CI; "
                  "the verdict from the CI and the seed rule (as in the headline).")
    return [intro, ""] + markdown_table(header, rows) + best_cold_lines(summaries, protocol, cold_users)


def best_cold_lines(summaries, protocol: str, cold_users) -> List[str]:
    """The model with the best cold NDCG@10 and, by the paired CI on the cold users, those that tie with it."""
    scored = [s for s in summaries if s.get("cold_ndcg@10_mean") is not None and s.get(f"per_user_{protocol}")]
    if not cold_users or len(scored) < 2:
        return []
    best = max(scored, key=lambda s: s["cold_ndcg@10_mean"])
    results = {s["model"]: paired(s, best, protocol, cold_users) for s in scored if s is not best}
    ties = [model for model, result in results.items() if result and result["ci_verdict"] == "tie"]
    return ["", f"Best cold NDCG@10: {best['model']} {best['cold_ndcg@10_mean']:.4f}; within its CI (tie): "
                f"{', '.join(ties) if ties else 'none'}."]


def history_table(summaries) -> List[str]:
    """The models' top 10 against each user's input history, and NDCG / Recall @10 under both protocols."""
    header = ["Model", "Features", "History items in top 10", "Repeat share", "NDCG@10 all items", "NDCG@10 history out",
              "Recall@10 all items", "Recall@10 history out"]
    rows = [
        [s["model"], _features_mark(s), _fmt(s, "history_in_top10", 2), _fmt(s, "repeat_share", 3, with_std=False),
         _fmt(s, "full_ndcg@10"), _fmt(s, "excl_ndcg@10"), _fmt(s, "full_recall@10"), _fmt(s, "excl_recall@10")]
        for s in summaries
    ]
    intro = (
        "RecBole ranks every item for sequential models, the items of the user's input history included. How many "
        "of those each model puts in its top 10 (all-items ranking), and its metrics under both protocols (history "
        "out: the input items are not candidates, so a target that repeats one is a miss). Repeat share: test "
        "targets that are an item of the input history (a property of the data)."
    )
    return [intro, ""] + markdown_table(header, rows)


def mufasa_window() -> int:
    """MUFASA's default ``window_size`` (its yaml): a history this short fits its window, where SAL is dense attention."""
    with open(resources.model_yaml("MUFASA"), encoding="utf-8") as handle:
        return int(yaml.safe_load(handle)["window_size"])


def history_length_groups(lengths: Dict[str, int], max_len: int, window: int) -> List[tuple]:
    """``[(label, users)]``: test users whose input history (``lengths``: items the model reads, at most
    ``max_len``) fits a ``window``-item window, is longer but cut short of ``max_len``, or fills the input."""
    bounds = [(1, min(window, max_len - 1)), (window + 1, max_len - 1), (max_len, max_len)]
    groups = []
    for low, high in bounds:
        users = {user for user, length in lengths.items() if low <= length <= high}
        if low <= high and users:
            groups.append((f"{low}-{high}" if low < high else f"{low}", users))
    return groups


def history_length_table(summaries, protocol: str, lengths: Dict[str, int], max_len: int,
                         reference=SPEED_REFERENCE) -> List[str]:
    """NDCG@10 per model within each history-length group, with the paired comparison to ``reference``
    on that group's users; nothing without per-user values or the reference."""
    ref = next((s for s in summaries if s["model"] == reference and s.get(f"per_user_{protocol}")), None)
    window = mufasa_window()
    groups = history_length_groups(lengths, max_len, window)
    if ref is None or len(groups) < 2:
        return []
    header = ["Model", "Features"]
    for label, users in groups:
        header += [f"{label} items ({len(users)} users) NDCG@10", f"{label}: Δ vs {reference} [95% CI]"]
    rows = []
    for s in summaries:
        values = s.get(f"per_user_{protocol}")
        if not values:
            continue
        cells = [s["model"], _features_mark(s)]
        for _, users in groups:
            scores = [value for user, value in values.items() if user in users]
            result = None if s is ref else paired(s, ref, protocol, users)
            cells.append(f"{sum(scores) / len(scores):.4f}" if scores else "-")
            cells.append("reference" if s is ref else ("-" if result is None else f"{ci_text(result)} {stats.verdict_text(result)}"))
        rows.append(cells)
    intro = (
        f"Test users grouped by the length of the input history the models read (at most {max_len} items; "
        f"{window} is MUFASA's default window), NDCG@10 ({PROTOCOL_NAMES[protocol]}, seed means) and the paired "
        f"per-user Δ against {reference} on each group's users, bootstrap 95% CI (verdicts under the headline's seed rule). Groups are subsets chosen by a "
        "property of the data, the same for every model; read each CI on its own (with several groups, one can "
        "exclude 0 by chance)."
    )
    return [intro, ""] + markdown_table(header, rows)


def history_length_section(summaries, protocol: str, settings) -> List[str]:
    """The history-length tables: every model against SASRec, then the feature models against SASRecMM
    (the comparison that isolates what a model does with the same features)."""
    lengths, max_len = settings.get("history_lengths") or {}, settings["profile"]["max_len"]
    lines = history_length_table(summaries, protocol, lengths, max_len)
    if not lines:
        return []
    section = ["## By input history length", ""] + lines + [""]
    feature_models = [s for s in summaries if s.get("uses_features")]
    if len(feature_models) > 1:
        against = history_length_table(feature_models, protocol, lengths, max_len, MULTIMODAL_REFERENCE)
        section += ([f"### Feature models against {MULTIMODAL_REFERENCE}", ""] + against + [""]) if against else []
    return section


def speed_table(summaries, reference=SPEED_REFERENCE) -> List[str]:
    if not any(s["model"] == reference and s["seeds_ok"] for s in summaries):
        return [f"{reference} has no finished run in this table, so no ratios; absolute times are in the quality table."]
    header = ["Model", "Train ms/step", f"Train x {reference}", "Infer ms/user", f"Infer x {reference}", "Train s/epoch"]
    ratio = lambda value: "-" if value is None else f"{value:.2f}x"  # noqa: E731
    rows = [
        [s["model"], _fmt(s, "train_ms_per_step", 1), ratio(s["train_step_ratio"]), _fmt(s, "infer_ms_per_user", 3),
         ratio(s["infer_ratio"]), _fmt(s, "train_s_per_epoch", 1)]
        for s in summaries
    ]
    intro = (
        f"Training step time (forward + backward + optimiser step, batch as in settings) and full-sort inference "
        f"time per test user (model scoring of the whole catalogue) as ratios to {reference} of this table. "
        "Cached runs keep the timings of the session that ran them (runs.csv: finished_at, machine); a ratio is "
        "left out (-) where the runs of the two models ran on other machines, and timings are only comparable "
        "between runs made under the same machine load (on a shared machine, pin `--threads`)."
    )
    return [intro, ""] + markdown_table(header, rows)


def ci_text(result: dict) -> str:
    return f"{result['diff']:+.4f} [{result['ci_low']:+.4f}, {result['ci_high']:+.4f}]"


def _p_text(value) -> str:
    return "-" if value is None else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")


def multimodal_table(summaries, protocol: str) -> List[str]:
    """The feature models against SASRecMM (SASRec plus the same features), or nothing without it."""
    reference = next((s for s in summaries if s["model"] == MULTIMODAL_REFERENCE and s["seeds_ok"]), None)
    others = [s for s in summaries if s.get("uses_features") and s is not reference]
    if reference is None or not others:
        return []
    return [f"### Feature models against {MULTIMODAL_REFERENCE}", ""] + headline_table([reference] + others, protocol, MULTIMODAL_REFERENCE) + [""]


def headline_table(summaries, protocol: str, reference=SPEED_REFERENCE) -> List[str]:
    """NDCG@10 per model under ``protocol``, with the paired comparison to ``reference``."""
    header = ["Model", "Features", "Tuned point", "Seeds", "NDCG@10", f"Δ vs {reference} [95% CI]", "Wilcoxon p", "Verdict"]
    rows = []
    for s in summaries:
        prefix = f"{protocol}_vs_{reference}_"
        if s["model"] == reference:
            delta, p_value, verdict = "reference", "-", "-"
        elif s.get(prefix + "verdict"):
            delta = ci_text({field: s[prefix + field] for field in ("diff", "ci_low", "ci_high")})
            p_value = _p_text(s[prefix + "wilcoxon_p"])
            verdict = stats.verdict_text({field: s[prefix + field] for field in ("verdict", "ci_verdict", "seeds")})
        else:
            delta, p_value, verdict = "-", "-", "-" if s["seeds_ok"] else _status_text(s, 80)
        rows.append([s["model"], _features_mark(s), point_text(s.get("point")), f"{s['seeds_ok']}/{s['seeds_run']}",
                     _fmt(s, f"{protocol}_ndcg@10"), delta, p_value, verdict])
    intro = (
        f"Test NDCG@10 ({PROTOCOL_NAMES[protocol]}), mean ± std over seeds. Δ: mean over test users of the model's "
        f"NDCG@10 minus {reference}'s (each averaged over seeds first), with its paired bootstrap 95% CI "
        f"({stats.BOOTSTRAP_SAMPLES} resamples of users). Verdict: better / worse when the CI excludes 0 and both "
        f"sides have at least {stats.MIN_CLAIM_SEEDS} seeds, else tie (\"tie (2 seeds)\": the CI excludes 0, but a side "
        "has too few seeds for a claim)."
    )
    return [intro, ""] + markdown_table(header, rows)


def _single_seed_checks(summary: dict, reference: dict, protocol: str) -> List[tuple]:
    """``(label, comparison)`` of ``summary`` against ``reference`` with one side cut to one of its seeds
    (the other side's seed mean kept); a side with a single seed adds nothing to its pooled comparison."""
    checks = []
    per_user = f"per_user_{protocol}"
    reference_seeds = reference.get(f"per_seed_{protocol}") or {}
    if len(reference_seeds) > 1:
        for seed, values in reference_seeds.items():
            checks.append((f"against {reference['model']} seed {seed} alone", paired_values(summary.get(per_user), values)))
    own_seeds = summary.get(f"per_seed_{protocol}") or {}
    if len(own_seeds) > 1:
        for seed, values in own_seeds.items():
            checks.append((f"its seed {seed} alone", paired_values(values, reference.get(per_user))))
    return [(label, result) for label, result in checks if result]


def seed_check_lines(summaries, protocol: str, reference=SPEED_REFERENCE) -> List[str]:
    """Each better / worse verdict against ``reference`` checked seed by seed.

    The paired CI resamples users with every model's seeds fixed, so it does not see how far seeds
    spread: one unusual seed of either side can carry a verdict. Each non-tie verdict is recomputed
    with one side cut to a single seed; the line says whether every such verdict agrees."""
    ref = next((s for s in summaries if s["model"] == reference and s["seeds_ok"]), None)
    lines = []
    for s in summaries:
        verdict = s.get(f"{protocol}_vs_{reference}_verdict")
        if ref is None or s is ref or verdict in (None, "tie"):
            continue
        checks = _single_seed_checks(s, ref, protocol)
        if not checks:
            continue
        head = f"- {s['model']} {verdict} than {reference} over the seed means"
        disagree = [(label, result) for label, result in checks if result["verdict"] != verdict]
        if disagree:
            lines.append(f"{head}, but not seed by seed: " + "; ".join(
                f"{label} {ci_text(result)} ({result['verdict']})" for label, result in disagree) + ".")
        else:
            lines.append(f"{head}, and {verdict} with either side cut to any one of its seeds ({len(checks)} checks).")
    if not lines:
        return []
    intro = (f"Verdicts against {reference} seed by seed: the CI resamples users with the seeds fixed, so it does not "
             "see how far seeds spread. Each better / worse verdict, recomputed with one side cut to a single seed "
             "(the other side's seed mean kept):")
    return [intro, ""] + lines + [""]


def repeat_line(summaries) -> List[str]:
    """The share of test targets that repeat an item of the input history (a data property)."""
    shares = [s["repeat_share_mean"] for s in summaries if s.get("repeat_share_mean") is not None]
    if not shares:
        return []
    share = max(shares)
    if share == 0:
        advice = "users here never repeat an item, so leaving the history out costs nothing"
    else:
        advice = "a history-excluded ranking misses these targets by construction" + (
            "; with this many repeats, RecBole's all-items ranking is the fairer headline" if share > 0.05 else "")
    return [f"Share of test targets that repeat an item of the user's input history: {share:.3f} ({advice}).", ""]


def provisional_lines(tuning: Optional[Dict[str, dict]]) -> List[str]:
    """A warning for each model whose grid is not complete: its point is the best of what ran so far."""
    lines = []
    for model, entry in (tuning or {}).items():
        done = sum(point["status"] != "missing" for point in entry["grid"])
        if entry["chosen"] and done < len(entry["grid"]):
            lines.append(f"- {model}: provisional point, {done} of {len(entry['grid'])} grid points run so far.")
    return lines + [""] if lines else []


def seed_table(rows, models: Sequence[str], protocol: str) -> List[str]:
    """Each model's runs seed by seed: test NDCG@10 under ``protocol``, the best validation NDCG@10 and
    the epoch it came at (of the epochs trained), so a seed that learned slowly shows by name."""
    seeds = sorted({row["seed"] for row in rows if row.get("model") in models})
    if len(seeds) < 2:
        return []
    by_run = {(row["model"], row["seed"]): row for row in rows}
    body = []
    for model in models:
        cells = [model]
        for seed in seeds:
            row = by_run.get((model, seed))
            if row is None:
                cells.append("-")
            elif row.get("status") == "ok":
                best = ("" if row.get("best_valid") is None else
                        f" (valid {row['best_valid']:.4f}, epoch {row.get('best_epoch', '?')} of {row.get('epochs', '?')})")
                cells.append(f"{row[f'{protocol}_ndcg@10']:.4f}{best}")
            elif row.get("in_flight"):
                cells.append(f"in flight ({row['in_flight']['epochs']} epochs)")
            else:
                cells.append(NOT_RUN if row.get("status") == "missing" else row.get("status") or "-")
        body.append(cells)
    return (["## Per seed", "", f"Test NDCG@10 ({PROTOCOL_NAMES[protocol]}) of each run, with its best validation "
             "NDCG@10 and the epoch it came at (early stopping picks that epoch's model)."]
            + [""] + markdown_table(["Model"] + [f"seed {seed}" for seed in seeds], body) + [""]
            + cpu_kernel_note([row for row in rows if row.get("model") in models and row.get("status") == "ok"]))


def cpu_kernel_note(rows) -> List[str]:
    """A line naming which runs' epochs ran on which CPU kernels (``epoch_cpu``), when the runs of a
    table used more than one: seeded runs retrace each other only on the same kernels."""
    runs_by_kernels = collections.defaultdict(list)
    for row in rows:
        for kernels in dict.fromkeys(row.get("epoch_cpu") or ()):
            if kernels:
                runs_by_kernels[kernels].append(f"{row['model']} seed {row['seed']}")
    if len(runs_by_kernels) < 2:
        return []
    parts = [f"{kernels}: {', '.join(runs)}" for kernels, runs in sorted(runs_by_kernels.items())]
    return ["Epochs ran on different CPU kernels (a run resumed on another machine can appear twice; "
            "seeded runs are bit-identical only on the same kernels): " + "; ".join(parts) + ".", ""]


def in_flight_table(rows) -> List[str]:
    """Runs not finished yet whose resumable state the cache holds: how far each got."""
    flying = [row for row in rows if row.get("status") == "missing" and row.get("in_flight")]
    if not flying:
        return []
    header = ["Model", "Seed", "Epochs trained", "Best valid NDCG@10 (epoch)", "Median train s/epoch"]
    body = []
    for row in flying:
        progress = row["in_flight"]
        best = "-" if progress["best_valid"] is None else f"{progress['best_valid']:.4f} ({progress['best_epoch']})"
        body.append([row["model"], row["seed"], progress["epochs"], best, f"{progress['train_s_per_epoch']:.0f}"])
    return ["## Runs in flight", "",
            "Validation figures of unfinished runs, not test results: the same command without `--report-only` "
            "continues each from its last finished epoch.", ""] + markdown_table(header, body) + [""]


def point_text(point) -> str:
    if not point:
        return "defaults"
    names = {"learning_rate": "lr", "dropout": "dropout"}
    return ", ".join(f"{names.get(key, key)} {value:g}" if isinstance(value, float) else f"{names.get(key, key)} {value}"
                     for key, value in point.items())


def tuning_table(tuning: Dict[str, dict]) -> List[str]:
    """Validation NDCG@10 of every grid point per model (one seed), the chosen point in bold."""
    points = []
    for entry in tuning.values():
        for point in entry["grid"]:
            if point["point"] not in points:
                points.append(point["point"])
    header = ["Model"] + [point_text(point) for point in points] + ["Chosen"]
    rows = []
    for model, entry in tuning.items():
        cells = {point_text(point["point"]): point for point in entry["grid"]}
        row = [model]
        for point in points:
            found = cells.get(point_text(point))
            if found is None:
                row.append("n/a")
            elif found["best_valid"] is None:
                row.append(found["status"])
            else:
                text = f"{found['best_valid']:.4f}"
                row.append(f"**{text}**" if point == entry["chosen"] else text)
        row.append(point_text(entry["chosen"]) if entry["chosen"] else "-")
        rows.append(row)
    intro = (
        "Validation NDCG@10 (best epoch) of each grid point, one seed, the same grid for every model "
        "(dropout sets each model's own dropout keys; models without a known mapping get the learning rate only). "
        "The best validation point (first on ties) is the one every regime runs."
    )
    return [intro, ""] + markdown_table(header, rows)


def features_verdict(summaries, protocol: str = "full", cold_users=None) -> List[str]:
    """Best feature-using model vs best ID-only model (by mean NDCG@10 under ``protocol``), with the
    paired per-user CI; the cold-user line too where the cold users are known, else seed means only."""
    key = f"{protocol}_ndcg@10"
    best = {}
    for group in (True, False):
        scored = [s for s in summaries if s["uses_features"] is group and s.get(f"{key}_mean") is not None]
        best[group] = max(scored, key=lambda s: s[f"{key}_mean"]) if scored else None
    if best[True] is None or best[False] is None:
        return ["Needs at least one finished model with features and one without."]
    result = paired(best[True], best[False], protocol)
    verdict = "no per-user values" if result is None else (
        {"better": "feature model better", "worse": "ID-only model better", "tie": "tie"}[result["verdict"]]
        + ("" if result["verdict"] == result["ci_verdict"] else f" ({stats.seeds_text(result['seeds'])}: too few for a claim)")
        + f" (Δ {ci_text(result)})")
    lines = [
        f"- NDCG@10 ({PROTOCOL_NAMES[protocol]}): best with features {best[True]['model']} {best[True][f'{key}_mean']:.4f} "
        f"vs best ID-only {best[False]['model']} {best[False][f'{key}_mean']:.4f}: {verdict}."
    ]
    cold = [s for s in summaries if s.get("cold_ndcg@10_mean") is not None]
    groups = {group: max((s for s in cold if s["uses_features"] is group), key=lambda s: s["cold_ndcg@10_mean"], default=None)
              for group in (True, False)}
    if groups[True] and groups[False]:
        result = paired(groups[True], groups[False], protocol, cold_users) if cold_users else None
        lines.append(
            f"- cold-user NDCG@10 ({'paired on the cold users' if result else 'seed means, no CI'}): best with features "
            f"{groups[True]['model']} {groups[True]['cold_ndcg@10_mean']:.4f} vs best ID-only {groups[False]['model']} "
            f"{groups[False]['cold_ndcg@10_mean']:.4f}" + (f": {stats.verdict_text(result)} (Δ {ci_text(result)})." if result else ".")
        )
    return lines


def extra_results(results_dir) -> List[str]:
    """The standalone scripts' results files (``<results root>/attention/attention.md``, ...), when present."""
    root = os.path.dirname(os.path.abspath(results_dir))
    lines = []
    for title, folder, name in EXTRA_RESULTS:
        path = os.path.join(root, folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                lines += [f"### {title}", "", handle.read().strip(), ""]
    return lines


def _profile_text(profile: dict) -> str:
    """The profile's name and the fields changed from it (e.g. by --epochs)."""
    base = REGIMES[profile["name"]].profile if profile["name"] in REGIMES else PROFILES.get(profile["name"])
    changed = [f"{key}={value}" for key, value in profile.items() if base is not None and getattr(base, key, value) != value]
    return f"`{profile['name']}`" + (f" with {', '.join(changed)}" if changed else "")


def _threads_text(rows) -> str:
    threads = sorted({row.get("threads") for row in rows if row.get("threads")})
    return ", ".join(str(t) for t in threads) or "-"


def devices_text(rows) -> str:
    """The devices the rows were trained on, with run counts where there are several (``cpu (12 runs),
    cuda (1 run)``): cached runs may come from different machines."""
    counts = collections.Counter(row.get("device") for row in rows if row.get("device"))
    if len(counts) <= 1:
        return next(iter(counts), "-")
    return ", ".join(f"{device} ({n} run{'s' if n > 1 else ''})" for device, n in sorted(counts.items()))


def settings_lines(settings, rows) -> List[str]:
    profile = settings["profile"]
    lines = [
        f"- dataset: `{settings['dataset']}`; models: {', '.join(settings['models'])}",
        f"- profile {_profile_text(profile)}",
        f"- protocol (every model): leave-one-out by time (`LS: valid_and_test`, `order: TO`), full ranking over all "
        f"items{' but the input history (`exclude_history: True`) for early stopping and the headline' if profile.get('exclude_history') else ''}, "
        f"`MAX_ITEM_LIST_LENGTH` {profile['max_len']}, hidden size {profile['hidden_size']}, up to "
        f"{profile['epochs']} epochs, early stopping on valid NDCG@10 with patience {profile['stopping_step']}, "
        f"train batch {profile['train_batch_size']}"
        + (f" (at most {profile['max_batches']} batches per epoch)" if profile.get("max_batches") else "")
        + f", lr {profile['learning_rate']} (unless tuned), CE loss over all items, seeds {settings['seeds']}",
        f"- categorical item fields for FDSA / SASRecF: {settings['features'] or 'none'}",
    ]
    if settings.get("overrides"):
        lines.append(f"- overrides applied to every model: `{settings['overrides']}`")
    lines.append(
        f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"device {devices_text(rows)}, torch threads {_threads_text(rows)}; "
        f"each run in its own process: {settings.get('isolated', True)}"
    )
    lines.append(f"- written {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return lines


def headline_protocol(settings) -> str:
    return "excl" if settings["profile"].get("exclude_history") else "full"


def markdown_report(summaries, rows, settings, title=None, notes=(), extras=(), plots=None, tuning=None) -> str:
    headline = headline_protocol(settings)
    other = next(protocol for protocol in PROTOCOLS if protocol != headline)
    lines = [f"# {title or 'Benchmark: ' + settings['dataset']}", ""]
    lines += [note for note in notes] + ([""] if notes else [])
    if any(s.get(f"{headline}_ndcg@10_mean") is not None for s in summaries):
        lines += [f"## Headline: NDCG@10, {PROTOCOL_NAMES[headline]}", ""] + headline_table(summaries, headline) + [""]
        lines += seed_check_lines(summaries, headline)
        lines += provisional_lines(tuning)
        lines += multimodal_table(summaries, headline)
        lines += seed_check_lines([s for s in summaries if s.get("uses_features")], headline, MULTIMODAL_REFERENCE)
        lines += repeat_line(summaries)
        lines += [f"## The other protocol: NDCG@10, {PROTOCOL_NAMES[other]}", "",
                  "The same trained models (early stopping under the headline protocol), ranked the other way."]
        lines += [""] + headline_table(summaries, other) + [""]
    lines += ["## Quality (test set, headline protocol, RecBole's metrics, mean ± std over seeds)", ""] + quality_table(summaries) + [""]
    lines += seed_table(rows, [s["model"] for s in summaries], headline)
    lines += in_flight_table(rows)
    cold_users = cold_user_set(rows, settings["cold_max_count"])
    if any(s.get("cold_users_mean") for s in summaries):
        lines += ["## Cold items", ""] + cold_table(summaries, settings["cold_max_count"], headline, cold_users) + [""]
    if any(s.get("history_in_top10_mean") is not None for s in summaries):
        lines += ["## History items", ""] + history_table(summaries) + [""]
    lines += history_length_section(summaries, headline, settings)
    lines += ["## Features vs ID-only", ""] + features_verdict(summaries, headline, cold_users) + [""]
    lines += ["## Speed", ""] + speed_table(summaries) + [""]
    if tuning:
        lines += ["## Tuning grid", ""] + tuning_table(tuning) + [""]
    lines += list(extras)
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()] + [""]
    elif plots is not None:
        lines += ["## Plots", "", "Not drawn: matplotlib is not installed (`pip install matplotlib`).", ""]
    lines += ["## Settings", ""] + settings_lines(settings, rows) + [""]
    return "\n".join(lines)


# ----- csv ------------------------------------------------------------------------------------


def _csv_value(value):
    if isinstance(value, list):
        return ";".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, dict):
        return point_text(value)
    return value


def write_csv(path, records, fields) -> None:
    frame = pd.DataFrame([{field: _csv_value(record.get(field)) for field in fields} for record in records], columns=list(fields))
    frame.to_csv(path, index=False)


# ----- plots ----------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish_plot(plt, figure, axis, path, drawn, legend_columns, labels):
    """Legend (or a 'no finished runs' note), labels, grid; save and close."""
    if drawn:
        axis.legend(fontsize=8, ncol=legend_columns)
    else:
        axis.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=axis.transAxes)
    xlabel, ylabel, title = labels
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_valid_curves(summaries, path, plt) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    curves = [s for s in summaries if s.get("valid_curve")]
    for s in curves:
        curve = s["valid_curve"]
        axis.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=s["model"],
                  linestyle="-" if s["uses_features"] else "--")
    axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    labels = ("epoch", "validation NDCG@10 (mean over seeds)", "Validation NDCG@10 per epoch (dashed: ID-only)")
    _finish_plot(plt, figure, axis, path, bool(curves), 2, labels)


def plot_quality_vs_time(summaries, path, plt) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    points = [s for s in summaries if s.get("ndcg@10_mean") is not None and s.get("train_s_per_epoch_mean")]
    for group, color, label in ((True, "tab:red", "uses features"), (False, "tab:blue", "ID only")):
        chosen = [s for s in points if bool(s["uses_features"]) is group]
        if not chosen:
            continue
        axis.errorbar(
            [s["train_s_per_epoch_mean"] for s in chosen], [s["ndcg@10_mean"] for s in chosen],
            xerr=[s["train_s_per_epoch_std"] or 0.0 for s in chosen], yerr=[s["ndcg@10_std"] or 0.0 for s in chosen],
            fmt="o", color=color, label=label, capsize=3,
        )
        for s in chosen:
            axis.annotate(s["model"], (s["train_s_per_epoch_mean"], s["ndcg@10_mean"]), textcoords="offset points",
                          xytext=(4, 4), fontsize=8)
    axis.margins(x=0.15, y=0.1)  # room for the model names
    times = [s["train_s_per_epoch_mean"] for s in points]
    if times and max(times) > 10 * min(times):
        axis.set_xscale("log")
    labels = ("train seconds per epoch", "test NDCG@10", "Quality vs training time per epoch")
    _finish_plot(plt, figure, axis, path, bool(points), 1, labels)


def write_plots(results_dir, summaries) -> Optional[Dict[str, str]]:
    """Both PNGs; returns ``{name: file name}``, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    plot_valid_curves(summaries, os.path.join(results_dir, PLOT_FILES["valid_curves"]), plt)
    plot_quality_vs_time(summaries, os.path.join(results_dir, PLOT_FILES["quality_vs_time"]), plt)
    return dict(PLOT_FILES)


# ----- all of it ------------------------------------------------------------------------------


def write_report(results_dir, rows, models, settings, title=None, notes=(), tuning=None) -> Dict[str, str]:
    """Write ``results.md``, ``results.csv``, ``runs.csv`` and the plots; returns their paths.

    ``tuning``: ``{model: {"grid": [{"point", "best_valid", "status"}], "chosen": point}}`` for the
    tuning-grid table (None: no tuning)."""
    os.makedirs(results_dir, exist_ok=True)
    summaries = summarize(rows, models)
    plots = write_plots(results_dir, summaries)
    text = markdown_report(summaries, rows, settings, title=title, notes=notes, extras=extra_results(results_dir),
                           plots=plots, tuning=tuning)
    paths = {
        "markdown": os.path.join(results_dir, "results.md"),
        "csv": os.path.join(results_dir, "results.csv"),
        "runs_csv": os.path.join(results_dir, "runs.csv"),
    }
    with open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(text)
    write_csv(paths["csv"], summaries, SUMMARY_FIELDS)
    write_csv(paths["runs_csv"], rows, RUN_FIELDS)
    for name, file_name in (plots or {}).items():
        paths[name] = os.path.join(results_dir, file_name)
    return paths
