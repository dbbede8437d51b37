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

``--long-range`` instead runs the planted long-range recall check (:func:`long_range`): SASRec, MUFASA and
MUFASA with window-only SAL learn to recall a key item ~L positions back, at the same L::

    python -m recbole_mm.bench.mufasa --long-range --length 512 --steps 150
"""

import argparse
import sys

from recbole_mm.bench import ablation

ALL_FOUR_LOSSES = {"cga_weight": 0.1, "col_weight": 0.1, "sim_weight": 0.05, "dist_weight": 0.01}  # their former defaults

SUITE = ablation.AblationSuite(
    name="mufasa",
    description=__doc__,
    full_variant="MUFASA",
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
        "+ all four losses": ("MUFASA", ALL_FOUR_LOSSES),
        "w/o SAL (dense)": ("MUFASA", {"attention": "dense"}),
        "window-only SAL": ("MUFASA", {"sal_branches": ["window"]}),
        "selection may overlap the window": ("MUFASA", {"select_outside_window": False}),
        "w/o fusion (ID only)": ("MUFASA", {"use_mfl": False}),
        "fusion init normal": ("MUFASA", {"fusion_init": "normal"}),
        "w/o SAL (dense) + all four losses": ("MUFASA", {"attention": "dense", **ALL_FOUR_LOSSES}),
        "MUFASA patience 10": ("MUFASA", {"stopping_step": 10}),  # early stopping 10 evaluations late
    },
)


# ----- planted long-range recall ------------------------------------------------------------------

LONG_RANGE_VARIANTS = {  # label: (model, overrides)
    "SASRec": ("SASRec", {}),
    "MUFASA": ("MUFASA", {}),
    "MUFASA window-only": ("MUFASA", {"sal_branches": ["window"]}),
    "MUFASA w/o select": ("MUFASA", {"sal_branches": ["window", "block"]}),
}


def long_range_args(argv):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.mufasa --long-range",
                                     description="planted long-range recall: SASRec vs MUFASA vs window-only SAL")
    parser.add_argument("--long-range", action="store_true")
    parser.add_argument("--length", type=int, default=512, help="history length L (the key sits in its first --lead items)")
    parser.add_argument("--lead", type=int, default=8, help="the key is at one of positions 0..lead")
    parser.add_argument("--keys", type=int, default=16, help="keys (and answers): chance is 1/keys")
    parser.add_argument("--key-run", type=int, default=16, help="the key repeated this many times in a row (an interest block)")
    parser.add_argument("--noise", type=int, default=200, help="filler items")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.0, help="hidden and attention dropout of every model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(LONG_RANGE_VARIANTS))
    return parser.parse_args(argv)


def long_range(argv) -> str:
    """Each variant learns ``[noise.., key, noise x ~L, cue] -> answer(key)`` (the key far outside any window)
    by Adam on fresh batches; reports test accuracy (chance ``1/keys``) and ms per step, one process.

    Examples come from :func:`recbole_mm.bench.long_range.recall_examples`; every training example is
    informative (the whole sequence is one episode), so this isolates whether attention reaches the key.
    """
    import tempfile

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model, init_seed

    from recbole_mm.bench.attention import timed, train_step
    from recbole_mm.bench.long_range import long_range_config, recall_examples, write_long_range_dataset

    args = long_range_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mufasa_long_") as workdir:
        planted = write_long_range_dataset(workdir, "longrange", n_users=20, n_keys=args.keys, n_noise=args.noise,
                                           gap=(20, 20), episodes=1, seed=args.seed)
        for label in args.variants.split(","):
            name, overrides = LONG_RANGE_VARIANTS[label]
            config = Config(model=name, dataset="longrange", config_dict=long_range_config(
                planted, workdir, MAX_ITEM_LIST_LENGTH=args.length, hidden_size=args.hidden, inner_size=2 * args.hidden,
                hidden_dropout_prob=args.dropout, attn_dropout_prob=args.dropout, **overrides))
            init_seed(args.seed, True)
            dataset = create_dataset(config)
            device = config["device"]  # RecBole's choice: the GPU where there is one
            model = get_model(name)(config, dataset).to(device)
            torch.autograd.set_detect_anomaly(False)
            to_ids = lambda a: torch.as_tensor(dataset.token2id("item_id", [str(x + 1) for x in a.reshape(-1)])).view(a.shape)  # noqa: E731
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
            lengths = torch.full((args.batch,), args.length)
            step_ms = []
            for step in range(args.steps):
                seq, target = recall_examples(args.keys, args.noise, args.length, args.batch, args.lead,
                                             seed=args.seed * 100003 + step, key_run=args.key_run)
                batch = Interaction({model.ITEM_SEQ: to_ids(seq), model.ITEM_SEQ_LEN: lengths, model.POS_ITEM_ID: to_ids(target)}).to(device)
                model.train()
                step_ms.append(timed(lambda: train_step(model, optimizer, batch), device))
            seq, target = recall_examples(args.keys, args.noise, args.length, 256, args.lead, seed=10**6 + args.seed, key_run=args.key_run)
            model.eval()
            with torch.no_grad():
                scores = model.full_sort_predict(Interaction({model.ITEM_SEQ: to_ids(seq), model.ITEM_SEQ_LEN: torch.full((256,), args.length)}).to(device))
            accuracy = float((scores.argmax(1).cpu() == to_ids(target)).float().mean())
            rows.append((label, accuracy, sorted(step_ms)[len(step_ms) // 2]))
            print(f"# {label}: accuracy {accuracy:.3f}", file=sys.stderr, flush=True)
    table = ["| variant | test accuracy | ms / step |", "|---|---|---|"]
    table += [f"| {label} | {accuracy:.3f} | {ms:.0f} |" for label, accuracy, ms in rows]
    settings = (f"L {args.length}, a run of {args.key_run} key items starting in the first {args.lead + 1} positions, {args.keys} keys (chance {1 / args.keys:.3f}), "
                f"{args.noise} filler items, {args.steps} Adam steps of {args.batch} (lr {args.lr}), hidden {args.hidden}, dropout {args.dropout}, "
                f"seed {args.seed}, {args.threads} thread(s), device {device}, window 32, block 16, top 4")
    return "\n".join(table) + f"\n\nSettings: {settings}."


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--long-range" in argv:
        print(long_range(argv))
        return 0
    return ablation.main(SUITE, argv)


if __name__ == "__main__":
    sys.exit(main())
