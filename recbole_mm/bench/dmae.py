"""``python -m recbole_mm.bench.dmae``: DMAE (lite, rerank, ablations) vs SASRec and SASRecMM.

Every variant trains through RecBole's own pipeline under one protocol (same MAX_ITEM_LIST_LENGTH,
hidden size, epochs, batch size, learning rate, seed; :mod:`recbole_mm.bench.ablation`) and the
script prints one markdown table: test Recall@10 / NDCG@10 / MRR@10, training seconds per epoch and
full-sort inference milliseconds per user, both also as ratios to SASRec. Ablations
(research/dmae.md section 7.4) change one DMAE key.

Examples::

    python -m recbole_mm.bench.dmae                                  # ml-100k-mm, quick profile
    python -m recbole_mm.bench.dmae --epochs 5 --max-len 50 --max-batches 0 --threads 1
    python -m recbole_mm.bench.dmae --variants SASRec,DMAE-lite --out results
"""

import sys

from recbole_mm.bench import ablation

SUITE = ablation.AblationSuite(
    name="dmae",
    description=__doc__,
    variants={
        "SASRec": ("SASRec", {}),
        "SASRecMM": ("SASRecMM", {}),
        "DMAE-lite": ("DMAE", {"dmae_mode": "lite"}),
        "DMAE-rerank": ("DMAE", {"dmae_mode": "rerank"}),
        "lite w/o discretisation": ("DMAE", {"dmae_mode": "lite", "dmae_discretize": False}),
        "lite w/o time": ("DMAE", {"dmae_mode": "lite", "dmae_time": "none"}),
        "lite w/o MIFU": ("DMAE", {"dmae_mode": "lite", "dmae_mifu": False}),
        "lite w/o decoder": ("DMAE", {"dmae_mode": "lite", "dmae_dist_weight": 0.0}),
    },
)


def main(argv=None) -> int:
    return ablation.main(SUITE, argv)


if __name__ == "__main__":
    sys.exit(main())
