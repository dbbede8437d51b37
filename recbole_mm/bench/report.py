"""Benchmark report: per-model mean +- std over seeds as markdown and CSV, speed ratios, plots.

``write_report(results_dir, rows, models, settings)`` writes into ``results_dir``:

- ``results.md``: quality table (Recall / NDCG @10 @20, MRR@10, params, train s/epoch, full-sort
  inference ms/user, peak RSS), the cold-item table, the speed section (ratios to SASRec of the
  same table), features-vs-ID-only, MUFASA's attention scaling table when present, settings;
- ``results.csv`` (one row per model) and ``runs.csv`` (one row per (model, seed) run);
- ``valid_ndcg10.png`` (validation NDCG@10 per epoch per model) and ``quality_vs_time.png``
  (test NDCG@10 vs train seconds per epoch), when matplotlib is installed.

A failed run shows as ``failed: <error>`` in the table; the other models are reported as usual.
"""

import csv
import glob
import importlib
import math
import os
import platform
import statistics
import time
from typing import Dict, List, Optional, Sequence

from recbole_mm.bench.compare import COLD_KEYS, HISTORY_KEYS, METRIC_KEYS
from recbole_mm.bench.profiles import PROFILES, SPEED_REFERENCE

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
SUMMARY_FIELDS = (
    ["model", "status", "seeds_ok", "seeds_run", "uses_features", "error"]
    + [f"{key}_{stat}" for key in NUMERIC_KEYS for stat in ("mean", "std")]
    + ["train_step_ratio", "infer_ratio"]
)
RUN_FIELDS = (
    ["model", "seed", "status", "error", "uses_features"]
    + list(METRIC_KEYS)
    + ["best_valid", "best_epoch", "epochs", "train_steps", "train_s_per_epoch", "train_ms_per_step", "infer_ms_per_user",
       "test_users", "params", "peak_rss_mb", "cold_max_count", "cold_users"]
    + list(COLD_KEYS)
    + list(HISTORY_KEYS)
    + ["device", "threads", "wall_s", "finished_at", "valid_curve"]
)
PLOT_FILES = {"valid_curves": "valid_ndcg10.png", "quality_vs_time": "quality_vs_time.png"}


# ----- aggregation ----------------------------------------------------------------------------


def _mean_std(values):
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: Sequence[dict], models: Sequence[str]) -> List[dict]:
    """One summary per model (in ``models`` order): status, seeds, mean / std of every numeric field."""
    summaries = []
    for model in models:
        runs = [row for row in rows if row["model"] == model]
        ok = [row for row in runs if row.get("status") == "ok"]
        errors = sorted({row.get("error") or "" for row in runs if row.get("status") != "ok"} - {""})
        if ok:
            status = "ok" if len(ok) == len(runs) else "partial"
        else:
            status = "missing" if runs and all(row.get("status") == "missing" for row in runs) else "failed"
        summary = {
            "model": model,
            "status": status,
            "seeds_ok": len(ok),
            "seeds_run": len(runs),
            "uses_features": next((row.get("uses_features") for row in runs if row.get("uses_features") is not None), None),
            "error": "; ".join(errors),
        }
        for key in NUMERIC_KEYS:
            summary[f"{key}_mean"], summary[f"{key}_std"] = _mean_std(row.get(key) for row in ok)
        summary["valid_curve"] = _mean_curve([row.get("valid_curve") or [] for row in ok])
        summaries.append(summary)
    _add_speed_ratios(summaries)
    return summaries


def _mean_curve(curves):
    """Per-epoch mean over the seeds that reached that epoch (early stopping ends curves early)."""
    length = max((len(curve) for curve in curves), default=0)
    return [statistics.fmean(curve[epoch] for curve in curves if len(curve) > epoch) for epoch in range(length)]


def _add_speed_ratios(summaries, reference=SPEED_REFERENCE):
    ref = next((s for s in summaries if s["model"] == reference and s["seeds_ok"]), None)
    for summary in summaries:
        for ratio, key in (("train_step_ratio", "train_ms_per_step_mean"), ("infer_ratio", "infer_ms_per_user_mean")):
            value, base = summary.get(key), ref.get(key) if ref else None
            summary[ratio] = value / base if value is not None and base else None


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
        return f"ok {summary['seeds_ok']}/{summary['seeds_run']} seeds; failed: {error}"
    return f"{summary['status']}: {error}" if error else summary["status"]


def _features_mark(summary):
    return {True: "yes", False: "no"}.get(summary["uses_features"], "?")


def _table(header, rows) -> List[str]:
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
    return _table(header, rows)


def cold_table(summaries, cold_max_count) -> List[str]:
    header = ["Model", "Features", "Cold users", "Cold Recall@10", "Cold NDCG@10", "All Recall@10", "All NDCG@10"]
    rows = [
        [s["model"], _features_mark(s), _fmt(s, "cold_users", 0, with_std=False), _fmt(s, "cold_recall@10"), _fmt(s, "cold_ndcg@10"),
         _fmt(s, "recall@10"), _fmt(s, "ndcg@10")]
        for s in summaries
    ]
    intro = (
        f"Test users whose target item is the target of at most {cold_max_count} training sequences "
        "(items rare in training); the same users for every model."
    )
    return [intro, ""] + _table(header, rows)


def history_table(summaries) -> List[str]:
    """The models' top 10 against each user's input history (runs cached before it was measured: "-")."""
    header = ["Model", "Features", "History items in top 10", "NDCG@10", "NDCG@10, history left out", "Recall@10, history left out"]
    rows = [
        [s["model"], _features_mark(s), _fmt(s, "history_in_top10", 2), _fmt(s, "ndcg@10"), _fmt(s, "unseen_ndcg@10"),
         _fmt(s, "unseen_recall@10")]
        for s in summaries
    ]
    intro = (
        "RecBole ranks every item for sequential models, the items of the user's input history included. "
        "How many of those each model puts in its top 10, and its metrics when they are left out of the "
        "ranking (the target always stays in): on data where users do not repeat items, slots spent on "
        "history items are lost."
    )
    return [intro, ""] + _table(header, rows)


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
        "Cached runs keep the timings of the session that ran them (runs.csv: finished_at); timings are only "
        "comparable between runs made under the same machine load (on a shared machine, pin `--threads`)."
    )
    return [intro, ""] + _table(header, rows)


def _verdict(feature_model: dict, id_model: dict, key: str) -> str:
    """Who wins, unless the gap is within seed noise: ``|gap| <= sqrt(std_a^2 + std_b^2)`` of the
    per-seed values (only known with two or more seeds on both sides)."""
    gap = feature_model[f"{key}_mean"] - id_model[f"{key}_mean"]
    if gap == 0:
        return "tie"
    winner = "feature model wins" if gap > 0 else "ID-only model wins"
    if min(feature_model["seeds_ok"], id_model["seeds_ok"]) < 2:
        return f"{winner} (one seed: no noise estimate)"
    noise = math.hypot(feature_model[f"{key}_std"] or 0.0, id_model[f"{key}_std"] or 0.0)
    return f"within seed noise (gap {abs(gap):.4f} <= {noise:.4f})" if abs(gap) <= noise else winner


def features_verdict(summaries) -> List[str]:
    """Best feature-using model vs best ID-only model, overall and on cold users."""
    lines = []
    for key, label in (("ndcg@10", "NDCG@10"), ("cold_ndcg@10", "cold-user NDCG@10")):
        best = {}
        for group in (True, False):
            scored = [s for s in summaries if s["uses_features"] is group and s.get(f"{key}_mean") is not None]
            best[group] = max(scored, key=lambda s: s[f"{key}_mean"]) if scored else None
        if best[True] is None or best[False] is None:
            continue
        lines.append(
            f"- {label}: best with features {best[True]['model']} {best[True][f'{key}_mean']:.4f} vs best ID-only "
            f"{best[False]['model']} {best[False][f'{key}_mean']:.4f}: {_verdict(best[True], best[False], key)}."
        )
    return lines or ["Needs at least one finished model with features and one without."]


def attention_section(results_dir) -> Optional[str]:
    """MUFASA's attention scaling table, written by ``recbole_mm.bench.attention``, when present.

    Looks for ``scaling_table_markdown()`` in that module (it must return the stored table, or None,
    without running anything), else for the newest ``*.md`` under ``<results root>/attention/``.
    """
    try:
        module = importlib.import_module("recbole_mm.bench.attention")
    except ImportError:
        module = None
    except Exception as exc:  # a broken module must not sink the whole report
        return f"(recbole_mm.bench.attention failed to import: {type(exc).__name__}: {exc})"
    reader = getattr(module, "scaling_table_markdown", None)
    if callable(reader):
        try:
            text = reader()
        except Exception as exc:
            return f"(scaling_table_markdown() failed: {type(exc).__name__}: {exc})"
        if text:
            return text.strip()
    candidates = glob.glob(os.path.join(os.path.dirname(os.path.abspath(results_dir)), "attention", "*.md"))
    if candidates:
        with open(max(candidates, key=os.path.getmtime), encoding="utf-8") as handle:
            return handle.read().strip()
    return None


def _profile_text(profile: dict) -> str:
    """The profile's name and the fields changed from it (e.g. by --epochs)."""
    base = PROFILES.get(profile["name"])
    changed = [f"{key}={value}" for key, value in profile.items() if base is not None and getattr(base, key, value) != value]
    return f"`{profile['name']}`" + (f" with {', '.join(changed)}" if changed else "")


def _threads_text(rows) -> str:
    threads = sorted({row.get("threads") for row in rows if row.get("threads")})
    return ", ".join(str(t) for t in threads) or "-"


def settings_lines(settings, rows) -> List[str]:
    profile = settings["profile"]
    devices = sorted({row.get("device") for row in rows if row.get("device")})
    lines = [
        f"- dataset: `{settings['dataset']}`; models: {', '.join(settings['models'])}",
        f"- profile {_profile_text(profile)}",
        f"- protocol (every model): leave-one-out by time (`LS: valid_and_test`, `order: TO`), full ranking over all "
        f"items, `MAX_ITEM_LIST_LENGTH` {profile['max_len']}, hidden size {profile['hidden_size']}, up to "
        f"{profile['epochs']} epochs, early stopping on valid NDCG@10 with patience {profile['stopping_step']}, "
        f"train batch {profile['train_batch_size']}"
        + (f" (at most {profile['max_batches']} batches per epoch)" if profile.get("max_batches") else "")
        + f", lr {profile['learning_rate']}, CE loss over all items, seeds {settings['seeds']}",
        f"- categorical item fields for FDSA / SASRecF: {settings['features'] or 'none'}",
    ]
    if settings.get("overrides"):
        lines.append(f"- overrides applied to every model: `{settings['overrides']}`")
    lines.append(
        f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"device {', '.join(devices) or '-'}, torch threads {_threads_text(rows)}; "
        f"each run in its own process: {settings.get('isolated', True)}"
    )
    lines.append(f"- written {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return lines


def markdown_report(summaries, rows, settings, title=None, notes=(), attention=None, plots=None) -> str:
    lines = [f"# {title or 'Benchmark: ' + settings['dataset']}", ""]
    lines += [note for note in notes] + ([""] if notes else [])
    lines += ["## Quality (test set, mean ± std over seeds)", ""] + quality_table(summaries) + [""]
    if any(s.get("cold_users_mean") for s in summaries):
        lines += ["## Cold items", ""] + cold_table(summaries, settings["cold_max_count"]) + [""]
    if any(s.get("history_in_top10_mean") is not None for s in summaries):
        lines += ["## History items", ""] + history_table(summaries) + [""]
    lines += ["## Features vs ID-only", ""] + features_verdict(summaries) + [""]
    lines += ["## Speed", ""] + speed_table(summaries) + [""]
    if attention:
        lines += ["### MUFASA attention scaling", "", attention, ""]
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
    return "" if value is None else value


def write_csv(path, records, fields) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({field: _csv_value(record.get(field)) for field in fields})


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


def write_report(results_dir, rows, models, settings, title=None, notes=()) -> Dict[str, str]:
    """Write ``results.md``, ``results.csv``, ``runs.csv`` and the plots; returns their paths."""
    os.makedirs(results_dir, exist_ok=True)
    summaries = summarize(rows, models)
    plots = write_plots(results_dir, summaries)
    text = markdown_report(summaries, rows, settings, title=title, notes=notes, attention=attention_section(results_dir), plots=plots)
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
