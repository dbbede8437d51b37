"""Keep published runs through a change that computes exactly what the old code computed.

A cached run's key holds its plugin model's fingerprint (the source of the model, its layers and the
feature loading, plus its yaml), so any edit, a speed-up or a comment, makes every published run of
that model read "not run yet". This command decides whether the edit changed the computation:

    python -m recbole_mm.bench.equivalence --model MUFASA --against HEAD [--record]

It exports the model code of the git revision ``--against`` to a scratch folder, then trains the model
once from that tree and once from this checkout, each in a fresh interpreter, on the same small
planted dataset, for every configuration the benchmark runs it with (its yaml defaults and each
variant of ``bench.mufasa`` / ``bench.cammsr`` / ``bench.dmae`` that uses the model), with RecBole's
trainer and dropout on. The two trees are equivalent only when every epoch's loss, every trained
parameter and the full-ranking scores of a test batch are bit-identical. With ``--record`` an
equivalent pair is written to ``published/key_aliases.json`` (new fingerprint -> old fingerprint),
and the benchmark then finds runs cached under either; a difference in any bit records nothing.
Bit-identity on these data and configurations is evidence, not a proof, that real runs are unchanged;
the alias file says what was checked, against which revision, and when.
"""

import argparse
import datetime
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import List, Optional

from recbole_mm.bench.runner import fingerprint_aliases, read_aliases, write_aliases

PROBE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "equivalence_probe.py")
# a variant's grid keys move its tuning point and early stopping its epochs, not its code path
PROTOCOL_KEYS = ("learning_rate", "dropout", "stopping_step")
# small attention geometries, so that MUFASA's sparse branches all run on histories of 4-10 items; the second
# fills whole batches (short histories, batches of 4), which takes the layer's no-padding paths
PROBE_GEOMETRIES = {
    "MUFASA": [dict(window_size=4, block_size=2, top_blocks=2),
               dict(MAX_ITEM_LIST_LENGTH=4, window_size=2, block_size=2, top_blocks=1, train_batch_size=4)],
}
TINY_DATA = dict(n_users=60, n_items=40, n_clusters=8, seq_len=(6, 10), seed=1)


def probe_configs(model: str) -> List[dict]:
    """Overrides to train ``model`` with: its defaults and every benchmark variant of it, per probe geometry."""
    from recbole_mm.bench import cammsr, dmae, mufasa

    variants = [{}]
    for suite in (mufasa.SUITE, cammsr.SUITE, dmae.SUITE):
        for name, overrides in suite.variants.values():
            code_keys = {key: value for key, value in overrides.items() if key not in PROTOCOL_KEYS}
            if name == model and code_keys not in variants:
                variants.append(code_keys)
    return [{**geometry, **variant} for geometry in PROBE_GEOMETRIES.get(model, [{}]) for variant in variants]


def export_revision(revision: str, folder: str) -> str:
    """``recbole_mm/`` and ``properties/`` of a git revision of this checkout, extracted under ``folder``;
    returns the revision's commit id."""
    git = ["git", "-C", _checkout_root()]
    commit = subprocess.run(git + ["rev-parse", "--verify", f"{revision}^{{commit}}"], check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(git + ["archive", "--format=tar", commit, "recbole_mm", "properties"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return commit


def run_probe(tree: str, spec: dict, workdir: str) -> dict:
    """Train ``spec`` from the source tree ``tree`` in a fresh interpreter (working folder ``workdir``)."""
    with open(PROBE_SCRIPT, encoding="utf-8") as handle:
        code = handle.read()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", code, tree, json.dumps(spec)], cwd=workdir, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("EQUIVALENCE ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"probe of {tree} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("EQUIVALENCE "):])
    if not os.path.abspath(result["package"]).startswith(os.path.abspath(tree) + os.sep):
        raise RuntimeError(f"the probe imported recbole_mm from {result['package']}, not from {tree}")
    return result


def compare(model: str, old_tree: str, new_tree: str, configs: List[dict], epochs: int = 2) -> dict:
    """Train ``model`` from both trees under each config; ``{"equivalent", "old", "new", "differences"}``."""
    from recbole_mm.bench.planted import planted_config, write_planted_dataset

    with tempfile.TemporaryDirectory(prefix="recbole_mm_equivalence_") as scratch:
        planted = write_planted_dataset(os.path.join(scratch, "data"), name="probe", **TINY_DATA)
        base = planted_config(planted, os.path.join(scratch, "data"), epochs=epochs, train_batch_size=32,
                              eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10, checkpoint_dir=os.path.join(scratch, "saved"))
        spec = {"model": model, "dataset": "probe", "base": base, "configs": configs}
        old, new = (run_probe(tree, spec, scratch) for tree in (old_tree, new_tree))
    differences = [f"{json.dumps(a['overrides'])}: {field}" for a, b in zip(old["configs"], new["configs"])
                   for field in ("losses", "parameters", "scores") if a[field] != b[field]]
    return {"equivalent": not differences, "old": old["fingerprint"], "new": new["fingerprint"],
            "configs": len(configs), "differences": differences}


def record(model: str, outcome: dict, commit: str, path: Optional[str] = None) -> Optional[dict]:
    """Add ``new -> old`` to the alias file when ``outcome`` is equivalent and the fingerprints differ."""
    if not outcome["equivalent"] or outcome["old"] == outcome["new"]:
        return None
    if outcome["old"] in fingerprint_aliases(model, outcome["new"], path):
        return None
    entry = {"model": model, "fingerprint": outcome["new"], "same_as": outcome["old"], "checked_against": commit,
             "configs": outcome["configs"], "date": datetime.date.today().isoformat()}
    write_aliases(read_aliases(path) + [entry], path)
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.equivalence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="plugin model (MUFASA, DMAE, CAMMSR, SASRecMM)")
    parser.add_argument("--against", default="HEAD", help="git revision whose code the published runs were made with")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per configuration")
    parser.add_argument("--record", action="store_true", help="write the alias when every configuration is bit-identical")
    args = parser.parse_args(argv)
    configs = probe_configs(args.model)
    with tempfile.TemporaryDirectory(prefix="recbole_mm_revision_") as old_tree:
        try:
            commit = export_revision(args.against, old_tree)
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or error
            parser.error(f"cannot export revision {args.against!r} from a git checkout at {_checkout_root()}: {detail}")
        outcome = compare(args.model, old_tree, _checkout_root(), configs, args.epochs)
    print(f"{args.model}: {outcome['configs']} configurations, fingerprint {outcome['old']} ({commit[:10]}) -> "
          f"{outcome['new']} (this checkout): {'bit-identical' if outcome['equivalent'] else 'DIFFERENT'}")
    for line in outcome["differences"]:
        print(f"  differs: {line}")
    if args.record:
        entry = record(args.model, outcome, commit)
        print(f"recorded: {json.dumps(entry)}" if entry else "nothing recorded")
    return 0 if outcome["equivalent"] else 1


def _checkout_root() -> str:
    """The folder holding this ``recbole_mm`` package (a checkout's root, or site-packages)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(PROBE_SCRIPT)))


if __name__ == "__main__":
    sys.exit(main())
