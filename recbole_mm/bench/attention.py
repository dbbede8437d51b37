"""``python -m recbole_mm.bench.attention``: fwd+bwd time and peak memory of SAL against dense attention.

Compares, at each sequence length and in one run:

* ``recbole``: RecBole's ``MultiHeadAttention`` fed the additive ``[B, 1, L, L]`` mask that
  ``SequentialRecommender.get_attention_mask`` builds (rebuilt each step, as SASRec does); the module also
  does its residual + LayerNorm.
* ``sdpa``: the same q/kv/out projections as SAL around ``scaled_dot_product_attention(is_causal=True)``
  (``SparseAttentionAlignment(attention="dense")`` without a padding mask).
* ``sal``: ``SparseAttentionAlignment`` with all three branches, full-length sequences passed with a
  ``key_padding_mask`` (the path MUFASA uses).

All dropouts are 0 and modules are in train mode; time = median of ``--repeats`` fwd+bwd steps after one
warm-up step. Each (implementation, length) runs in its own subprocess. Peak memory is the OS view: the
process's resident-set high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs`` after the
warm-up, and the reported figure is ``VmHWM - VmRSS`` measured around the timed steps, i.e. the extra
resident memory the steps needed on top of model, inputs and interpreter (allocator slack included).
Linux only. Example::

    python -m recbole_mm.bench.attention --lengths 128,512,1024,2048 --batch 32 --repeats 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

IMPLS = ("recbole", "sdpa", "sal")
TARGETS = {  # (baseline, length): (max time ratio, max memory ratio) from the project brief
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"subset of {','.join(IMPLS)}")
    parser.add_argument("--out", help="also write the report to <out>/attention.md (where python -m recbole_mm.bench "
                                          "looks for it: results/attention/)")
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
    x = torch.randn(args.batch, length, args.hidden)
    item_seq = torch.ones(args.batch, length, dtype=torch.long)  # full sequences, no padding
    if impl == "recbole":
        from recbole.model.layers import MultiHeadAttention

        module = MultiHeadAttention(args.heads, args.hidden, 0.0, 0.0, 1e-12)

        def forward():
            mask = (item_seq != 0).unsqueeze(1).unsqueeze(2)  # get_attention_mask, unidirectional
            mask = torch.tril(mask.expand((-1, -1, length, -1)))
            mask = torch.where(mask, 0.0, -10000.0)
            return module(x, mask)

    elif impl == "sdpa":
        module = SparseAttentionAlignment(args.hidden, args.heads, attention="dense")

        def forward():
            return module(x)

    elif impl == "sal":
        module = SparseAttentionAlignment(args.hidden, args.heads, args.window, args.block, args.top)

        def forward():
            return module(x, item_seq != 0)

    else:
        raise ValueError(f"unknown implementation {impl!r}")
    module.train()

    def step():
        module.zero_grad(set_to_none=True)
        forward().sum().backward()

    return step


def measure(impl, length, args):
    """``{"ms": median fwd+bwd milliseconds, "peak_mb": extra resident MB}`` of one configuration."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    step = build_step(impl, length, args)
    # importing RecBole's models (sine.py) switches autograd anomaly detection on process-wide,
    # which NaN-checks every backward output; measure the attention, not that
    torch.autograd.set_detect_anomaly(False)
    step()  # warm-up: lazy initialisation, first-touch of the allocator
    _reset_peak()
    base_kb = _status_kb("VmRSS")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    peak_kb = _status_kb("VmHWM") - base_kb
    return {"ms": statistics.median(times), "peak_mb": peak_kb / 1024, "threads": torch.get_num_threads()}


# ----- driver --------------------------------------------------------------------------------------


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


def table(results, lengths, impls):
    """Markdown table: ms and peak MB per implementation, SAL/recbole and SAL/sdpa ratios."""
    header = ["L"] + [f"{i} ms" for i in impls] + [f"{i} MB" for i in impls]
    comparisons = [b for b in ("recbole", "sdpa") if b in impls and "sal" in impls]
    header += [f"SAL/{b} time" for b in comparisons] + [f"SAL/{b} mem" for b in comparisons]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for length in lengths:
        got = {i: results[(i, length)] for i in impls}
        cells = [str(length)] + [fmt(got[i], "ms", ".1f") for i in impls] + [fmt(got[i], "peak_mb", ".1f") for i in impls]
        sal = got.get("sal", {})
        cells += [f"{ratio(sal.get('ms'), got[b].get('ms')):.3f}" for b in comparisons]
        cells += [f"{ratio(sal.get('peak_mb'), got[b].get('peak_mb')):.3f}" for b in comparisons]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def crossover(results, lengths, baseline):
    """Smallest measured length from which SAL stays faster than ``baseline`` (None if never)."""
    faster = [ratio(results[("sal", n)].get("ms"), results[(baseline, n)].get("ms")) < 1 for n in lengths]
    for index in range(len(lengths)):
        if all(faster[index:]):
            return lengths[index]
    return None


def targets(results):
    lines = []
    for (baseline, length), (max_time, max_mem) in TARGETS.items():
        if ("sal", length) not in results or (baseline, length) not in results:
            continue
        sal, base = results[("sal", length)], results[(baseline, length)]
        time_ratio, mem_ratio = ratio(sal.get("ms"), base.get("ms")), ratio(sal.get("peak_mb"), base.get("peak_mb"))
        check = f"time {time_ratio:.3f} (target <= {max_time}) {'ok' if time_ratio <= max_time else 'MISSED'}"
        if max_mem is not None:
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
    impls = [i for i in IMPLS if i in args.impls.split(",")]
    results = {}
    for length in lengths:
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
    parts = [f"fwd+bwd, batch {args.batch}, hidden {args.hidden}, {args.heads} heads, window {args.window}, "
             f"block {args.block}, top {args.top}, {threads} CPU threads, median of {args.repeats}; "
             f"MB = peak extra resident memory (VmHWM - VmRSS)", table(results, lengths, impls)]
    for baseline in ("recbole", "sdpa"):
        if baseline in impls and "sal" in impls:
            parts.append(f"SAL faster than {baseline} from L = {crossover(results, lengths, baseline)} (of {lengths})")
    parts.append(targets(results))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
