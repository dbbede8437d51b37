"""``python -m recbole_mm.bench.mufasa``: MUFASA and its ablations vs SASRec and SASRecMM.

Every variant trains through RecBole's own pipeline under one protocol (same MAX_ITEM_LIST_LENGTH —
200 by default, MUFASA's long-sequence setting —, hidden size, epochs, batch size, learning rate,
seed; :mod:`recbole_mm.bench.ablation`) and the script prints one markdown table: test Recall@10 /
NDCG@10 / MRR@10, training seconds per epoch and inference milliseconds per user (also as ratios
to SASRec). Each ablation changes one MUFASA key (the "+ ... loss" rows switch on a loss that is
off by default).

Examples::

    python -m recbole_mm.bench.mufasa                                   # ml-100k-mm, quick budget, L = 200
    python -m recbole_mm.bench.mufasa --epochs 5 --max-batches 0 --threads 1
    python -m recbole_mm.bench.mufasa --variants SASRec,MUFASA,"w/o SAL (dense)" --max-len 100
"""

import sys

from recbole_mm.bench import ablation

SUITE = ablation.AblationSuite(
    name="mufasa",
    description=__doc__,
    default_max_len=200,
    variants={
        "SASRec": ("SASRec", {}),
        "SASRecMM": ("SASRecMM", {}),
        "MUFASA": ("MUFASA", {}),
        # the auxiliary losses are off by default: each row switches one on at its former default weight
        "+ cross-modal loss": ("MUFASA", {"cga_weight": 0.1}),
        "+ collaborative loss": ("MUFASA", {"col_weight": 0.1}),
        "+ similarity loss": ("MUFASA", {"sim_weight": 0.05}),
        "+ distribution loss": ("MUFASA", {"dist_weight": 0.01}),
        "+ all four losses": ("MUFASA", {"cga_weight": 0.1, "col_weight": 0.1, "sim_weight": 0.05, "dist_weight": 0.01}),
        "w/o SAL (dense)": ("MUFASA", {"attention": "dense"}),
        "window-only SAL": ("MUFASA", {"sal_branches": ["window"]}),
        "selection may overlap the window": ("MUFASA", {"select_outside_window": False}),
        "w/o fusion (ID only)": ("MUFASA", {"use_mfl": False}),
    },
)


def main(argv=None) -> int:
    return ablation.main(SUITE, argv)


if __name__ == "__main__":
    sys.exit(main())
