"""``python -m recbole_mm.bench.scale``: a million-item catalogue through the feature store and full ranking.

Writes a synthetic dataset into a temporary folder: ``scale.text.npy`` (``--items`` x ``--dim``
float32 random rows, written block by block) with its ``.ids``, an ``.item`` file listing every item
(so RecBole's vocabulary holds the whole catalogue) and a small ``.inter`` file. Then, each in a
fresh subprocess so one phase's memory does not leak into the next:

* ``align``: :func:`recbole_mm.data.features.load_item_features` -- the path
  ``MultimodalSequentialDataset`` takes -- aligns the file to a shuffled internal id order (RecBole
  numbers items by first appearance, not file order). Time, and peak resident memory: the process's
  high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after the imports) against the
  resident size before the call, compared with the file size. A sample of rows is checked.
* ``score``, once per model of ``--models`` (default SASRecMM and DMAE): stock RecBole
  ``create_dataset`` + the model on the same folder, then ``full_sort_predict`` of ``--batch`` users
  over all items with ``score_chunk_size = --chunk`` (DMAE: its head rescores the backbone's
  top-``dmae_shortlist``, ``dmae_chunk_size`` at a time; the item-item cache is off at this size).
  Time per call (median of ``--repeats`` after a warm-up), user-item scores per second, and the extra
  resident memory the call needed, next to the size a ``[B, N, d]`` tensor would have. Every model
  after the first is also given as a ratio to the first (time and extra memory).

Linux only (``/proc``). Example, single-threaded::

    OMP_NUM_THREADS=1 python -m recbole_mm.bench.scale --items 1000000 --dim 384
    OMP_NUM_THREADS=1 python -m recbole_mm.bench.scale --items 300000 --batch 128 --models SASRecMM,DMAE
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

DATASET = "scale"
BLOCK_ROWS = 65536


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue size (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=384, help="feature dim (default 384)")
    parser.add_argument("--users", type=int, default=2000, help="users in the .inter file (default 2000)")
    parser.add_argument("--batch", type=int, default=64, help="users per full_sort_predict call (default 64)")
    parser.add_argument("--chunk", type=int, default=65536, help="score_chunk_size (default 65536)")
    parser.add_argument("--hidden", type=int, default=64, help="SASRecMM hidden_size (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed full_sort_predict calls (default 3)")
    parser.add_argument("--models", default="SASRecMM,DMAE", help="comma-separated models to score (default SASRecMM,DMAE)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the scored models (yaml value), repeatable")
    parser.add_argument("--workdir", default=None, help="folder for the generated dataset (default: a temporary folder, removed)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--phase", choices=("align", "score"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="SASRecMM", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----- the generated dataset -------------------------------------------------------------------


def item_token(index: int) -> str:
    return f"i{index}"


def write_dataset(data_path: str, items: int, dim: int, users: int, seed: int = 0) -> str:
    """Write ``<data_path>/scale/``: feature files, ``.item`` and ``.inter``; returns the .npy path."""
    from recbole_mm.feature_files import feature_paths, write_ids

    folder = os.path.join(data_path, DATASET)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    npy_path, ids_path = feature_paths(folder, DATASET, "text")
    matrix = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.float32, shape=(items, dim))
    for start in range(0, items, BLOCK_ROWS):
        stop = min(items, start + BLOCK_ROWS)
        matrix[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    matrix.flush()
    del matrix
    tokens = [item_token(i) for i in range(items)]
    write_ids(ids_path, tokens)
    with open(os.path.join(folder, f"{DATASET}.item"), "w", encoding="utf-8") as handle:
        handle.write("item_id:token\n")
        handle.write("".join(f"{token}\n" for token in tokens))
    with open(os.path.join(folder, f"{DATASET}.inter"), "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(users):
            clicks = rng.integers(items, size=int(rng.integers(5, 21)))
            handle.writelines(f"u{user}\t{item_token(item)}\t{step}\n" for step, item in enumerate(clicks))
    return npy_path


# ----- measurements inside a phase's own process -----------------------------------------------


def proc_status_kib(key: str) -> int:
    with open("/proc/self/status", "r", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def reset_peak() -> None:
    """Set the resident high-water mark (VmHWM) to the current resident size."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def mib(kib: float) -> float:
    return kib / 1024.0


def phase_align(args) -> dict:
    """Align the whole file to a shuffled id order through the feature store."""
    from recbole_mm.data.features import load_item_features
    from recbole_mm.feature_files import feature_paths

    folder = os.path.join(args.data_path, DATASET)
    npy_path = feature_paths(folder, DATASET, "text")[0]
    order = np.random.default_rng(1).permutation(args.items)
    item_tokens = np.array(["[PAD]"] + [item_token(i) for i in order], dtype=object)  # like field2id_token
    config = {"dataset": DATASET, "feature_path": folder, "data_path": args.data_path, "modalities": ["text"],
              "modality_dims": {"text": args.dim}, "missing_feature": "zero", "normalize_features": False}
    before = proc_status_kib("VmRSS")
    reset_peak()
    start = time.perf_counter()
    features = load_item_features(config, item_tokens)["text"]
    seconds = time.perf_counter() - start
    peak = proc_status_kib("VmHWM")
    sample = np.random.default_rng(2).integers(1, args.items + 1, size=min(1000, args.items))
    raw = np.load(npy_path, mmap_mode="r")
    correct = bool(np.array_equal(features.matrix[sample], raw[order[sample - 1]])) and features.matched == args.items
    size = os.path.getsize(npy_path) / 1024.0
    return {"file_mib": mib(size), "align_s": seconds, "rss_before_mib": mib(before), "peak_rss_mib": mib(peak),
            "extra_rss_mib": mib(peak - before), "extra_over_file": (peak - before) / size, "peak_over_file": peak / size,
            "rows_checked": int(sample.size), "rows_correct": correct}


def phase_score(args) -> dict:
    """Stock RecBole dataset + ``args.model`` over the catalogue, then chunked full_sort_predict."""
    import torch
    import yaml
    from recbole.config import Config
    from recbole.data import create_dataset
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model

    import recbole_mm  # noqa: F401  (registers the plugin models and the dataset class)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    overrides = {key: yaml.safe_load(value) for key, _, value in (pair.partition("=") for pair in args.overrides)}
    config = Config(model=args.model, dataset=DATASET, config_dict={
        "data_path": args.data_path, "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp", "modalities": ["text"],
        "hidden_size": args.hidden, "inner_size": 2 * args.hidden, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 20,
        "score_chunk_size": args.chunk, "state": "WARNING", "show_progress": False, "save_dataset": False,
        "save_dataloaders": False, "log_wandb": False, "train_neg_sample_args": None, "device": "cpu", "use_gpu": False,
        **overrides,
    })
    start = time.perf_counter()
    dataset = create_dataset(config)
    dataset_s = time.perf_counter() - start
    model = get_model(args.model)(config, dataset).eval()
    n_items = model.n_items
    generator = torch.Generator().manual_seed(0)
    interaction = Interaction({
        model.ITEM_SEQ: torch.randint(1, n_items, (args.batch, 20), generator=generator),
        model.ITEM_SEQ_LEN: torch.randint(1, 21, (args.batch,), generator=generator),
    })
    times = []
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)  # warm-up
        del scores
        before = proc_status_kib("VmRSS")
        reset_peak()
        for _ in range(args.repeats):
            start = time.perf_counter()
            scores = model.full_sort_predict(interaction)
            times.append(time.perf_counter() - start)
            del scores
        peak = proc_status_kib("VmHWM")
    seconds = statistics.median(times)
    return {"model": args.model, "n_items": n_items - 1, "dataset_s": dataset_s, "score_s": seconds, "users": args.batch,
            "items_per_s": (n_items - 1) / seconds, "scores_per_s": args.batch * (n_items - 1) / seconds,
            "extra_rss_mib": mib(peak - before), "scores_mib": args.batch * n_items * 4 / 2**20,
            "bnd_mib": args.batch * n_items * args.hidden * 4 / 2**20, "rss_mib": mib(proc_status_kib("VmRSS"))}


# ----- driver --------------------------------------------------------------------------------


def run_phase(phase: str, args, data_path: str, model: str = "SASRecMM") -> dict:
    command = [sys.executable, "-m", "recbole_mm.bench.scale", "--phase", phase, "--data-path", data_path,
               "--items", str(args.items), "--dim", str(args.dim), "--batch", str(args.batch), "--chunk", str(args.chunk),
               "--hidden", str(args.hidden), "--repeats", str(args.repeats), "--model", model]
    command += [part for pair in args.overrides for part in ("--set", pair)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"phase {phase} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(args, generate_s: float, align: dict, scores: list) -> str:
    rows = [
        ("catalogue", f"{args.items:,} items x {args.dim} float32 = {align['file_mib']:.0f} MiB (written in {generate_s:.1f} s)"),
        ("align: time", f"{align['align_s']:.2f} s (load_item_features, shuffled id order; {align['rows_checked']} rows checked: {'ok' if align['rows_correct'] else 'WRONG'})"),
        ("align: peak RSS", f"{align['peak_rss_mib']:.0f} MiB = {align['peak_over_file']:.2f}x file (process, imports included)"),
        ("align: extra RSS", f"{align['extra_rss_mib']:.0f} MiB = {align['extra_over_file']:.2f}x file (over the {align['rss_before_mib']:.0f} MiB before the call; target <= 1.2x)"),
    ]
    first = scores[0]
    for score in scores:
        name = score["model"]
        rows += [
            (f"{name}: dataset build", f"{score['dataset_s']:.1f} s (RecBole create_dataset incl. alignment)"),
            (f"{name}: full_sort_predict", f"{score['score_s']:.3f} s per {score['users']} users over {score['n_items']:,} items, score_chunk_size {args.chunk}"),
            (f"{name}: throughput", f"{score['items_per_s']:,.0f} items/s per batch; {score['scores_per_s']:,.0f} user-item scores/s"),
            (f"{name}: scoring extra RSS", f"{score['extra_rss_mib']:.0f} MiB (output [B, N] alone: {score['scores_mib']:.0f} MiB; a [B, N, d] tensor: {score['bnd_mib']:,.0f} MiB)"),
        ]
        if score is not first:
            rows.append((f"{name} vs {first['model']}", f"time {score['score_s'] / first['score_s']:.2f}x, extra RSS "
                         f"{score['extra_rss_mib'] - first['extra_rss_mib']:+.0f} MiB"))
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    return "\n".join(lines + [f"| {name.ljust(width)} | {value} |" for name, value in rows])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.phase:
        result = phase_align(args) if args.phase == "align" else phase_score(args)
        print(json.dumps(result))
        return result
    workdir = args.workdir or tempfile.mkdtemp(prefix="recbole_mm_scale_")
    try:
        start = time.perf_counter()
        write_dataset(workdir, args.items, args.dim, args.users)
        generate_s = time.perf_counter() - start
        align = run_phase("align", args, workdir)
        scores = [run_phase("score", args, workdir, model.strip()) for model in args.models.split(",") if model.strip()]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(args, generate_s, align, scores))
    result = {"items": args.items, "dim": args.dim, "chunk": args.chunk, "batch": args.batch, "threads": os.environ.get("OMP_NUM_THREADS"),
              "generate_s": generate_s, "align": align, "score": scores[0], "scores": {score["model"]: score for score in scores}}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
