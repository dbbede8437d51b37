"""A benchmark table: models x seeds under one protocol, optionally at tuned points, then the report.

:class:`Table` holds what every run of one table shares (dataset, budget, config layers, cache,
run options). :func:`tune` runs (or reads from the cache) each model's grid of
:func:`recbole_mm.bench.profiles.grid_points` on the validation set with one seed and picks the
best point; :func:`run_table` runs every model's seeds at its point and writes the report.
:func:`prepare_regime` builds a regime's table (its dataset included); the tuning regime's
choices are reused by the other regimes (:func:`tuned_points`).
"""

import collections
import csv
import dataclasses
import os
from typing import Dict, Iterable, List, Optional, Sequence

import yaml

from recbole_mm.bench import report, sparse, synthetic
from recbole_mm.bench.folders import data_fingerprint
from recbole_mm.bench.measure import NOT_RUN
from recbole_mm.bench.pipeline import error_text, say
from recbole_mm.bench.profiles import (
    FIRST_SEED, TUNING_REGIME, Profile, get_regime, grid_points, model_config, point_config,
)
from recbole_mm.bench.runner import (
    DEFAULT_COLD_MAX_COUNT, PUBLISHED_DIR, RunCache, RunSpec, execute, failed_row, model_fingerprint,
)


class MissingTuning(RuntimeError):
    """A regime needs the tuning regime's grid, and the cache does not hold all of it."""


@dataclasses.dataclass
class Table:
    """Everything the runs of one table share."""

    dataset: str
    profile: Profile
    results_dir: str  # <out>/<regime or dataset>/ (runs/ inside)
    cache: RunCache
    data_path: Optional[str] = None
    base_config: dict = dataclasses.field(default_factory=dict)  # dataset settings (load_col, modalities, ...)
    overrides: dict = dataclasses.field(default_factory=dict)  # the user's --set, applied to every model
    features: List[str] = dataclasses.field(default_factory=list)  # categorical fields for FDSA / SASRecF
    data_fingerprint: Optional[str] = None
    options: dict = dataclasses.field(default_factory=dict)  # runner.run_model keywords
    jobs: int = 1
    fresh: bool = False
    run_missing: bool = True
    notes: List[str] = dataclasses.field(default_factory=list)
    title: Optional[str] = None

    def config(self, model: str, point: Optional[dict]) -> dict:
        """Dataset settings, then the protocol and the model's keys, the tuning point, then the user's overrides."""
        config = dict(self.base_config)
        config.update(model_config(model, self.profile, self.features))
        config.update(point_config(model, point))
        config.update(self.overrides)
        return config

    def spec(self, model: str, seed: int, point: Optional[dict]) -> RunSpec:
        fingerprints = {"data": self.data_fingerprint, "model": model_fingerprint(model)}
        return RunSpec(model, self.dataset, self.config(model, point), seed, point, fingerprints)

    def run(self, plan: Sequence[tuple]) -> List[dict]:
        """Rows of ``[(model, seed, point)]``: cached, run, or failed before running (a config error)."""
        specs, rows = [], {}
        for index, (model, seed, point) in enumerate(plan):
            try:
                specs.append((index, self.spec(model, seed, point)))
            except ValueError as exc:
                rows[index] = dict(failed_row(model, self.dataset, seed, exc), point=point)
                say(f"{model} seed {seed}: FAILED before running: {error_text(exc)}")
        done = execute([spec for _, spec in specs], self.cache, self.options, jobs=self.jobs, fresh=self.fresh,
                       run_missing=self.run_missing)
        rows.update({index: row for (index, _), row in zip(specs, done)})
        return [rows[index] for index in range(len(plan))]


def tune(table: Table, models: Sequence[str]) -> Dict[str, dict]:
    """Each model's grid on the validation set (seed ``FIRST_SEED``); the best ``best_valid`` wins,
    the first in grid order on ties. ``{model: {"grid": [{"point", "best_valid", "status", "key"}], "chosen": point}}``."""
    plan = [(model, FIRST_SEED, point) for model in models for point in grid_points(model)]
    rows = table.run(plan)
    tuning = {}
    for (model, _, point), row in zip(plan, rows):
        entry = tuning.setdefault(model, {"grid": [], "chosen": None})
        ok = row.get("status") == "ok" and row.get("best_valid") is not None
        entry["grid"].append({"point": point, "best_valid": row.get("best_valid") if ok else None,
                              "status": row.get("status"), "key": row.get("key")})
    for entry in tuning.values():
        scored = [point for point in entry["grid"] if point["best_valid"] is not None]
        entry["chosen"] = max(scored, key=lambda point: point["best_valid"])["point"] if scored else None
    return tuning


def untuned_row(dataset: str, model: str, seed: int, entry: dict) -> dict:
    """The row of a model without a finished grid point: not run yet (``missing``) when no point ran, else failed."""
    row = dict(failed_row(model, dataset, seed, ValueError("no grid point finished")), point=None)
    if all(point["status"] == "missing" for point in entry["grid"]):
        return dict(row, status="missing", error=f"grid {NOT_RUN}")
    return row


def run_table(table: Table, models: Sequence[str], points: Optional[Dict[str, Optional[dict]]] = None,
              tuning: Optional[Dict[str, dict]] = None, publish: bool = False) -> dict:
    """Every model's seeds at its point (``points[model]``; None = the yaml defaults), then the report.

    A model tuned without any finished grid point is reported as failed. ``publish`` copies the
    finished rows used (tuning and seeds) into the table's published cache. Returns the report's
    paths; raises ``KeyboardInterrupt`` after writing the report of the finished runs when interrupted.
    """
    points = points or {}
    plan = [(model, seed, points.get(model)) for model in models for seed in table.profile.seed_list()]
    untunable = {model for model in models if model in points and points[model] is None and tuning and model in tuning}
    interrupted, rows = False, []
    try:
        rows = table.run([item for item in plan if item[0] not in untunable])
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: writing the report of the runs finished so far (cached runs are kept)")
        table = dataclasses.replace(table, run_missing=False)
        rows = table.run([item for item in plan if item[0] not in untunable])
    rows += [untuned_row(table.dataset, model, seed, tuning[model]) for model, seed, _ in plan if model in untunable]
    if publish:
        keys = [row["key"] for row in rows if row.get("key")]
        keys += [point["key"] for entry in (tuning or {}).values() for point in entry["grid"] if point.get("key")]
        say(f"published {table.cache.publish(keys)} runs to {table.cache.published_dir}")
    settings = {
        "dataset": table.dataset,
        "profile": table.profile.as_dict(),
        "seeds": table.profile.seed_list(),
        "models": list(models),
        "features": list(table.features),
        "cold_max_count": table.options.get("cold_max_count", DEFAULT_COLD_MAX_COUNT),
        "overrides": dict(table.overrides),
        "isolated": table.options.get("isolate", True),
        "threads": table.options.get("threads"),
        "history_lengths": input_history_lengths(
            dataset_folder(table.dataset, table.data_path, table.base_config), table.dataset,
            dataset_setting(table.dataset, table.base_config, "USER_ID_FIELD") or "user_id", table.profile.max_len),
    }
    paths = report.write_report(table.results_dir, rows, list(models), settings, title=table.title, notes=table.notes, tuning=tuning)
    say(f"report: {paths['markdown']}")
    if interrupted:
        raise KeyboardInterrupt
    return paths


# ----- datasets and regimes -------------------------------------------------------------------


def read_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def dataset_setting(dataset: str, base_config: dict, key: str):
    """``key`` from the given config, else from the plugin's dataset yaml (None when neither has it)."""
    value = base_config.get(key)
    if not value:
        from recbole_mm import resources

        path = resources.dataset_yaml(dataset)
        value = read_yaml(path).get(key) if path else None
    return value


def default_features(dataset: str, base_config: dict) -> List[str]:
    """The dataset's category field, from the given config or the plugin's dataset yaml."""
    field = dataset_setting(dataset, base_config, "category_field")
    if not field:
        return []
    return [field] if isinstance(field, str) else list(field)


def input_history_lengths(folder: Optional[str], dataset: str, user_field: str, max_len: int) -> Optional[Dict[str, int]]:
    """``{user token: items of input history at test time}`` under leave-one-out: all of a user's
    interactions but the test target, cut to ``max_len``; counted from ``<folder>/<dataset>.inter``.
    None when the file or its ``user_field`` column is missing (the report then leaves the section out).
    Counts the raw tab-separated file: under a config that filters interactions (rating thresholds,
    ``user_inter_num_interval``) the lengths are the unfiltered ones."""
    path = os.path.join(folder, f"{dataset}.inter") if folder else None
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = [name.split(":")[0] for name in next(reader, [])]
        if user_field not in columns:
            return None
        index = columns.index(user_field)
        counts = collections.Counter(row[index] for row in reader if len(row) > index)
    return {user: min(count - 1, max_len) for user, count in counts.items()}


def dataset_folder(dataset: str, data_path: Optional[str], base_config: dict) -> Optional[str]:
    """``<data_path>/<dataset>/`` as a run will read it (the bundled sets' folder when none is given)."""
    from recbole_mm import resources

    root = data_path or base_config.get("data_path") or resources.bundled_dataset_root(dataset)
    folder = os.path.join(root, dataset) if root else None
    return folder if folder and os.path.isdir(folder) else None


def prepare_data(dataset: str, out_dir: str, data_path: Optional[str], base_config: dict):
    """Build a generated dataset when ``dataset`` names one; return ``(data_path, base_config, notes, fingerprint)``."""
    notes = []
    if dataset in synthetic.SPLITS:
        data_path = os.path.join(out_dir, dataset, "data")
        _, synthetic_config, info = synthetic.build(data_path, name=dataset)
        base_config = dict(synthetic_config, **base_config)
        notes = synthetic.describe(info)
    elif dataset == sparse.NAME:
        from recbole_mm import resources

        data_path = out_dir
        info = sparse.build(out_dir)
        base_config = dict(read_yaml(resources.dataset_yaml(sparse.SOURCE)), data_path=os.path.abspath(out_dir), **base_config)
        notes = sparse.describe(info)
    folder = dataset_folder(dataset, data_path, base_config)
    return data_path, base_config, notes, data_fingerprint(folder) if folder else None


def make_table(dataset: str, profile: Profile, out_dir: str, name: Optional[str] = None, *, data_path: Optional[str] = None,
               base_config: Optional[dict] = None, overrides: Optional[dict] = None, features: Optional[List[str]] = None,
               cold_max_count: int = DEFAULT_COLD_MAX_COUNT, imports: Iterable[str] = (), threads: Optional[int] = None,
               isolate: bool = True, timeout: Optional[float] = None, progress: bool = True, jobs: int = 1,
               fresh: bool = False, run_missing: bool = True, published: bool = False, notes: Sequence[str] = (),
               title: Optional[str] = None) -> Table:
    """A :class:`Table` for ``dataset`` (generated sets are built here) under ``<out_dir>/<name or dataset>/``;
    ``published``: also read ``recbole_mm/bench/published/<name>/runs/``."""
    name = name or dataset
    data_path, base_config, data_notes, fingerprint = prepare_data(dataset, out_dir, data_path, dict(base_config or {}))
    results_dir = os.path.join(out_dir, name)
    cache = RunCache(os.path.join(results_dir, "runs"), os.path.join(PUBLISHED_DIR, name, "runs") if published else None)
    options = dict(data_path=data_path, isolate=isolate, max_batches=profile.max_batches, cold_max_count=cold_max_count,
                   imports=list(imports), timeout=timeout, progress=progress, threads=threads)
    return Table(
        dataset=dataset, profile=profile, results_dir=results_dir, cache=cache, data_path=data_path, base_config=base_config,
        overrides=dict(overrides or {}), features=list(features) if features is not None else default_features(dataset, base_config),
        data_fingerprint=fingerprint, options=options, jobs=jobs, fresh=fresh, run_missing=run_missing,
        notes=list(data_notes) + list(notes), title=title,
    )


def regime_profile(name: str, **changes) -> Profile:
    """A regime's budget with the given fields changed (``None`` keeps the regime's own)."""
    return get_regime(name).profile.with_overrides(**changes)


def prepare_regime(name: str, out_dir: str, **options) -> Table:
    """The table of regime ``name`` (``profile_changes``: smoke-run budget changes, e.g. max_batches)."""
    regime = get_regime(name)
    profile = regime.profile.with_overrides(**options.pop("profile_changes", {}))
    title = f"Benchmark regime `{name}`: {regime.summary}"
    return make_table(regime.dataset, profile, out_dir, name=name, published=True, title=title, **options)


def tuned_points(tuning_table: Table, models: Sequence[str]) -> Dict[str, dict]:
    """The tuning regime's grid as found in its cache (nothing is trained): ``tune``'s result."""
    return tune(dataclasses.replace(tuning_table, run_missing=False), models)


def missing_tuning(tuning: Dict[str, dict]) -> List[str]:
    return [model for model, entry in tuning.items() if any(point["status"] == "missing" for point in entry["grid"])]


OWN_GRID_FOLDER = "own-grid"  # <out>/<regime>/own-grid/: the report of a regime tuned on its own grid


def run_regime(name: str, models: Sequence[str], out_dir: str, *, stage: str = "all", tuned: bool = True,
               own_grid: bool = False, publish: bool = False, **options) -> Optional[dict]:
    """One regime end to end. ``stage``: ``tune`` (the grid only), ``seeds`` (seeds at the tuned
    points, which must be cached) or ``all``; ``tuned=False`` runs the yaml defaults.
    Regimes other than the tuning regime read their points from its cache (``--regime dense`` first),
    unless ``own_grid``: then they run the same grid on their own validation set, and the report goes
    to ``<out>/<regime>/own-grid/`` (the runs share the regime's cache).
    Returns the report's paths (None after ``stage='tune'``)."""
    if stage not in ("tune", "seeds", "all"):
        raise ValueError(f"stage must be tune, seeds or all, got '{stage}'")
    table = prepare_regime(name, out_dir, **options)
    if not tuned:
        return run_table(table, models, publish=publish)
    own_grid = own_grid and name != TUNING_REGIME  # the tuning regime always tunes on its own grid
    if own_grid:
        table = dataclasses.replace(table, results_dir=os.path.join(table.results_dir, OWN_GRID_FOLDER),
                                    title=f"{table.title} (tuned on its own grid)")
    if name == TUNING_REGIME or own_grid:
        tuning = tune(table if stage != "seeds" else dataclasses.replace(table, run_missing=False), models)
    else:
        # a smoke budget (epochs, batches) applies to the tuning regime's lookup too; its own length and seeds stay
        changes = {key: value for key, value in options.get("profile_changes", {}).items() if key not in ("max_len", "seeds")}
        tuning_options = dict(options, profile_changes=changes, notes=(), run_missing=False, fresh=False)
        tuning = tuned_points(prepare_regime(TUNING_REGIME, out_dir, **tuning_options), models)
    lacking = missing_tuning(tuning)
    tuning_regime = name if own_grid else TUNING_REGIME
    if lacking and (tuning_regime != name or stage == "seeds"):
        own = " --own-grid" if own_grid else ""
        raise MissingTuning(
            f"the {tuning_regime} regime's grid is not complete in the cache for {', '.join(lacking)}: run "
            f"python -m recbole_mm.bench --regime {tuning_regime}{own} --stage tune first (or --untuned)"
        )
    if stage == "tune":
        for model, entry in tuning.items():
            say(f"{model}: chosen {report.point_text(entry['chosen'])}")
        return None
    return run_table(table, models, {model: entry["chosen"] for model, entry in tuning.items()}, tuning=tuning, publish=publish)
