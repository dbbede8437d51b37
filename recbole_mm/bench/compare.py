"""Train and evaluate models through RecBole's own pipeline and collect one comparable row each.

:func:`run_model` is the unit other benchmark scripts import: it trains one (model, seed) the way
``run_recbole`` does (``Config`` -> ``create_dataset`` -> ``data_preparation`` -> ``get_model`` ->
``get_trainer``), with the plugin's overall defaults active, and additionally records the
validation NDCG@10 of every epoch, the training time per epoch and per step, the full-sort
inference time per user, the trainable parameter count, the peak resident memory, and a
cold-item metric (Recall@10 / NDCG@10 over the test users whose target item is rare in training).

By default each run happens in a fresh Python process, so a crash (even a hard one) only fails
that run and the peak RSS belongs to that run alone. :func:`run_benchmark` loops models x seeds,
caches every finished run under ``<out>/<dataset>/runs/`` (a rerun skips it) and writes the report
(:mod:`recbole_mm.bench.report`).

Peak RSS is read from the run's own process (``VmHWM``), so the parent's memory never counts.
"""

import collections
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Dict, Iterable, List, Optional, Sequence

METRIC_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10")
COLD_KEYS = ("cold_recall@10", "cold_ndcg@10")
# Rankings against the model's input history: how many of the top 10 it already holds, and NDCG@10 /
# Recall@10 with those items left out of the ranking (the target is never left out).
HISTORY_KEYS = ("history_in_top10", "unseen_recall@10", "unseen_ndcg@10")
DEFAULT_COLD_MAX_COUNT = 5
PROGRESS_PREFIX = "[bench]"
_WORKER_CODE = "from recbole_mm.bench.compare import _worker_main; _worker_main()"


def _say(text: str) -> None:
    """One progress line on stderr (the parent relays a child's lines that carry the prefix)."""
    print(f"{PROGRESS_PREFIX} {text}", file=sys.stderr, flush=True)


def new_row(model: str, dataset: str, seed: int) -> dict:
    """A row with every key :func:`run_model` returns, before anything is known."""
    row = {
        "model": model,
        "dataset": dataset,
        "seed": seed,
        "status": "failed",
        "error": "",
        "uses_features": None,
        "best_valid": None,
        "best_epoch": None,
        "valid_curve": [],
        "epochs": 0,
        "train_steps": 0,
        "train_s_per_epoch": None,
        "train_ms_per_step": None,
        "infer_ms_per_user": None,
        "test_users": 0,
        "params": None,
        "peak_rss_mb": None,
        "cold_max_count": None,
        "cold_users": 0,
        "device": None,
        "threads": None,
        "wall_s": None,
        "finished_at": None,
    }
    row.update({key: None for key in METRIC_KEYS + COLD_KEYS})
    return row


# ----- the public unit ------------------------------------------------------------------------


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
) -> dict:
    """Train ``model`` on ``dataset`` with ``config_dict`` and seed ``seed``; return one row.

    ``model`` is a RecBole model name (``SASRec``, ``FDSA``, ...) or a plugin model name
    (``SASRecMM``, ``MUFASA``, ...); ``config_dict`` overrides the model / dataset yaml and the
    plugin's ``properties/overall.yaml`` as in ``run_recbole_mm``. ``data_path`` (optional) is the
    folder that holds ``<dataset>/``. Keyword-only options:

    - ``isolate``: run in a child process (default). Crashes of any kind become a failed row and
      ``peak_rss_mb`` is that run's own. ``False`` runs here (faster start; peak RSS is then the
      whole process's).
    - ``max_batches``: train on at most this many batches per epoch (smoke runs, quick profile).
    - ``cold_max_count``: a test user counts as cold when its target item is the target of at most
      this many training sequences.
    - ``imports``: modules to import first (e.g. one that registers your own model).
    - ``timeout``: seconds before an isolated run is killed and reported failed.
    - ``log_path``: where an isolated run's full output (RecBole's log) is written.
    - ``threads``: ``torch.set_num_threads`` for the run (default: torch's choice). On a shared
      CPU machine 1 thread can be several times faster than oversubscribed cores.

    The row (never raises for a model failure) has: ``model, dataset, seed, status ('ok' |
    'failed'), error`` (``"ExceptionType: message"``, empty when ok), the test metrics under
    RecBole's lowercase names (``recall@10, recall@20, ndcg@10, ndcg@20, mrr@10`` and whatever
    else RecBole reported), ``best_valid`` (best validation NDCG@10), ``best_epoch``,
    ``valid_curve`` (validation NDCG@10 per epoch), ``epochs`` (epochs trained), ``train_steps``,
    ``train_s_per_epoch``, ``train_ms_per_step``, ``infer_ms_per_user`` (full-sort scoring of the
    test users, model forward + scoring only), ``test_users``, ``params`` (trainable),
    ``peak_rss_mb``, ``uses_features``, ``cold_max_count, cold_users, cold_recall@10,
    cold_ndcg@10``, ``device``, ``threads``, ``wall_s`` and ``finished_at``.
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
    if not isolate:
        job["config_dict"].setdefault("state", "WARNING")  # RecBole's INFO log would flood this console
        return _train_and_evaluate(**job)
    return _run_isolated(job, timeout=timeout, log_path=log_path, progress=progress)


def _absolute_paths(config_dict: dict) -> dict:
    """Runs happen in a scratch folder, so relative data / feature paths are resolved now."""
    for key in ("data_path", "feature_path"):
        if isinstance(config_dict.get(key), str):
            config_dict[key] = os.path.abspath(config_dict[key])
    return config_dict


# ----- isolation: one child process per run ---------------------------------------------------


def _child_env() -> dict:
    """The parent's environment, with its cwd importable and a fixed hash seed."""
    env = dict(os.environ)
    paths = [os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONHASHSEED", "0")
    env["PYTHONUNBUFFERED"] = "1"  # progress lines reach the parent as they happen
    return env


def _run_isolated(job: dict, timeout: Optional[float], log_path: Optional[str], progress: bool) -> dict:
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
        timed_out = threading.Event()
        timer = threading.Timer(timeout, lambda: (timed_out.set(), process.kill())) if timeout else None
        if timer:
            timer.start()
        try:
            tail = _relay_output(process, log_path, progress)
            returncode = process.wait()
        except BaseException:  # Ctrl-C: take the child down with us
            process.kill()
            process.wait()
            raise
        finally:
            if timer:
                timer.cancel()
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


def _relay_output(process, log_path: Optional[str], progress: bool) -> List[str]:
    """Copy the child's output to ``log_path``; echo its progress lines; return the last lines."""
    tail = collections.deque(maxlen=40)
    log = open(log_path, "w", encoding="utf-8") if log_path else None
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


def _worker_main() -> None:
    """Entry point of a child: ``python -c ... <job.json> <result.json>``."""
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path, encoding="utf-8") as handle:
        job = json.load(handle)
    row = _train_and_evaluate(**job)
    with open(result_path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(row, handle)
    os.replace(result_path + ".tmp", result_path)


# ----- one run, in this process ---------------------------------------------------------------


@contextlib.contextmanager
def _scratch_run_dir(argv0: str):
    """RecBole writes ``log/``, ``log_tensorboard/`` and checkpoints into cwd and reads ``--key=value``
    from ``sys.argv``: run inside a throw-away folder with a bare argv."""
    previous_cwd, previous_argv = os.getcwd(), sys.argv
    scratch = tempfile.mkdtemp(prefix="recbole_mm_run_")
    os.chdir(scratch)
    sys.argv = [argv0]
    try:
        yield scratch
    finally:
        sys.argv = previous_argv
        os.chdir(previous_cwd)
        shutil.rmtree(scratch, ignore_errors=True)


def _train_and_evaluate(model, dataset, config_dict, seed, data_path, max_batches, cold_max_count, imports, progress, threads=None) -> dict:
    """Never raises for a model failure: the error is recorded in the row instead."""
    import importlib

    import torch

    import recbole_mm  # noqa: F401  (compat fixes + plugin registration)

    row = new_row(model, dataset, seed)
    row["cold_max_count"] = cold_max_count
    start = time.perf_counter()
    say = _say if progress else (lambda text: None)
    previous_threads = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        row["threads"] = torch.get_num_threads()
        for module in imports:
            importlib.import_module(module)
        config_dict = dict(config_dict, seed=int(seed))
        if data_path:
            config_dict["data_path"] = data_path
        with _scratch_run_dir(sys.argv[0]) as scratch:
            config_dict.setdefault("checkpoint_dir", os.path.join(scratch, "saved"))
            _fit_and_test(row, model, dataset, config_dict, max_batches, cold_max_count, say)
        row["status"] = "ok"
    except Exception as exc:  # the model (or its config) failed: report, don't propagate
        row["status"] = "failed"
        row["error"] = _error_text(exc)
        traceback.print_exc()
        say(f"{model} seed {seed}: FAILED: {row['error']}")
    finally:
        torch.set_num_threads(previous_threads)
    row["peak_rss_mb"] = peak_rss_mb()
    row["wall_s"] = time.perf_counter() - start
    row["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return row


def _error_text(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0][:300] if message else ''}".rstrip(": ")


_RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def check_model_name(model: str) -> None:
    """Raise a clear error for a name that is neither a RecBole model nor a registered plugin model
    (RecBole's own lookup would end in an unrelated ImportError of an optional package)."""
    import recbole.model

    from recbole_mm.registry import registered_models

    base = os.path.dirname(recbole.model.__file__)
    for package in _RECBOLE_MODEL_PACKAGES:
        module = f"recbole.model.{package}.{model.lower()}"
        if module in sys.modules or os.path.isfile(os.path.join(base, package, f"{model.lower()}.py")):
            return
    raise ValueError(
        f"unknown model '{model}': not a RecBole model nor a registered plugin model "
        f"({', '.join(sorted(registered_models()))}); register your own with --import MODULE"
    )


def _build(model, dataset, config_dict):
    """RecBole's quick-start steps up to a ready trainer (plugin overall defaults active)."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    from recbole_mm.registry import plugin_overall_defaults

    check_model_name(model)
    with plugin_overall_defaults():
        config = Config(model=model, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    return config, net, trainer, (train_data, valid_data, test_data)


def _fit_and_test(row, model, dataset, config_dict, max_batches, cold_max_count, say) -> None:
    """Train with RecBole's trainer (recording each epoch), test the best checkpoint, time scoring."""
    config, net, trainer, (train_data, valid_data, test_data) = _build(model, dataset, config_dict)
    row["device"] = str(config["device"])
    row["params"] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    row["uses_features"] = uses_features(model, net)
    label = f"{model} seed {config['seed']}"
    say(f"{label}: {len(train_data)} train batches/epoch" + (f" (capped at {max_batches})" if max_batches else "") + f", device {row['device']}")
    recorder = _EpochRecorder(trainer, max_batches, label, config["epochs"], say)
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=recorder.on_valid)
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    row.update({key: float(value) for key, value in test_result.items()})
    row.update(recorder.summary())
    row["best_valid"] = float(best_valid)
    curve = row["valid_curve"]
    row["best_epoch"] = curve.index(max(curve)) + 1 if curve else None  # RecBole keeps the first best
    ranks, targets, infer_s, history = rank_test_targets(trainer, test_data)
    row["test_users"] = int(len(ranks))
    row["infer_ms_per_user"] = 1000.0 * infer_s / max(1, len(ranks))
    row.update(cold_metrics(ranks, targets, train_item_counts(train_data, config), cold_max_count))
    row.update(history_metrics(history))
    say(
        f"{label}: done: test ndcg@10 {row.get('ndcg@10', float('nan')):.4f}, recall@10 {row.get('recall@10', float('nan')):.4f}, "
        f"{row['train_s_per_epoch']:.1f} s/epoch, {row['infer_ms_per_user']:.3f} ms/user"
    )


def uses_features(model_name: str, net=None) -> bool:
    """Whether a model reads item features (multimodal plugin models, FDSA / SASRecF categories)."""
    from recbole_mm.bench.profiles import CATEGORY_FEATURE_MODELS
    from recbole_mm.registry import PLUGIN_MODELS

    if model_name in CATEGORY_FEATURE_MODELS or model_name in PLUGIN_MODELS:
        return True
    if net is None:
        return False
    from recbole_mm.model.abstract import MultimodalSequentialRecommender

    return isinstance(net, MultimodalSequentialRecommender)


class _CountingLoader:
    """A training DataLoader seen through a cap on batches per epoch, counting what it yields."""

    def __init__(self, loader, limit: Optional[int], on_batch=None):
        self._loader, self._limit, self._on_batch = loader, limit, on_batch
        self.count = 0

    def __iter__(self):
        self.count = 0
        for batch in self._loader:
            if self._limit is not None and self.count >= self._limit:
                break
            self.count += 1
            if self._on_batch:
                self._on_batch(self.count, len(self))
            yield batch

    def __len__(self):
        total = len(self._loader)
        return total if self._limit is None else min(total, self._limit)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _EpochRecorder:
    """Wraps ``trainer._train_epoch`` (time, steps, batch cap) and collects the validation curve."""

    HEARTBEAT_S = 30.0  # in-epoch progress at most this often

    def __init__(self, trainer, max_batches, label, max_epochs, say):
        self.trainer, self.max_batches, self.label, self.max_epochs, self.say = trainer, max_batches, label, max_epochs, say
        self.epoch_seconds: List[float] = []
        self.epoch_steps: List[int] = []
        self.valid_curve: List[float] = []
        self._epoch_start = 0.0
        self._last_heartbeat = 0.0
        original = trainer._train_epoch

        def timed_train_epoch(train_data, epoch_idx, loss_func=None, show_progress=False):
            loader = _CountingLoader(train_data, self.max_batches, self._heartbeat)
            self._epoch_start = self._last_heartbeat = time.perf_counter()
            loss = original(loader, epoch_idx, loss_func=loss_func, show_progress=show_progress)
            self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
            self.epoch_steps.append(loader.count)
            return loss

        trainer._train_epoch = timed_train_epoch

    def _heartbeat(self, done, total):
        now = time.perf_counter()
        if now - self._last_heartbeat >= self.HEARTBEAT_S:
            self._last_heartbeat = now
            self.say(f"{self.label}: epoch {len(self.epoch_seconds) + 1}: batch {done}/{total} ({now - self._epoch_start:.0f} s)")

    def on_valid(self, epoch_idx, valid_score):
        self.valid_curve.append(float(valid_score))
        loss = self.trainer.train_loss_dict.get(epoch_idx)
        self.say(
            f"{self.label}: epoch {epoch_idx + 1}/{self.max_epochs}: train {self.epoch_seconds[-1]:.1f} s "
            f"({self.epoch_steps[-1]} steps, loss {loss if loss is None else round(float(loss), 4)}), "
            f"valid ndcg@10 {valid_score:.4f} (best {max(self.valid_curve):.4f})"
        )

    def summary(self) -> dict:
        seconds, steps = sum(self.epoch_seconds), sum(self.epoch_steps)
        return {
            "valid_curve": list(self.valid_curve),
            "epochs": len(self.epoch_seconds),
            "train_steps": steps,
            "train_s_per_epoch": seconds / max(1, len(self.epoch_seconds)),
            "train_ms_per_step": 1000.0 * seconds / max(1, steps),
        }


# ----- measurements ---------------------------------------------------------------------------


TIMING_REPEATS = 3  # full-sort scoring runs per test batch; the fastest counts


def rank_test_targets(trainer, test_data):
    """Rank of each test target among all items, scored exactly as RecBole's full-sort evaluation.

    Returns ``(ranks, target_items, seconds, history)``: 0-based ranks (items scoring strictly
    higher), the target item ids, the time spent in scoring, and :func:`history_rankings` of the
    same scores (``None`` for models without an item-sequence input). The first batch is run once
    untimed to warm up, and each batch counts with the fastest of ``TIMING_REPEATS`` runs, so a
    load spike from another process on a shared machine does not land in the figure. Uses the
    trainer's ``_full_sort_batch_eval``, so the model's ``full_sort_predict`` (or RecBole's predict
    fallback) and RecBole's padding mask are what is measured.
    """
    import torch

    trainer.model.eval()
    device = trainer.device
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ranks, targets, seconds, history = [], [], 0.0, []
    sequence_field = getattr(trainer.model, "ITEM_SEQ", None)
    with torch.no_grad():
        for index, batch in enumerate(test_data):
            if index == 0:
                trainer._full_sort_batch_eval(batch)
            fastest = float("inf")
            for _ in range(TIMING_REPEATS):
                synchronize()
                start = time.perf_counter()
                interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
                synchronize()
                fastest = min(fastest, time.perf_counter() - start)
            seconds += fastest
            rows, items = positive_u.to(scores.device), positive_i.to(scores.device)
            target_scores = scores[rows, items]
            ranks.append((scores[rows] > target_scores.unsqueeze(1)).sum(dim=1).cpu())
            targets.append(positive_i.cpu())
            if sequence_field is not None and sequence_field in interaction:
                history.append(history_rankings(scores, rows, items, interaction[sequence_field].to(scores.device)))
    empty = torch.zeros(0, dtype=torch.long)
    history = tuple(torch.cat(part) for part in zip(*history)) if history else None
    if not ranks:
        return empty, empty, seconds, history
    return torch.cat(ranks), torch.cat(targets), seconds, history


def history_rankings(scores, rows, items, item_seq, k: int = 10):
    """How each test ranking treats the user's input history ``item_seq [B, L]`` (0 = padding).

    Returns ``(history_in_top_k [n], unseen_ranks [n])`` for the targets ``(rows, items)``: how many
    history items are among the top ``k``, and the target's 0-based rank once history items (other
    than the target itself) are removed from the ranking. Sequential models score every item, the
    ones the user just interacted with included, and on data without repeats those slots are lost.
    """
    import torch

    row_scores = scores[rows]
    seen = torch.zeros(row_scores.shape, dtype=torch.bool, device=scores.device).scatter_(1, item_seq[rows].long(), True)
    seen[:, 0] = False  # the padding id is never a candidate
    in_top = seen.gather(1, row_scores.topk(min(k, row_scores.shape[1]), dim=1).indices).sum(dim=1)
    targets = torch.arange(len(rows), device=scores.device)
    seen[targets, items] = False
    unseen_ranks = (row_scores.masked_fill(seen, float("-inf")) > row_scores[targets, items].unsqueeze(1)).sum(dim=1)
    return in_top.cpu(), unseen_ranks.cpu()


def history_metrics(history, k: int = 10) -> dict:
    """The ``HISTORY_KEYS`` fields of a run from :func:`history_rankings` (``{}`` when not measured)."""
    if history is None or history[0].numel() == 0:
        return {}
    in_top, unseen_ranks = history
    metrics = rank_metrics(unseen_ranks, k)
    return {
        f"history_in_top{k}": float(in_top.double().mean()),
        f"unseen_recall@{k}": metrics[f"recall@{k}"],
        f"unseen_ndcg@{k}": metrics[f"ndcg@{k}"],
    }


def train_item_counts(train_data, config):
    """How often each item is the target of a training sequence (its training interactions)."""
    import torch

    dataset = train_data._dataset
    items = dataset.inter_feat[config["ITEM_ID_FIELD"]]
    return torch.bincount(torch.as_tensor(items).long(), minlength=dataset.item_num)


def rank_metrics(ranks, k: int = 10) -> Dict[str, float]:
    """Recall@k and NDCG@k of single-target rankings given 0-based target ranks."""
    import torch

    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    if ranks.numel() == 0:
        return {f"recall@{k}": None, f"ndcg@{k}": None}
    hit = ranks < k
    gain = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
    return {f"recall@{k}": float(hit.double().mean()), f"ndcg@{k}": float(gain.mean())}


def cold_metrics(ranks, targets, item_counts, cold_max_count: int, k: int = 10) -> dict:
    """Recall@k / NDCG@k over the test users whose target is in at most ``cold_max_count`` training sequences."""
    cold = item_counts[targets] <= cold_max_count
    metrics = rank_metrics(ranks[cold], k)
    return {
        "cold_max_count": cold_max_count,
        "cold_users": int(cold.sum()),
        f"cold_recall@{k}": metrics[f"recall@{k}"],
        f"cold_ndcg@{k}": metrics[f"ndcg@{k}"],
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM on Linux, else ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


# ----- many runs: cache, loop, report ---------------------------------------------------------


def run_key(model: str, seed: int, config_dict: dict, max_batches, cold_max_count, salt: Optional[str] = None) -> str:
    """File stem of a cached run: changes whenever anything that shapes the run changes
    (``salt``: e.g. a fingerprint of generated data)."""
    payload = json.dumps(
        {"model": model, "seed": seed, "config": config_dict, "max_batches": max_batches, "cold": cold_max_count, "salt": salt},
        sort_keys=True,
        default=str,
    )
    return f"{model}_seed{seed}_{hashlib.sha1(payload.encode('utf-8')).hexdigest()[:10]}"


def load_cached(path: str) -> Optional[dict]:
    """A cached run that finished ok, or None (failed runs are retried)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            row = json.load(handle)
    except (OSError, ValueError):
        return None
    return row if row.get("status") == "ok" else None


def _write_json(path: str, row: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(row, handle, indent=1)
    os.replace(path + ".tmp", path)


def run_benchmark(
    dataset: str,
    models: Sequence[str],
    profile,
    *,
    out_dir: str = "results",
    data_path: Optional[str] = None,
    base_config: Optional[dict] = None,
    overrides: Optional[dict] = None,
    features: Optional[List[str]] = None,
    cold_max_count: int = DEFAULT_COLD_MAX_COUNT,
    imports: Iterable[str] = (),
    threads: Optional[int] = None,
    isolate: bool = True,
    fresh: bool = False,
    run_missing: bool = True,
    timeout: Optional[float] = None,
    progress: bool = True,
    title: Optional[str] = None,
    notes: Sequence[str] = (),
    cache_salt: Optional[str] = None,
) -> dict:
    """Run every (model, seed) of ``profile`` on ``dataset`` and write the report.

    Config of a run, later wins: ``base_config`` (dataset settings: data_path, load_col,
    modalities, ...), the profile's protocol plus the model's required keys
    (:func:`recbole_mm.bench.profiles.model_config`), then ``overrides`` (the user's explicit
    changes, applied to every model alike). Finished runs are cached in
    ``<out_dir>/<dataset>/runs/<model>_seed<seed>_<hash>.json`` and reused unless ``fresh``;
    ``run_missing=False`` only reports what is cached; ``cache_salt`` (e.g. a fingerprint of
    generated data) is part of every run's cache key. Returns the report's paths.
    """
    from recbole_mm.bench import report
    from recbole_mm.bench.profiles import model_config

    results_dir = os.path.join(out_dir, dataset)
    runs_dir = os.path.join(results_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    seeds = profile.seed_list()
    options = dict(data_path=data_path, isolate=isolate, max_batches=profile.max_batches, cold_max_count=cold_max_count,
                   imports=list(imports), timeout=timeout, progress=progress, threads=threads)
    clock = _Clock(len(models) * len(seeds))
    rows, interrupted = [], False
    try:
        for model in models:
            try:
                config = _run_config(base_config, model_config(model, profile, features), overrides)
                config_error = None
            except ValueError as exc:
                config, config_error = None, _error_text(exc)
            for seed in seeds:
                prefix = clock.next(f"{model} seed {seed}")
                if config_error:
                    rows.append(dict(new_row(model, dataset, seed), error=config_error, uses_features=uses_features(model)))
                    _say(f"{prefix}: FAILED before running: {config_error}")
                    continue
                run = _RunSpec(model, dataset, config, seed, runs_dir, cache_salt)
                rows.append(_one_run(run, prefix, options, fresh=fresh, run_missing=run_missing, clock=clock))
    except KeyboardInterrupt:
        interrupted = True
        _say("interrupted: writing the report of the runs finished so far (cached runs are kept)")
    settings = {
        "dataset": dataset,
        "profile": profile.as_dict(),
        "seeds": seeds,
        "models": list(models),
        "features": list(features or []),
        "cold_max_count": cold_max_count,
        "overrides": dict(overrides or {}),
        "isolated": isolate,
        "threads": threads,
    }
    paths = report.write_report(results_dir, rows, list(models), settings, title=title, notes=notes)
    _say(f"report: {paths['markdown']}")
    if interrupted:
        raise KeyboardInterrupt
    return paths


def _run_config(base_config, model_keys, overrides) -> dict:
    """Dataset settings, then the protocol and the model's keys, then the user's overrides."""
    config = dict(base_config or {})
    config.update(model_keys)
    config.update(overrides or {})
    return config


class _Clock:
    """Counts runs and estimates the time left from the runs actually executed (not cached)."""

    def __init__(self, total: int):
        self.total, self.index, self.durations = total, 0, []

    def next(self, label: str) -> str:
        self.index += 1
        return f"[{self.index}/{self.total}] {label}"

    def ran(self, seconds: float) -> None:
        self.durations.append(seconds)

    def eta(self) -> str:
        if not self.durations:
            return ""
        left = (self.total - self.index) * sum(self.durations) / len(self.durations)
        return f"; about {left / 60:.0f} min left" if self.index < self.total else ""


class _RunSpec(collections.namedtuple("_RunSpec", "model dataset config seed runs_dir salt")):
    """One (model, seed) of a benchmark and where its cache file lives."""

    def key(self, options) -> str:
        keyed = _keyed_config(self.config, options["data_path"])
        return run_key(self.model, self.seed, keyed, options["max_batches"], options["cold_max_count"], self.salt)


def _one_run(run: _RunSpec, prefix, options, fresh, run_missing, clock) -> dict:
    """A cached row, or a fresh run (written to the cache), with progress lines around it."""
    key = run.key(options)
    path = os.path.join(run.runs_dir, key + ".json")
    cached = None if fresh else load_cached(path)
    if cached is not None:
        _say(f"{prefix}: cached ({os.path.basename(path)})")
        return cached
    if not run_missing:
        _say(f"{prefix}: not run yet (report-only)")
        return dict(new_row(run.model, run.dataset, run.seed), status="missing", error="not run yet", uses_features=uses_features(run.model))
    _say(f"{prefix}: running")
    start = time.perf_counter()
    row = run_model(run.model, run.dataset, run.config, run.seed, log_path=os.path.join(run.runs_dir, key + ".log"), **options)
    clock.ran(time.perf_counter() - start)
    _write_json(path, row)
    outcome = f"ok in {row['wall_s']:.0f} s" if row["status"] == "ok" else f"FAILED: {row['error']}"
    _say(f"{prefix}: {outcome}{clock.eta()}")
    return row


def _keyed_config(config: dict, data_path: Optional[str]) -> dict:
    """The config as it identifies a run: data folders by their resolved path."""
    keyed = _absolute_paths(dict(config))
    if data_path:
        keyed["data_path"] = os.path.abspath(data_path)
    return keyed
