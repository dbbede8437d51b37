"""Benchmarks: ``python -m recbole_mm.bench --regime dense|long|sparse|cold|cold-valid`` (see ``__main__``).

Modules, each importing only the ones listed before it:

- :mod:`.profiles`: the shared protocol, budgets, the regimes, the tuning grid;
- :mod:`.measure`: rankings under both protocols, per-user NDCG@10, cold / history metrics,
  memory; the metric key constants;
- :mod:`.stats`: paired bootstrap CI / Wilcoxon of per-user metrics, the better / worse / tie verdict;
- :mod:`.planted`, :mod:`.long_range`: generators of planted datasets (cluster walks with content
  that reveals the cluster; a next item that depends on one far back), also used by the tests;
- :mod:`.folders`: dataset folders' fingerprints; generated sets built apart, installed only on a change;
- :mod:`.synthetic`, :mod:`.sparse`: the generated datasets of the cold and sparse regimes;
- :mod:`.pipeline`: one run through RecBole's build / fit / test in this process;
- :mod:`.runner`: one process per run, timeouts, the resumable (and published) cache, parallel jobs;
- :mod:`.report`: markdown / CSV tables, significance against SASRec, speed ratios, plots;
- :mod:`.benchmark`: tables, tuning and regimes end to end; :mod:`.ablation` and the per-model
  scripts (``bench.mufasa``, ``bench.dmae``, ``bench.cammsr``) use the runner.

Importing this package is cheap; the submodules load what they need.
"""
