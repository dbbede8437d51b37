"""The planted generator at its former import path, for the CAMMSR fixture still under ``data/``.

The generator is the benchmark's (:mod:`recbole_mm.bench.planted`); this re-export goes when
``synthetic_cammsr`` leaves the product package.
"""

from recbole_mm.bench.planted import (  # noqa: F401
    PlantedDataset,
    planted_config,
    write_cluster_walks,
    write_item_categories,
    write_planted_dataset,
)
