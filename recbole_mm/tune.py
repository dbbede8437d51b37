"""Hyper-parameter search for the plugin's models through RecBole's ``HyperTuning`` (hyperopt).

    python -m recbole_mm.tune --model CAMMSR --params-file properties/hyper/CAMMSR.hyper
    python -m recbole_mm.tune --model MUFASA --algo bayes --max-evals 20 --dataset ml-100k-mm \\
        --config_files "my.yaml" --output results/tune --epochs=10

``--algo``: ``exhaustive`` (every combination of a ``choice``-only space, in random order; at most
``--max-evals``), ``random`` or ``bayes`` (TPE). The search space file uses RecBole's syntax, one
parameter a line: ``name choice [a,b]``, ``name uniform low,high``, ``name loguniform low,high``
(natural-log bounds), ``name quniform low,high,q``. Without ``--params-file`` the model's
``properties/hyper/<Model>.hyper`` is used. Extra ``--key=value`` arguments are fixed config
overrides for every trial, read by RecBole's Config as on RecBole's command line.

Writes ``<output>/<Model>-<dataset>-<algo>.md`` (params -> valid / test metrics, best marked) and a
``.json`` twin with the same rows.
"""

import argparse
import contextlib
import json
import logging
import os
import sys

from recbole_mm import resources
from recbole_mm.registry import plugin_overall_defaults


def default_params_file(model):
    return os.path.join(resources.properties_dir(), "hyper", f"{model}.hyper")


@contextlib.contextmanager
def _command_line(argv):
    """RecBole's Config reads ``sys.argv``: during the search it holds only the config overrides."""
    previous = sys.argv
    sys.argv = [previous[0]] + list(argv)
    try:
        yield
    finally:
        sys.argv = previous


class PluginObjective:
    """RecBole's ``objective_function`` for one model and dataset, with the plugin's overall defaults.

    ``HyperTuning`` calls it with the trial's parameters and the fixed config files; every trial's
    parameters and result are kept in :attr:`trials` in order.
    """

    def __init__(self, model, dataset, config_dict=None, saved=True):
        self.model, self.dataset = model, dataset
        self.config_dict = dict(config_dict or {})
        self.saved = saved
        self.trials = []
        self.valid_metric = None

    def __call__(self, config_dict=None, config_file_list=None, saved=None):
        from recbole.config import Config
        from recbole.quick_start import objective_function

        params = dict(config_dict or {})
        merged = {**self.config_dict, **params, "model": self.model, "dataset": self.dataset}
        # ray's tune.report (called by RecBole) warns once per trial that no ray session runs.
        ray_session = logging.getLogger("ray.tune.trainable.session")
        level = ray_session.level
        ray_session.setLevel(logging.ERROR)
        try:
            with plugin_overall_defaults():
                if self.valid_metric is None:
                    self.valid_metric = Config(config_dict=merged, config_file_list=config_file_list)["valid_metric"]
                result = objective_function(merged, config_file_list, self.saved if saved is None else saved)
        finally:
            ray_session.setLevel(level)
        self.trials.append((params, result))
        return result


def _number(value):
    return f"{float(value):.4f}"


def best_trial_index(trials):
    """Index of the best valid score (``valid_score_bigger`` says which way is better)."""
    if not trials:
        return None
    bigger = trials[0][1]["valid_score_bigger"]
    scores = [result["best_valid_score"] for _, result in trials]
    return scores.index(max(scores) if bigger else min(scores))


def results_table(trials, valid_metric):
    """Markdown: one row per trial, its parameters, best valid and test metrics; the best row marked."""
    if not trials:
        return "No trial finished.\n"
    names = sorted({name for params, _ in trials for name in params})
    valid_keys = list(trials[0][1]["best_valid_result"] or {})
    test_keys = list(trials[0][1]["test_result"] or {})
    header = ["#"] + names + [f"valid {k}" for k in valid_keys] + [f"test {k}" for k in test_keys] + ["best"]
    best = best_trial_index(trials)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, (params, result) in enumerate(trials):
        valid = result["best_valid_result"] or {}
        test = result["test_result"] or {}
        row = [str(index + 1)] + [str(params.get(name, "")) for name in names]
        row += [_number(valid[k]) if k in valid else "" for k in valid_keys]
        row += [_number(test[k]) if k in test else "" for k in test_keys]
        row.append(f"**best** ({valid_metric})" if index == best else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_results(trials, output, stem, valid_metric):
    """``<output>/<stem>.md`` and ``.json``; returns the markdown path."""
    os.makedirs(output, exist_ok=True)
    markdown = os.path.join(output, f"{stem}.md")
    with open(markdown, "w", encoding="utf-8") as handle:
        handle.write(f"# {stem}\n\nBest row by valid {valid_metric}.\n\n" + results_table(trials, valid_metric))
    rows = [
        {
            "params": params,
            "best_valid_score": float(result["best_valid_score"]),
            "best_valid_result": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
            "test_result": {k: float(v) for k, v in (result["test_result"] or {}).items()},
        }
        for params, result in trials
    ]
    best = best_trial_index(trials)
    with open(os.path.join(output, f"{stem}.json"), "w", encoding="utf-8") as handle:
        json.dump({"best": best, "trials": rows}, handle, indent=2)
    return markdown


def build_tuner(objective, params_file, config_file_list, algo, max_evals, early_stop):
    """RecBole's ``HyperTuning``; exhaustive search is checked for a discrete space and capped."""
    from recbole.trainer import HyperTuning
    from recbole.trainer.hyper_tuning import _validate_space_exhaustive_search

    if not os.path.isfile(params_file):
        raise FileNotFoundError(f"search space file {params_file} does not exist")
    tuner = HyperTuning(
        objective, params_file=params_file, fixed_config_file_list=config_file_list, algo=algo,
        max_evals=max_evals or 100, early_stop=early_stop,
    )
    if algo == "exhaustive":
        _validate_space_exhaustive_search(tuner.space)  # RecBole defines this check but never calls it
        if max_evals:
            tuner.max_evals = min(int(tuner.max_evals), max_evals)
    return tuner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", required=True, help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k-mm", help="dataset name")
    parser.add_argument("--params-file", "--params_file", dest="params_file", default=None,
                        help="search space (default: properties/hyper/<Model>.hyper)")
    parser.add_argument("--algo", choices=["exhaustive", "random", "bayes"], default="random")
    parser.add_argument("--max-evals", "--max_evals", dest="max_evals", type=int, default=None,
                        help="trials (random / bayes: default 100; exhaustive: default the space size)")
    parser.add_argument("--early-stop", "--early_stop", dest="early_stop", type=int, default=10,
                        help="stop after this many trials without a better valid score")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files fixed for every trial")
    parser.add_argument("--output", default=os.path.join("results", "tune"), help="folder of the results table")
    parser.add_argument("--search-seed", "--search_seed", dest="search_seed", type=int, default=2020,
                        help="seed of hyperopt's sampler (HYPEROPT_FMIN_SEED wins when set)")
    return parser.parse_known_args(argv)


def main(argv=None):
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HYPEROPT_FMIN_SEED", str(args.search_seed))
    config_files = args.config_files.split() if args.config_files else None
    objective = PluginObjective(args.model, args.dataset)
    tuner = build_tuner(objective, args.params_file or default_params_file(args.model), config_files,
                        args.algo, args.max_evals, args.early_stop)
    stem = f"{args.model}-{args.dataset}-{args.algo}"
    try:
        with _command_line(overrides):
            tuner.run()
    finally:
        markdown = write_results(objective.trials, args.output, stem, objective.valid_metric or "")
    print(f"{len(objective.trials)} trials; table: {markdown}")
    print("best params:", tuner.best_params)
    return objective.trials, tuner


if __name__ == "__main__":
    main()
