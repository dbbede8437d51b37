"""Benchmarks: ``python -m recbole_mm.bench --dataset ml-100k-mm [--quick]``.

- :mod:`recbole_mm.bench.compare`: ``run_model(model, dataset, config_dict, seed, data_path)`` trains
  and tests one model through RecBole's pipeline and returns one row (metrics, validation curve,
  timings, parameters, peak memory, cold-item metric); ``run_benchmark`` loops models x seeds with
  a resumable cache and writes the report.
- :mod:`recbole_mm.bench.profiles`: the shared protocol and the quick / full budgets.
- :mod:`recbole_mm.bench.report`: markdown / CSV tables, speed ratios to SASRec, plots.
- :mod:`recbole_mm.bench.synthetic`: the planted multimodal set with a cold-item test split.

Importing this package is cheap; the submodules load what they need.
"""
