"""``python -m recbole_mm.bench.attention``: fwd+bwd time and peak memory of SAL against dense attention.

Compares, at each sequence length and in one run:

* ``recbole``: RecBole's ``MultiHeadAttention`` fed the additive ``[B, 1, L, L]`` mask that
  ``SequentialRecommender.get_attention_mask`` builds (rebuilt each step, as SASRec does); the module also
  does its residual + LayerNorm.
* ``sdpa``: the same q/kv/out projections as SAL around ``scaled_dot_product_attention(is_causal=True)``
  (``SparseAttentionAlignment(attention="dense")`` without a padding mask).
* ``sal``: ``SparseAttentionAlignment`` with all three branches, full-length sequences passed with a
  ``key_padding_mask`` (the path MUFASA uses).
* ``flex``: the same layer with its window and block branches as ``flex_attention`` kernels
  (``FlexSparseAttention``; CUDA only, ``--impls sdpa,sal,flex``).

All dropouts are 0 and modules are in train mode; time = median (``--stat min``: minimum) of ``--repeats`` fwd+bwd steps after one
warm-up step. Beside each SAL/SDPA ratio stands the pattern's FLOP floor: the FLOPs SAL's sparse pattern
needs as a fraction of dense causal attention's, with the projections of both counted (``floor``) and for
the attention core alone (``core floor``), see :func:`flop_floor`; the gap between a time ratio and its
floor is what SAL loses to data movement and small kernels. Each (implementation, length) runs in its own subprocess. Peak memory is the OS view: the
process's resident-set high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs`` after the
warm-up, and the reported figure is ``VmHWM - VmRSS`` measured around the timed steps, i.e. the extra
resident memory the steps needed on top of model, inputs and interpreter (allocator slack included).
Linux only. Example::

    python -m recbole_mm.bench.attention --lengths 128,512,1024,2048 --batch 32 --repeats 3

``--train-step`` instead times one whole training step (forward, backward, Adam) of RecBole's SASRec,
SASRecMM and MUFASA (and MUFASA with window-only SAL) on full-length histories, all models in one process
and interleaved, so the ratios to SASRec hold on a shared machine::

    python -m recbole_mm.bench.attention --train-step --lengths 32,512,1024 --batch 32 --threads 1 --repeats 7 --stat min
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPLS = ("recbole", "sdpa", "sal", "flex")
SPARSE = {"sal": "SAL", "flex": "SAL-flex"}  # the implementations of SAL's pattern (with their labels), compared with the dense ones
DEFAULT_IMPLS = "recbole,sdpa,sal"  # flex needs CUDA
STATS = {"median": statistics.median, "min": min}  # --stat: summary of a configuration's repeated timings
TARGETS = {  # (baseline, length): (max time ratio, max memory ratio) that SAL aims for
    ("recbole", 1024): (0.1, 0.2),
    ("sdpa", 1024): (1.0, None),
    ("sdpa", 2048): (0.5, None),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="128,512,1024,2048", help="comma-separated sequence lengths")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stat", choices=sorted(STATS), default="median",
                        help="how the --repeats timings of one configuration are summarised (min: least disturbed by load)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (timed with synchronisation; "
                                                        "MB = peak extra allocated GPU memory)")
    parser.add_argument("--impls", default=DEFAULT_IMPLS, help=f"subset of {','.join(IMPLS)}")
    parser.add_argument("--out", help="also write the report to <out>/attention.md (where python -m recbole_mm.bench "
                                          "looks for it: results/attention/)")
    parser.add_argument("--interleave", action="store_true", help="time every implementation in this one process, "
                                                                    "interleaved (ratios hold under shared load; memory figures on CUDA only)")
    parser.add_argument("--dropout", type=float, default=0.0, help="attention dropout of every implementation (train mode)")
    parser.add_argument("--train-step", action="store_true", help="time whole training steps of SASRec, SASRecMM and "
                                                                     "MUFASA in one process instead")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "LENGTH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----- one measurement (runs in a subprocess) ----------------------------------------------------


def _status_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS


def build_step(impl, length, args):
    """A closure doing one forward + backward of ``impl`` on a ``[batch, length, hidden]`` input."""
    import torch

    from recbole_mm.model.layers.sparse_attention import SparseAttentionAlignment

    torch.manual_seed(0)
    x = torch.randn(args.batch, length, args.hidden, device=args.device)
    item_seq = torch.ones(args.batch, length, dtype=torch.long, device=args.device)  # full sequences, no padding
    if impl == "recbole":
        from recbole.model.layers import MultiHeadAttention

        module = MultiHeadAttention(args.heads, args.hidden, 0.0, args.dropout, 1e-12)

        def forward():
            mask = (item_seq != 0).unsqueeze(1).unsqueeze(2)  # get_attention_mask, unidirectional
            mask = torch.tril(mask.expand((-1, -1, length, -1)))
            mask = torch.where(mask, 0.0, -10000.0)
            return module(x, mask)

    elif impl == "sdpa":
        module = SparseAttentionAlignment(args.hidden, args.heads, attn_dropout=args.dropout, attention="dense")

        def forward():
            return module(x)

    elif impl == "sal":
        module = SparseAttentionAlignment(args.hidden, args.heads, args.window, args.block, args.top, attn_dropout=args.dropout)

        def forward():
            return module(x, item_seq != 0)

    elif impl == "flex":
        from recbole_mm.model.layers.flex_sparse_attention import FlexSparseAttention

        if not is_cuda(args.device):
            raise ValueError("flex runs on CUDA only: flex_attention has no backward on the CPU")
        module = FlexSparseAttention(args.hidden, args.heads, args.window, args.block, args.top, attn_dropout=args.dropout)

        def forward():
            return module(x, item_seq != 0)

    else:
        raise ValueError(f"unknown implementation {impl!r}")
    module.to(args.device).train()

    def step():
        module.zero_grad(set_to_none=True)
        forward().sum().backward()

    return step


def measure(impl, length, args):
    """``{"ms": fwd+bwd milliseconds (``--stat`` of the repeats), "peak_mb": extra resident MB}`` of one configuration."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    step = build_step(impl, length, args)
    # importing RecBole's models (sine.py) switches autograd anomaly detection on process-wide,
    # which NaN-checks every backward output; measure the attention, not that
    torch.autograd.set_detect_anomaly(False)
    step()  # warm-up: lazy initialisation, first-touch of the allocator
    peak = PeakMemory(args.device)
    peak.start()
    times = [timed(step, args.device) for _ in range(args.repeats)]
    return {"ms": STATS[args.stat](times), "peak_mb": peak.extra_mb(), "threads": torch.get_num_threads()}


def is_cuda(device) -> bool:
    import torch

    return torch.device(device).type == "cuda"


class PeakMemory:
    """Extra memory of the work between :meth:`start` and :meth:`extra_mb`: the CUDA allocator's peak
    on a GPU, the process's resident high-water mark (``VmHWM - VmRSS``, Linux) on a CPU."""

    def __init__(self, device):
        self.cuda = is_cuda(device)
        self.base_bytes = 0

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_bytes = torch.cuda.memory_allocated()
        else:
            _reset_peak()
            self.base_bytes = _status_kb("VmRSS") * 1024

    def extra_mb(self) -> float:
        import torch

        peak = torch.cuda.max_memory_allocated() if self.cuda else _status_kb("VmHWM") * 1024
        return (peak - self.base_bytes) / 2**20


def timed(call, device="cpu"):
    """Milliseconds of ``call()``, the device's queued work included (synchronised on CUDA)."""
    import torch

    sync = torch.cuda.synchronize if is_cuda(device) else (lambda: None)
    sync()
    start = time.perf_counter()
    call()
    sync()
    return (time.perf_counter() - start) * 1000


# ----- FLOP floor ----------------------------------------------------------------------------------


def flop_floor(length, hidden, heads, window, block, top):
    """``(core, total)``: forward FLOPs of SAL's sparse pattern over those of dense causal attention.

    Per query ``t`` (0-based) dense attention scores and mixes ``t + 1`` keys (``4 * d`` FLOPs a key).
    SAL needs: window ``min(w, t + 1)`` keys; block ``floor((t + 1) / l)`` compressed keys; select the
    own block up to ``t`` plus ``n - 1`` whole blocks where that many candidates exist (blocks ending
    at or before ``c*l - w`` for query block ``c``); and ranking the candidates once per block. ``total``
    adds the projections: dense q, k, v, out (``8 d^2`` a token); SAL q, 3 key/value pairs (the block
    pair on one pooled vector per block), out, the gates and the pooling. Counted, not measured: the
    smallest time ratio an implementation without wasted work could reach.
    """
    d = hidden
    dense_core = sparse_core = 0.0
    for t in range(length):
        c = t // block
        candidates = max(0, (c * block - window + 1) // block)  # blocks k with (k+1)*l - 1 <= c*l - w
        keys = min(window, t + 1) + (t + 1) // block + (t % block + 1) + min(top - 1, candidates) * block
        sparse_core += 4 * d * keys + (2 * d * candidates / block)  # ranking, shared by the block's queries
        dense_core += 4 * d * (t + 1)
    dense_proj = 8 * d * d * length
    sparse_proj = length * (2 * d * (6 * d + 3 * heads) + 4 * d * d / block + 2 * d)
    return sparse_core / dense_core, (sparse_core + sparse_proj) / (dense_core + dense_proj)


# ----- whole training steps ------------------------------------------------------------------------

STEP_MODELS = {  # label: (model, overrides)
    "SASRec": ("SASRec", {}),
    "SASRecMM": ("SASRecMM", {}),
    "MUFASA": ("MUFASA", {}),
    "MUFASA window-only": ("MUFASA", {"sal_branches": ["window"]}),
}


def build_models(length, args, workdir):
    """The models of :data:`STEP_MODELS` at ``MAX_ITEM_LIST_LENGTH = length`` on a small synthetic dataset."""
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset
    from recbole.utils import get_model, init_seed

    import recbole_mm  # noqa: F401  (registers the plugin's models and dataset class)
    from recbole_mm.bench.long_range import long_range_config, write_long_range_dataset

    planted = write_long_range_dataset(workdir, "steps", n_users=20, n_keys=100, n_noise=300, gap=(30, 30), episodes=2)
    models = {}
    for label, (name, overrides) in STEP_MODELS.items():
        config_dict = long_range_config(planted, workdir, MAX_ITEM_LIST_LENGTH=length, hidden_size=args.hidden,
                                        n_heads=args.heads, window_size=args.window, block_size=args.block,
                                        top_blocks=args.top, **overrides)
        config = Config(model=name, dataset="steps", config_dict=config_dict)
        init_seed(0, True)
        dataset = create_dataset(config)
        model = get_model(name)(config, dataset).to(args.device).train()
        models[label] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    return models


def step_batch(model, length, batch, seed=0):
    """``batch`` full-length random histories and targets."""
    import torch
    from recbole.data.interaction import Interaction

    generator = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, model.n_items, (batch, length), generator=generator)
    target = torch.randint(1, model.n_items, (batch,), generator=generator)
    return Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.full((batch,), length), model.POS_ITEM_ID: target})


def train_steps(lengths, args):
    """``{(label, length): ms}`` of one training step (``--stat`` of the repeats), the models interleaved in each repeat."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.autograd.set_detect_anomaly(False)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for length in lengths:
            models = build_models(length, args, workdir)
            torch.autograd.set_detect_anomaly(False)  # RecBole's sine.py switches it on at import
            batch = step_batch(next(iter(models.values()))[0], length, args.batch).to(args.device)
            times = {label: [] for label in models}
            for repeat in range(args.repeats + 1):  # the first round warms up
                for label, (model, optimizer) in models.items():
                    elapsed = timed(lambda: train_step(model, optimizer, batch), args.device)
                    if repeat:
                        times[label].append(elapsed)
            for label in models:
                results[(label, length)] = STATS[args.stat](times[label])
            print(f"# L={length}: " + ", ".join(f"{k} {results[(k, length)]:.1f} ms" for k in models), file=sys.stderr, flush=True)
    return results


def train_step(model, optimizer, batch):
    """One forward, backward and Adam step of ``model`` on ``batch``."""
    import torch

    loss = model.calculate_loss(batch)
    optimizer.zero_grad(set_to_none=True)
    (loss if torch.is_tensor(loss) else sum(loss)).backward()
    optimizer.step()


def train_step_report(results, lengths, args) -> str:
    labels = list(STEP_MODELS)
    header = ["L"] + [f"{label} ms" for label in labels] + [f"{label} / SASRec" for label in labels[1:]]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for length in lengths:
        base = results[("SASRec", length)]
        cells = [str(length)] + [f"{results[(label, length)]:.1f}" for label in labels]
        cells += [f"{results[(label, length)] / base:.3f}" for label in labels[1:]]
        rows.append("| " + " | ".join(cells) + " |")
    settings = (f"training step (forward, backward, Adam) on full-length histories, batch {args.batch}, hidden {args.hidden}, "
                f"{args.heads} heads, 2 layers, window {args.window}, block {args.block}, top {args.top}, "
                f"{args.threads or 'default'} thread(s), device {args.device}, {args.stat} of {args.repeats}, "
                f"models interleaved in one process")
    return settings + "\n\n" + "\n".join(rows)


# ----- driver --------------------------------------------------------------------------------------


def measure_interleaved(impls, length, args):
    """``{impl: {"ms": --stat of the repeats}}``: every implementation's steps alternate in this process."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {impl: build_step(impl, length, args) for impl in impls}
    torch.autograd.set_detect_anomaly(False)
    # the CUDA allocator's peak resets per step, so interleaving keeps each implementation's own;
    # the process's resident high-water mark would mix them, so the CPU gets no memory figures here
    on_gpu, peak = is_cuda(args.device), PeakMemory(args.device)
    times, peaks = {impl: [] for impl in impls}, {impl: 0.0 for impl in impls}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for impl, step in steps.items():
            if on_gpu:
                peak.start()
            elapsed = timed(step, args.device)
            if repeat:
                times[impl].append(elapsed)
                if on_gpu:
                    peaks[impl] = max(peaks[impl], peak.extra_mb())
    return {impl: {"ms": STATS[args.stat](t), "threads": torch.get_num_threads(), **({"peak_mb": peaks[impl]} if on_gpu else {})}
            for impl, t in times.items()}


def run_worker(impl, length, argv):
    """Measure in a fresh interpreter so peaks and allocator state do not leak between configurations."""
    command = [sys.executable, "-m", "recbole_mm.bench.attention", *argv, "--worker", impl, str(length)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {done.returncode}: {tail[0][:120]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(a, b):
    return a / b if a and b else float("nan")


def fmt(result, key, spec):
    return format(result[key], spec) if key in result else "n/a"


def table(results, lengths, impls, args):
    """Markdown table: ms and peak MB per implementation, each SAL implementation's ratios to the dense ones."""
    memory = any("peak_mb" in result for result in results.values())
    header = ["L"] + [f"{i} ms" for i in impls] + ([f"{i} MB" for i in impls] if memory else [])
    pairs = [(s, b) for s in SPARSE if s in impls for b in ("recbole", "sdpa") if b in impls]
    pairs += [("flex", "sal")] if {"flex", "sal"} <= set(impls) else []  # the flex kernels against SAL's own path
    header += [f"{SPARSE[s]}/{SPARSE.get(b, b)} time" for s, b in pairs]
    header += [f"{SPARSE[s]}/{SPARSE.get(b, b)} mem" for s, b in pairs] if memory else []
    floored = [s for s, b in pairs if b == "sdpa"]
    header += ["floor", "core floor"] + [f"{SPARSE[s]}/sdpa time / floor" for s in floored]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for length in lengths:
        got = {i: results[(i, length)] for i in impls}
        cells = [str(length)] + [fmt(got[i], "ms", ".1f") for i in impls] + ([fmt(got[i], "peak_mb", ".1f") for i in impls] if memory else [])
        cells += [f"{ratio(got[s].get('ms'), got[b].get('ms')):.3f}" for s, b in pairs]
        cells += [f"{ratio(got[s].get('peak_mb'), got[b].get('peak_mb')):.3f}" for s, b in pairs] if memory else []
        core, total = flop_floor(length, args.hidden, args.heads, args.window, args.block, args.top)
        cells += [f"{total:.3f}", f"{core:.3f}"]
        cells += [f"{ratio(got[s].get('ms'), got['sdpa'].get('ms')) / total:.2f}" for s in floored]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def crossover(results, lengths, baseline, sparse="sal"):
    """Smallest measured length from which ``sparse`` stays faster than ``baseline`` (None if never)."""
    faster = [ratio(results[(sparse, n)].get("ms"), results[(baseline, n)].get("ms")) < 1 for n in lengths]
    for index in range(len(lengths)):
        if all(faster[index:]):
            return lengths[index]
    return None


FLOOR_TARGET = (1.2, (2048, 4096))  # SAL/sdpa time at most this multiple of the FLOP floor at these lengths


def targets(results, args=None):
    lines = []
    factor, floor_lengths = FLOOR_TARGET
    for sparse in SPARSE:
        for length in floor_lengths:
            if args is None or (sparse, length) not in results or ("sdpa", length) not in results:
                continue
            _, floor = flop_floor(length, args.hidden, args.heads, args.window, args.block, args.top)
            got = ratio(results[(sparse, length)].get("ms"), results[("sdpa", length)].get("ms")) / floor
            lines.append(f"- {SPARSE[sparse]}/sdpa time at L={length}: {got:.2f}x its FLOP floor (target <= {factor}x) "
                         f"{'ok' if got <= factor else 'MISSED'}")
    for (baseline, length), (max_time, max_mem) in TARGETS.items():
        if ("sal", length) not in results or (baseline, length) not in results:
            continue
        sal, base = results[("sal", length)], results[(baseline, length)]
        time_ratio, mem_ratio = ratio(sal.get("ms"), base.get("ms")), ratio(sal.get("peak_mb"), base.get("peak_mb"))
        check = f"time {time_ratio:.3f} (target <= {max_time}) {'ok' if time_ratio <= max_time else 'MISSED'}"
        if max_mem is not None and "peak_mb" in sal:
            check += f", memory {mem_ratio:.3f} (target <= {max_mem}) {'ok' if mem_ratio <= max_mem else 'MISSED'}"
        lines.append(f"- SAL vs {baseline} at L={length}: {check}")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        impl, length = args.worker
        print(json.dumps(measure(impl, int(length), args)))
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.train_step:
        report = train_step_report(train_steps(lengths, args), lengths, args)
        print(report)
        return
    impls = [i for i in IMPLS if i in args.impls.split(",")]
    results = {}
    for length in lengths:
        if args.interleave:
            for impl, result in measure_interleaved(impls, length, args).items():
                results[(impl, length)] = result
            print(f"# L={length}: " + ", ".join(f"{i} {results[(i, length)]['ms']:.1f} ms" for i in impls), file=sys.stderr, flush=True)
            continue
        for impl in impls:
            results[(impl, length)] = run_worker(impl, length, argv)
            print(f"# L={length} {impl}: {results[(impl, length)]}", file=sys.stderr, flush=True)
    report = scaling_report(results, lengths, impls, args)
    print(report)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "attention.md"), "w", encoding="utf-8") as handle:
            handle.write(report + "\n")


def scaling_report(results, lengths, impls, args) -> str:
    """The settings line, the table, the crossover lengths and the targets, as markdown."""
    threads = next((r["threads"] for r in results.values() if "threads" in r), "?")
    if is_cuda(args.device):
        memory = "MB = peak extra allocated GPU memory of a step"
    else:
        memory = "no memory figures" if args.interleave else "MB = peak extra resident memory (VmHWM - VmRSS)"
    how = ("all implementations interleaved in one process; " if args.interleave
           else "each (implementation, length) in its own process; ") + memory
    parts = [f"fwd+bwd, batch {args.batch}, hidden {args.hidden}, {args.heads} heads, window {args.window}, "
             f"block {args.block}, top {args.top}, attention dropout {args.dropout}, device {args.device}, {threads} CPU threads, "
             f"{args.stat} of {args.repeats}; {how}", table(results, lengths, impls, args)]
    for sparse in SPARSE:
        for baseline in ("recbole", "sdpa"):
            if baseline in impls and sparse in impls:
                parts.append(f"{SPARSE[sparse]} faster than {baseline} from L = {crossover(results, lengths, baseline, sparse)} (of {lengths})")
    parts.append(targets(results, args))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
