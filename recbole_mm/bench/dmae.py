"""``python -m recbole_mm.bench.dmae``: DMAE (lite, rerank, ablations) vs SASRec and SASRecMM.

Every variant trains through RecBole's own pipeline under one protocol (same MAX_ITEM_LIST_LENGTH,
hidden size, epochs, batch size, learning rate, seed; :mod:`recbole_mm.bench.ablation`) and the
script prints one markdown table: test Recall@10 / NDCG@10 / MRR@10, training seconds per epoch and
full-sort inference milliseconds per user, both also as ratios to SASRec. Each ablation changes one
DMAE key (the paper's own ablations: discretisation, click time, MIFU, decoder; and ours: the hard
negatives of the lite head).

``history CHECKPOINT``: how much of a trained DMAE's ranking quality is history suppression. It
scores the checkpoint's test users three ways -- as trained, with the "identity cell" remapped
(:meth:`DMAE.remap_self_pairs`: a candidate that is a history item gets the similarities of that
item's nearest other item) and, for ``lite``, the backbone alone -- and prints, for each, the mean
number of input-history items in the top 10 and NDCG@10 / Recall@10 under RecBole's protocol and
with the history left out of the ranking. ``--shortlists 20,50,0`` adds rows with the lite head on
the backbone's top-C (0: every item), to size ``dmae_shortlist``.

Examples::

    python -m recbole_mm.bench.dmae                                  # ml-100k-mm, quick profile
    python -m recbole_mm.bench.dmae --epochs 5 --max-len 50 --max-batches 0 --threads 1
    python -m recbole_mm.bench.dmae --variants SASRec,DMAE-lite --out results
    python -m recbole_mm.bench.dmae history saved/DMAE-<time>.pth --shortlists 20,50,100,0
"""

import argparse
import contextlib
import sys

from recbole_mm.bench import ablation

SUITE = ablation.AblationSuite(
    name="dmae",
    description=__doc__,
    full_variant="DMAE-lite",
    variants={
        "SASRec": ("SASRec", {}),
        "SASRecMM": ("SASRecMM", {}),
        "DMAE-lite": ("DMAE", {"dmae_mode": "lite"}),
        "DMAE-rerank": ("DMAE", {"dmae_mode": "rerank"}),
        "lite w/o discretisation": ("DMAE", {"dmae_mode": "lite", "dmae_discretize": False}),
        "lite w/o time": ("DMAE", {"dmae_mode": "lite", "dmae_time": "none"}),
        "lite w/o MIFU": ("DMAE", {"dmae_mode": "lite", "dmae_mifu": False}),
        "lite w/o decoder": ("DMAE", {"dmae_mode": "lite", "dmae_dist_weight": 0.0}),
        "lite w/o hard negatives": ("DMAE", {"dmae_mode": "lite", "dmae_hard_negs": 0}),
        "lite patience 10": ("DMAE", {"dmae_mode": "lite", "stopping_step": 10}),  # early stopping 10 evaluations late
    },
)


@contextlib.contextmanager
def _scoring(model, variant: str):
    """``model`` scoring as ``variant``: as trained, self-pairs remapped, the backbone alone, or
    ``shortlist C`` (the lite head on the backbone's top-C; ``shortlist 0``: on every item)."""
    shortlist = model.shortlist
    if variant.startswith("self-pairs remapped"):
        model.remap_self_pairs(True)
    elif variant == "backbone alone":
        model.shortlist = 0
        model._lite_all_items = lambda context: 0.0  # instance attribute: shadows the head for this check
    elif variant.startswith("shortlist "):
        model.shortlist = int(variant.split()[1])
    try:
        yield
    finally:
        model.remap_self_pairs(False)
        model.__dict__.pop("_lite_all_items", None)
        model.shortlist = shortlist


def history_check(trainer, test_data, shortlists=(), k: int = 10) -> dict:
    """``{variant: metrics}`` of a trained DMAE's test ranking: history items in the top ``k``,
    NDCG@k / Recall@k as RecBole ranks (``full_*``) and with the input history left out
    (``excl_*``), and full-sort milliseconds per user. ``shortlists``: extra lite rows, the head on
    the backbone's top-C."""
    from recbole_mm.bench.measure import protocol_metrics, rank_test_targets

    model = trainer.model
    variants = ["as trained", "self-pairs remapped"]
    if model.dmae_mode == "lite":
        variants += ["backbone alone"] + [f"shortlist {size}" for size in shortlists]
    results = {}
    for variant in variants:
        with _scoring(model, variant):
            rankings = rank_test_targets(trainer, test_data, k)
        results[variant] = {**protocol_metrics(rankings, k), "users": int(len(rankings.full)),
                            "infer_ms_per_user": 1000.0 * rankings.seconds / max(1, len(rankings.full))}
    return results


def history_table(results: dict, k: int = 10) -> str:
    lines = [f"| scoring | history items in top {k} | NDCG@{k} | Recall@{k} | NDCG@{k}, history left out | "
             f"Recall@{k}, history left out | infer ms/user |", "|---|---|---|---|---|---|---|"]
    for variant, row in results.items():
        lines.append(f"| {variant} | {row[f'history_in_top{k}']:.2f} | {row[f'full_ndcg@{k}']:.4f} | {row[f'full_recall@{k}']:.4f} | "
                     f"{row[f'excl_ndcg@{k}']:.4f} | {row[f'excl_recall@{k}']:.4f} | {row['infer_ms_per_user']:.3f} |")
    return "\n".join(lines)


def history_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.dmae history", description="History suppression check of a trained DMAE.")
    parser.add_argument("checkpoint", help="a DMAE checkpoint written by RecBole's trainer (saved/DMAE-*.pth)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--shortlists", default="", help="comma-separated shortlist sizes C to score too (lite; 0 = every item)")
    args = parser.parse_args(argv)
    import torch
    from recbole.quick_start import load_data_and_model
    from recbole.utils import get_trainer

    import recbole_mm  # noqa: F401  (registers the models, fixes checkpoint loading)

    if args.threads:
        torch.set_num_threads(args.threads)
    config, model, _, _, _, test_data = load_data_and_model(args.checkpoint)
    if config["model"] != "DMAE":
        raise SystemExit(f"{args.checkpoint} holds a {config['model']} model, not DMAE")
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.tot_item_num = test_data._dataset.item_num  # what trainer.evaluate sets before ranking
    shortlists = [int(size) for size in args.shortlists.split(",") if size.strip()]
    print(history_table(history_check(trainer, test_data, shortlists)))
    print(f"\nCheckpoint {args.checkpoint}: dmae_mode {model.dmae_mode}, dmae_shortlist {model.shortlist} ('as trained').")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["history"]:
        return history_main(argv[1:])
    return ablation.main(SUITE, argv)


if __name__ == "__main__":
    sys.exit(main())
