"""Running benchmark runs: one process per run, timeouts, a resumable cache, parallel jobs.

- :func:`run_model` trains and tests one (model, seed) (:func:`recbole_mm.bench.pipeline.train_and_evaluate`)
  in a fresh Python process by default, so a crash of any kind only fails that run and the peak
  memory belongs to that run alone.
- :class:`RunSpec` names one run; its :meth:`RunSpec.key` changes whenever anything that shapes the
  run changes: model, seed, config (data folders left out), batch cap, cold threshold, a fingerprint
  of the dataset files and, for plugin models, of the model's source and yaml (so an edited plugin
  model is re-run and a RecBole baseline is not). A change checked to train bit-identically
  (:mod:`recbole_mm.bench.equivalence`) is recorded as an alias of the older fingerprint, and a run
  cached under that one is found for the new (:func:`fingerprint_aliases`).
- :class:`RunCache` keeps one JSON row per finished run: ``<out>/<regime>/runs/<key>.json`` (with the
  run's log next to it), and reads the shipped rows of ``recbole_mm/bench/published/<regime>/runs/``
  too, so the tables of a checkout come back without retraining.
- :func:`execute` runs a list of specs (cached ones are skipped), ``jobs`` processes at a time. A
  run in flight keeps its per-epoch state in ``<out>/<regime>/runs/<key>.resume/`` (plugin models),
  so a killed invocation continues those runs from their last finished epoch; the folder goes once
  the run's row is written. Until then a report-only invocation gives such a run's progress
  (``in_flight`` in its ``missing`` row: epochs trained, best validation NDCG@10 so far).
- Several invocations may share one cache (e.g. one per core, each with its own list of runs): a
  process holds ``<key>.lock`` (an advisory ``flock``, released by the kernel however the process
  ends; the file goes once the run's row is written) while it trains a run, and another process that
  reaches the same run leaves it for last, then waits for it and reads its row instead of training it
  a second time on the same state.
"""

import ast
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one cache then takes runs from one invocation at a time
    fcntl = None

from recbole_mm.bench.measure import NOT_RUN
from recbole_mm.bench.pipeline import (PROGRESS_PREFIX, error_text, last_checkpoint, new_row, progress_text, run_progress, say,
                                       train_and_evaluate, uses_features)

DEFAULT_COLD_MAX_COUNT = 5
CACHE_VERSION = 2  # bumped when a row's content changes meaning (v2: both ranking protocols, per-user NDCG)
PUBLISHED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published")
_WORKER_CODE = "from recbole_mm.bench.runner import worker_main; worker_main()"
# config keys that locate files rather than shape a run (the data fingerprint stands for them)
_PATH_KEYS = ("data_path", "feature_path", "checkpoint_dir")
_LIVE = set()  # child processes of runs in flight (parallel jobs are stopped together on Ctrl-C)
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set on Ctrl-C: threads waiting for another process's run give up
CLAIM_POLL_S = 5.0  # how often a wait for another process's run checks the lock


# ----- one run, isolated ----------------------------------------------------------------------


def run_model(
    model: str,
    dataset: str,
    config_dict: dict,
    seed: int = 2020,
    data_path: Optional[str] = None,
    *,
    isolate: bool = True,
    max_batches: Optional[int] = None,
    cold_max_count: int = DEFAULT_COLD_MAX_COUNT,
    imports: Sequence[str] = (),
    timeout: Optional[float] = None,
    log_path: Optional[str] = None,
    progress: bool = True,
    threads: Optional[int] = None,
    state_dir: Optional[str] = None,
) -> dict:
    """Train ``model`` on ``dataset`` with ``config_dict`` and seed ``seed``; return one row.

    ``model`` is a RecBole model name (``SASRec``, ``FDSA``, ...) or a plugin model name
    (``SASRecMM``, ``MUFASA``, ...); ``config_dict`` overrides the model / dataset yaml and the
    plugin's ``properties/overall.yaml`` as in ``run_recbole_mm`` (``exclude_history: True`` ranks
    without the input history, for every model). ``data_path`` (optional) is the folder that holds
    ``<dataset>/``. Keyword-only options:

    - ``isolate``: run in a child process (default). Crashes of any kind become a failed row and
      ``peak_rss_mb`` is that run's own. ``False`` runs here (faster start; peak RSS is then the
      whole process's).
    - ``max_batches``: train on at most this many batches per epoch (smoke runs, quick profile).
    - ``cold_max_count``: a test user counts as cold when its target item is the target of at most
      this many training sequences.
    - ``imports``: modules to import first (e.g. one that registers your own model).
    - ``timeout``: seconds before an isolated run is killed and reported failed.
    - ``log_path``: where an isolated run's full output (RecBole's log) is written (appended to when
      the run resumes from ``state_dir``).
    - ``threads``: ``torch.set_num_threads`` for the run (default: torch's choice). On a shared
      CPU machine 1 thread can be several times faster than oversubscribed cores.
    - ``state_dir``: keep the run's per-epoch resumable state here and continue from it when it is
      there (plugin models and RecBole's generic-``Trainer`` baselines; baselines with a special
      trainer start over). ``resumed_at`` in the row lists the epochs a run continued from.

    The row (never raises for a model failure) has ``model, dataset, seed, status ('ok' |
    'failed'), error`` (``"ExceptionType: message"``, empty when ok), RecBole's test metrics under
    its lowercase names (``recall@10, ndcg@10, ...``, under the run's protocol), ``exclude_history``,
    ``best_valid`` (best validation NDCG@10), ``best_epoch``, ``valid_curve``, ``epochs``,
    ``train_steps``, ``epoch_seconds`` (each epoch's training time), ``train_s_per_epoch`` and
    ``train_ms_per_step`` (medians over epochs, so a paused epoch does not skew them), ``infer_ms_per_user``,
    ``test_users``, ``params``, ``peak_rss_mb``, ``uses_features``, the cold-item metrics, the
    :data:`recbole_mm.bench.measure.HISTORY_KEYS` (both protocols, repeat share), ``per_user``
    (NDCG@10 per test user under both protocols, and which users are the cold-item ones), ``device``,
    ``threads``, ``wall_s``, ``finished_at``.
    """
    job = {
        "model": model,
        "dataset": dataset,
        "config_dict": _absolute_paths(dict(config_dict or {})),
        "seed": int(seed),
        "data_path": os.path.abspath(data_path) if data_path else None,
        "max_batches": max_batches,
        "cold_max_count": cold_max_count,
        "imports": list(imports),
        "progress": progress,
        "threads": threads,
    }
    if state_dir:
        job["state_dir"] = os.path.abspath(state_dir)
    if not isolate:
        job["config_dict"].setdefault("state", "WARNING")  # RecBole's INFO log would flood this console
        return train_and_evaluate(**job)
    resuming = bool(state_dir) and last_checkpoint(state_dir) is not None
    return _run_isolated(job, timeout=timeout, log_path=log_path, progress=progress, append=resuming)


def _absolute_paths(config_dict: dict) -> dict:
    """Runs happen in a scratch folder, so relative data / feature paths are resolved now."""
    for key in ("data_path", "feature_path"):
        if isinstance(config_dict.get(key), str):
            config_dict[key] = os.path.abspath(config_dict[key])
    return config_dict


def _child_env() -> dict:
    """The parent's environment, with its cwd importable and a fixed hash seed."""
    env = dict(os.environ)
    paths = [os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONHASHSEED", "0")
    env["PYTHONUNBUFFERED"] = "1"  # progress lines reach the parent as they happen
    return env


def _run_isolated(job: dict, timeout: Optional[float], log_path: Optional[str], progress: bool, append: bool = False) -> dict:
    """Run ``job`` in ``python -c`` with a scratch cwd; relay progress, keep the output tail."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recbole_mm_bench_") as scratch:
        job_path, result_path = os.path.join(scratch, "job.json"), os.path.join(scratch, "result.json")
        with open(job_path, "w", encoding="utf-8") as handle:
            json.dump(job, handle)
        command = [sys.executable, "-c", _WORKER_CODE, job_path, result_path]
        process = subprocess.Popen(
            command, cwd=scratch, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        with _LIVE_LOCK:
            _LIVE.add(process)
        timed_out = threading.Event()
        timer = threading.Timer(timeout, lambda: (timed_out.set(), process.kill())) if timeout else None
        if timer:
            timer.start()
        try:
            tail = _relay_output(process, log_path, progress, append)
            returncode = process.wait()
        except BaseException:  # Ctrl-C: take the child down with us
            process.kill()
            process.wait()
            raise
        finally:
            if timer:
                timer.cancel()
            with _LIVE_LOCK:
                _LIVE.discard(process)
        if os.path.isfile(result_path):
            with open(result_path, encoding="utf-8") as handle:
                return json.load(handle)
    row = new_row(job["model"], job["dataset"], job["seed"])
    if timed_out.is_set():
        row["error"] = f"TimeoutError: killed after {timeout:g} s"
    else:
        last = "".join(tail).strip().splitlines()[-1:] or ["no output"]
        row["error"] = f"WorkerCrash: exit code {returncode}; last output: {last[0][:300]}"
    row["wall_s"] = time.perf_counter() - start
    row["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return row


def _relay_output(process, log_path: Optional[str], progress: bool, append: bool = False) -> List[str]:
    """Copy the child's output to ``log_path`` (after what it holds when ``append``); echo its progress
    lines; return the last lines."""
    tail = collections.deque(maxlen=40)
    log = open(log_path, "a" if append else "w", encoding="utf-8") if log_path else None
    try:
        for line in process.stdout:
            tail.append(line)
            if log:
                log.write(line)
                log.flush()
            if progress and line.startswith(PROGRESS_PREFIX):
                sys.stderr.write(line)
                sys.stderr.flush()
    finally:
        if log:
            log.close()
    return list(tail)


def worker_main() -> None:
    """Entry point of a child: ``python -c ... <job.json> <result.json>``."""
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path, encoding="utf-8") as handle:
        job = json.load(handle)
    row = train_and_evaluate(**job)
    with open(result_path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(row, handle)
    os.replace(result_path + ".tmp", result_path)


# ----- fingerprints ---------------------------------------------------------------------------


def _local_imports(path: str, prefixes: Sequence[str]) -> List[str]:
    """Modules under ``prefixes`` that the source file ``path`` imports."""
    with open(path, encoding="utf-8") as handle:
        try:
            tree = ast.parse(handle.read(), path)
        except SyntaxError:  # a file mid-edit: its bytes still count, the run itself will report the error
            return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in names if name.startswith(tuple(prefixes))]


_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the recbole_mm folder


def _module_file(name: str) -> Optional[str]:
    """The source file of a ``recbole_mm`` module, found without importing anything (None: not a module)."""
    parts = name.split(".")
    if parts[0] != "recbole_mm":
        return None
    base = os.path.join(_PACKAGE_ROOT, *parts[1:])
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def source_fingerprint(module: str, prefixes: Sequence[str] = ("recbole_mm.model", "recbole_mm.data")) -> str:
    """sha1 (12 hex) of ``module``'s source and of every module under ``prefixes`` it imports,
    transitively (a plugin model, its layers, its base class, the feature loading)."""
    files, queue = {}, [module]
    while queue:
        name = queue.pop()
        path = _module_file(name)
        if name in files or path is None:
            continue  # seen, or an attribute (``from package import name``) rather than a module
        files[name] = path
        queue += _local_imports(path, prefixes)
    digest = hashlib.sha1()
    for name in sorted(files):
        with open(files[name], "rb") as handle:
            digest.update(name.encode("utf-8") + b"\0" + handle.read())
    return digest.hexdigest()[:12]


def model_fingerprint(model: str) -> Optional[str]:
    """A plugin model's source and yaml defaults as one fingerprint; None for other models."""
    from recbole_mm import resources
    from recbole_mm.registry import PLUGIN_MODELS

    if model not in PLUGIN_MODELS:
        return None
    digest = hashlib.sha1(source_fingerprint(PLUGIN_MODELS[model]).encode("ascii"))
    yaml_path = os.path.join(resources.properties_dir(), "model", f"{model}.yaml")
    if os.path.isfile(yaml_path):
        with open(yaml_path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:12]


ALIASES_PATH = os.path.join(PUBLISHED_DIR, "key_aliases.json")


def read_aliases(path: Optional[str] = None) -> List[dict]:
    """Entries ``{"model", "fingerprint", "same_as", ...}`` of the alias file (none when it is absent)."""
    path = path or ALIASES_PATH
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["aliases"]


def write_aliases(entries: Sequence[dict], path: Optional[str] = None) -> None:
    path = path or ALIASES_PATH
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"aliases": list(entries)}, handle, indent=1)
        handle.write("\n")
    os.replace(path + ".tmp", path)


def fingerprint_aliases(model: str, fingerprint: Optional[str], path: Optional[str] = None,
                        entries: Optional[Sequence[dict]] = None) -> List[str]:
    """Older fingerprints of ``model`` whose code was checked to compute bit-identically to ``fingerprint``'s
    (:mod:`recbole_mm.bench.equivalence`), following the chain: a run cached under any of them is this run.
    ``entries``: the alias file's entries, already read (default: read ``path``)."""
    entries = [entry for entry in (read_aliases(path) if entries is None else entries) if entry["model"] == model]
    found, queue = [], [fingerprint]
    while queue:
        current = queue.pop()
        for entry in entries:
            if entry["fingerprint"] == current and entry["same_as"] not in found + [fingerprint]:
                found.append(entry["same_as"])
                queue.append(entry["same_as"])
    return found


# ----- the cache ------------------------------------------------------------------------------


class RunSpec(collections.namedtuple("RunSpec", "model dataset config seed point fingerprints")):
    """One run: model, dataset, full config, seed, its tuning point (``{key: value}`` or None) and
    ``fingerprints`` (``{"data": ..., "model": ...}``) that stand for its files."""

    def key(self, max_batches, cold_max_count) -> str:
        """File stem of the cached run (no absolute paths in it: the published cache is portable)."""
        config = {k: v for k, v in self.config.items() if k not in _PATH_KEYS}
        payload = json.dumps(
            {"v": CACHE_VERSION, "model": self.model, "dataset": self.dataset, "seed": self.seed, "config": config,
             "max_batches": max_batches, "cold": cold_max_count, "fingerprints": self.fingerprints},
            sort_keys=True, default=str,
        )
        return f"{self.model}_seed{self.seed}_{hashlib.sha1(payload.encode('utf-8')).hexdigest()[:10]}"

    def alias_keys(self, max_batches, cold_max_count, aliases: Optional[Sequence[dict]] = None) -> List[str]:
        """Keys of the same run under the model's older, bit-identical fingerprints (see :func:`fingerprint_aliases`;
        ``aliases``: the alias file's entries, already read)."""
        model_fp = (self.fingerprints or {}).get("model")
        return [self._replace(fingerprints=dict(self.fingerprints, model=older)).key(max_batches, cold_max_count)
                for older in (fingerprint_aliases(self.model, model_fp, entries=aliases) if model_fp else [])]


def _write_row(path: str, row: dict) -> None:
    """One key per line (long lists stay on their line): readable, diffable, compact."""
    text = "{\n" + ",\n".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in row.items()) + "\n}\n"
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def load_row(path: str) -> Optional[dict]:
    """A cached run that finished ok, or None (failed runs are retried)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            row = json.load(handle)
    except (OSError, ValueError):
        return None
    return row if row.get("status") == "ok" else None


class RunCache:
    """Finished runs of one table: ``runs_dir`` (written) and ``published_dir`` (read only)."""

    def __init__(self, runs_dir: str, published_dir: Optional[str] = None):
        self.runs_dir, self.published_dir = runs_dir, published_dir
        os.makedirs(runs_dir, exist_ok=True)

    def path(self, key: str) -> str:
        return os.path.join(self.runs_dir, key + ".json")

    def get(self, key: str) -> Optional[dict]:
        """The local row, else the published one."""
        row = load_row(self.path(key))
        if row is None and self.published_dir:
            row = load_row(os.path.join(self.published_dir, key + ".json"))
        return row

    def state_dir(self, key: str) -> str:
        """Where the run ``key`` keeps its resumable state while it is in flight."""
        return os.path.join(self.runs_dir, key + ".resume")

    def put(self, key: str, row: dict) -> None:
        _write_row(self.path(key), row)

    @contextlib.contextmanager
    def claim(self, key: str, wait: bool = False):
        """Hold the run ``key`` for this process: yields True while held, False when another process
        holds it (``wait=False``); ``wait=True`` polls until it is free, or raises KeyboardInterrupt
        once the invocation is being stopped. Without ``fcntl``, or on a filesystem without locks, every
        claim succeeds."""
        if fcntl is None:
            yield True
            return
        with open(self.lock_path(key), "a") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield False
                        return
                except OSError:  # a filesystem without locks (some network mounts): unguarded, as without fcntl
                    yield True
                    return
                if _STOPPING.wait(CLAIM_POLL_S):  # a blocking flock would keep a pool thread past Ctrl-C
                    raise KeyboardInterrupt
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def lock_path(self, key: str) -> str:
        return os.path.join(self.runs_dir, key + ".lock")

    def held_elsewhere(self, key: str) -> bool:
        """Whether another process is training the run ``key`` right now (no lock file: nobody ever was)."""
        if not os.path.exists(self.lock_path(key)):
            return False
        with self.claim(key) as held:
            return not held

    def publish(self, keys: Sequence[str]) -> int:
        """Copy the finished rows of ``keys`` into ``published_dir`` (JSON only); returns how many."""
        os.makedirs(self.published_dir, exist_ok=True)
        count = 0
        for key in keys:
            row = load_row(self.path(key))
            if row is not None:
                _write_row(os.path.join(self.published_dir, key + ".json"), row)
                count += 1
        return count


# ----- many runs ------------------------------------------------------------------------------


class _Clock:
    """Counts runs and estimates the time left from the runs actually executed (not cached)."""

    def __init__(self, total: int, jobs: int = 1):
        self.total, self.jobs, self.index, self.durations = total, jobs, 0, []
        self.lock = threading.Lock()

    def next(self, label: str) -> str:
        with self.lock:
            self.index += 1
            return f"[{self.index}/{self.total}] {label}"

    def ran(self, seconds: float) -> None:
        with self.lock:
            self.durations.append(seconds)

    def eta(self) -> str:
        if not self.durations or self.index >= self.total:
            return ""
        left = (self.total - self.index) * sum(self.durations) / len(self.durations) / self.jobs
        return f"; about {left / 60:.0f} min left"


def sharing_warnings(jobs: int, threads: Optional[int], on_gpu: bool, cores: Optional[int] = None) -> List[str]:
    """What ``jobs`` parallel runs of ``threads`` torch threads each will contend for, as warnings.

    CPU: more threads than cores was measured ~8x slower per epoch. GPU: without NVIDIA's MPS the runs'
    processes time-slice the one device: with 18 runs on one H200 a SASRec step (batch 512, L = 200) took
    ~320 ms, where a batch-32 step alone took 6 ms, so a few runs at a time finish sooner than many."""
    warnings = []
    cores = cores or os.cpu_count() or 1
    if jobs * (threads or 1) > cores and not on_gpu:
        warnings.append(f"{jobs} runs x {threads or 1} torch thread(s) exceed this machine's {cores} cores: every run "
                        f"slows down (use --threads 1 and --jobs <= {cores})")
    if on_gpu and jobs > 1:
        warnings.append(f"{jobs} runs share one GPU: without MPS (nvidia-cuda-mps-control -d) their processes time-slice "
                        "it, and each step waits for the others; a few runs at a time (--jobs 2-4) finish sooner")
    return warnings


def _runs_on_gpu(specs: Sequence["RunSpec"]) -> bool:
    """Whether RecBole will put runs on a GPU (``use_gpu`` defaults to True and is used when CUDA is there)."""
    if all(spec.config.get("use_gpu", True) is False for spec in specs):
        return False
    import torch

    return torch.cuda.is_available()


def execute(specs: Sequence[RunSpec], cache: RunCache, options: dict, *, jobs: int = 1, fresh: bool = False,
            run_missing: bool = True) -> List[dict]:
    """Rows of ``specs`` in their order: cached, run now (``jobs`` processes at a time) or, with
    ``run_missing=False``, a ``missing`` row. ``options``: :func:`run_model`'s keywords (``isolate``,
    ``max_batches``, ``cold_max_count``, ...). Each row gets its cache ``key`` and tuning ``point``."""
    jobs = max(1, int(jobs or 1)) if options.get("isolate", True) else 1  # in-process runs cannot overlap
    clock = _Clock(len(specs), jobs)
    _STOPPING.clear()
    if run_missing:
        for warning in sharing_warnings(jobs, options.get("threads"), _runs_on_gpu(specs)):
            say(f"warning: {warning}")

    prefixes = {}  # spec index -> its "[i/n] model seed" label
    key_args = (options.get("max_batches"), options.get("cold_max_count", DEFAULT_COLD_MAX_COUNT))
    aliases = read_aliases()  # once per invocation, not once per run

    def one(index: int, wait: bool = False) -> Optional[dict]:
        """Row of ``specs[index]``; None when another process is training it (``wait=False``: come back later)."""
        spec = specs[index]
        key = spec.key(*key_args)
        if index not in prefixes:
            prefixes[index] = clock.next(f"{spec.model} seed {spec.seed}" + (f" {_point_text(spec.point)}" if spec.point else ""))
        prefix = prefixes[index]
        row = None if fresh else cache.get(key)
        for older_key in ([] if fresh or row is not None else spec.alias_keys(*key_args, aliases)):
            row = cache.get(older_key)
            if row is not None:
                key = older_key  # the row stays where it is; report and publish name it by that key
                break
        if row is not None:
            say(f"{prefix}: cached ({key})")
        elif not run_missing:
            progress = run_progress(cache.state_dir(key))
            elsewhere = "; training in another process" if cache.held_elsewhere(key) else ""
            say(f"{prefix}: not run yet (report-only)" + (f"; in flight: {progress_text(progress)}" if progress else "") + elsewhere)
            row = dict(new_row(spec.model, spec.dataset, spec.seed), status="missing", error=NOT_RUN,
                       uses_features=uses_features(spec.model), in_flight=progress)
        else:
            with cache.claim(key, wait=wait) as held:
                if not held:
                    say(f"{prefix}: another process is training it; coming back to it after the rest")
                    return None
                row = None if fresh else cache.get(key)  # another process may have finished it meanwhile
                if row is not None:
                    say(f"{prefix}: finished by another process ({key})")
                else:
                    row = run_and_store(spec, key, prefix)
                if row["status"] == "ok":  # removed while held: a waiter on it then finds the row; a failed run keeps it
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(cache.lock_path(key))
        return dict(row, key=key, point=spec.point)

    def run_and_store(spec: RunSpec, key: str, prefix: str) -> dict:
        state_dir = cache.state_dir(key)
        if fresh:
            shutil.rmtree(state_dir, ignore_errors=True)
        say(f"{prefix}: {'resuming' if last_checkpoint(state_dir) else 'running'}")
        start = time.perf_counter()
        row = run_model(spec.model, spec.dataset, spec.config, spec.seed, log_path=os.path.join(cache.runs_dir, key + ".log"),
                        state_dir=state_dir, **options)
        clock.ran(time.perf_counter() - start)
        row["point"] = spec.point
        cache.put(key, row)
        if row["status"] == "ok":
            shutil.rmtree(state_dir, ignore_errors=True)
        outcome = f"ok in {row['wall_s']:.0f} s" if row["status"] == "ok" else f"FAILED: {row['error']}"
        say(f"{prefix}: {outcome}{clock.eta()}")
        return row

    def wait_for(index: int) -> dict:
        say(f"{prefixes[index]}: waiting for the other process")
        return one(index, wait=True)

    rows = map_stoppable(one, range(len(specs)), jobs)
    # runs another process was training, last: wait for each, then take its row (or resume it if that process died)
    waiting = [index for index, row in enumerate(rows) if row is None]
    for index, row in zip(waiting, map_stoppable(wait_for, waiting, jobs)):
        rows[index] = row
    return rows


def map_stoppable(function, items, jobs: int) -> list:
    """``[function(item) for item in items]``, ``jobs`` at a time, in order. Parallel calls run in
    threads that only wait on their runs' child processes; only the calling thread sees Ctrl-C /
    SIGTERM, so it kills the runs in flight too, and no queued call starts after it."""
    items = list(items)
    if jobs <= 1:
        return [function(item) for item in items]  # an interrupt reaches the one run directly
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        return list(pool.map(function, items))
    except KeyboardInterrupt:
        stop_live_runs()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def stop_live_runs() -> None:
    """Kill the worker processes of every isolated run in flight (on an interrupt, whichever thread waits on them),
    and end the waits for other processes' runs."""
    _STOPPING.set()
    with _LIVE_LOCK:
        for process in list(_LIVE):
            process.kill()


def failed_row(model: str, dataset: str, seed: int, error: Exception) -> dict:
    """The row of a run that could not even be configured."""
    return dict(new_row(model, dataset, seed), error=error_text(error), uses_features=uses_features(model))


def _point_text(point: Dict[str, object]) -> str:
    return ", ".join(f"{key} {value}" for key, value in point.items())
