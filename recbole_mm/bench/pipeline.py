"""One benchmark run through RecBole's own pipeline, in this process: build, fit, test, measure.

:func:`train_and_evaluate` trains one (model, seed) the way ``run_recbole`` does (``Config`` ->
``create_dataset`` -> ``data_preparation`` -> ``get_model`` -> ``get_trainer``), with the plugin's
overall defaults active and the trainer made history-aware (``exclude_history``, for RecBole's
trainers too), and returns one row: RecBole's test metrics, the validation NDCG@10 of every epoch,
time per epoch and per step, full-sort inference time per user, trainable parameters, peak resident
memory, cold-item metrics, both ranking protocols and per-user NDCG@10 (:mod:`.measure`).
Process isolation, caching and timeouts are :mod:`.runner`'s.

With a ``state_dir``, a run whose trainer writes per-epoch resumable checkpoints keeps them there,
with its epoch records; the same call after a kill continues from the last finished epoch and ends
as the uninterrupted run would. That is :class:`recbole_mm.trainer.MultimodalTrainer`, which the
plugin models use and which also stands in for RecBole's generic ``Trainer`` (SASRec, GRU4Rec and
the other baselines that use it: the same training, plus the checkpoints). Baselines with a
trainer of their own (knowledge-graph, tree and other special trainers) start over.
"""

import contextlib
import glob
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from typing import List, Optional

from recbole_mm.bench.measure import (
    COLD_KEYS,
    HISTORY_KEYS,
    METRIC_KEYS,
    PER_USER_KEY,
    cold_mask,
    cold_metrics,
    cpu_capability,
    machine_id,
    peak_rss_mb,
    per_user_ndcg,
    protocol_metrics,
    rank_test_targets,
    train_item_counts,
)
from recbole_mm.bench.profiles import CATEGORY_FEATURE_MODELS

PROGRESS_PREFIX = "[bench]"


def say(text: str) -> None:
    """One progress line on stderr (the runner relays a child's lines that carry the prefix)."""
    print(f"{PROGRESS_PREFIX} {text}", file=sys.stderr, flush=True)


INTERRUPTED = ("[bench] interrupted: finished runs are cached, runs in flight keep their resume state; "
               "the same command continues")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, ``kill`` (SIGTERM) stops a benchmark as Ctrl-C does: the runner takes the runs
    in flight down with it (their worker processes included, none is left orphaned) and the finished
    runs stay cached. Only the main thread can hold a signal handler; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(command, *args) -> int:
    """``command(*args)`` run as a command line's body: an interrupt (Ctrl-C, or ``kill``, see
    :func:`sigterm_as_interrupt`) ends it with exit status 130 and one line, not a traceback."""
    try:
        with sigterm_as_interrupt():
            return command(*args)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def new_row(model: str, dataset: str, seed: int) -> dict:
    """A row with every key :func:`train_and_evaluate` returns, before anything is known."""
    row = {
        "model": model,
        "dataset": dataset,
        "seed": seed,
        "status": "failed",
        "error": "",
        "uses_features": None,
        "exclude_history": None,
        "best_valid": None,
        "best_epoch": None,
        "valid_curve": [],
        "resumed_at": [],
        "epochs": 0,
        "train_steps": 0,
        "epoch_seconds": [],
        "epoch_cpu": [],
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
        "machine": None,
        "torch": None,
        "wall_s": None,
        "finished_at": None,
    }
    row.update({key: None for key in METRIC_KEYS + COLD_KEYS + HISTORY_KEYS})
    row[PER_USER_KEY] = None
    return row


def error_text(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0][:300] if message else ''}".rstrip(": ")


@contextlib.contextmanager
def scratch_run_dir(argv0: str):
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


def train_and_evaluate(model, dataset, config_dict, seed, data_path, max_batches, cold_max_count, imports, progress, threads=None,
                       state_dir=None) -> dict:
    """Never raises for a model failure: the error is recorded in the row instead. ``state_dir``:
    where the run's resumable state lives (see the module docstring); None trains in a scratch folder."""
    import importlib

    import torch

    import recbole_mm  # noqa: F401  (compat fixes + plugin registration)

    row = new_row(model, dataset, seed)
    row["cold_max_count"] = cold_max_count
    start = time.perf_counter()
    report = say if progress else (lambda text: None)
    previous_threads = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        row["threads"] = torch.get_num_threads()
        row["machine"] = machine_id()
        row["torch"] = torch.__version__  # with epoch_cpu: whether two runs ran the same kernels
        for module in imports:
            importlib.import_module(module)
        config_dict = dict(config_dict, seed=int(seed))
        if data_path:
            config_dict["data_path"] = data_path
        with scratch_run_dir(sys.argv[0]) as scratch:
            config_dict.setdefault("checkpoint_dir", os.path.join(scratch, "saved"))
            if state_dir:
                config_dict = resumable_config(config_dict, state_dir)
            _fit_and_test(row, model, dataset, config_dict, max_batches, cold_max_count, report, state_dir)
        row["status"] = "ok"
    except Exception as exc:  # the model (or its config) failed: report, don't propagate
        row["status"] = "failed"
        row["error"] = error_text(exc)
        traceback.print_exc()
        report(f"{model} seed {seed}: FAILED: {row['error']}")
    finally:
        torch.set_num_threads(previous_threads)
    row["peak_rss_mb"] = peak_rss_mb()
    row["wall_s"] = time.perf_counter() - start
    row["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return row


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


def build(model, dataset, config_dict):
    """RecBole's quick-start steps up to a ready trainer (plugin overall defaults active; the trainer
    RecBole picks, with :class:`recbole_mm.evaluation.HistoryExclusion` mixed in; for RecBole's
    generic ``Trainer``, the plugin's subclass of it, so a baseline's run resumes too)."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    from recbole_mm.evaluation import with_history_exclusion
    from recbole_mm.registry import plugin_overall_defaults
    from recbole_mm.trainer import MultimodalTrainer

    check_model_name(model)
    with plugin_overall_defaults():
        config = Config(model=model, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if trainer_class is Trainer:
        trainer_class = MultimodalTrainer
    trainer = with_history_exclusion(trainer_class)(config, net)
    return config, net, trainer, (train_data, valid_data, test_data)


RECORDS_FILE = "epochs.json"  # the epoch recorder's lists, beside the resumable checkpoints


def last_checkpoint(state_dir: str) -> Optional[str]:
    """The newest ``*-last.pth`` the plugin trainer wrote in ``state_dir``, or None."""
    files = glob.glob(os.path.join(glob.escape(state_dir), "*-last.pth"))
    return max(files, key=os.path.getmtime) if files else None


def best_epoch(curve) -> Optional[int]:
    """The 1-based epoch of a validation curve's last maximum, or None: RecBole's early stopping takes a
    score equal to the best so far as the new best (``value >= best``), so of tied epochs it keeps the last."""
    return len(curve) - curve[::-1].index(max(curve)) if curve else None


def run_progress(state_dir: str) -> Optional[dict]:
    """How far an unfinished run got, from the records it keeps in ``state_dir`` after every
    validation: epochs trained, its validation NDCG@10 curve, the best point so far and the median
    epoch time; None when the run never finished an epoch there (or the records are unreadable)."""
    try:
        with open(os.path.join(state_dir, RECORDS_FILE), encoding="utf-8") as handle:
            records = json.load(handle)
        curve, seconds = [float(v) for v in records["valid_curve"]], [float(s) for s in records["epoch_seconds"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not seconds:
        return None
    return {"epochs": len(seconds), "valid_curve": curve, "best_valid": max(curve) if curve else None,
            "best_epoch": best_epoch(curve),
            "train_s_per_epoch": statistics.median(seconds)}


def progress_text(progress: dict) -> str:
    """One line of :func:`run_progress`'s figures."""
    best = "" if progress["best_valid"] is None else (
        f", best valid ndcg@10 {progress['best_valid']:.4f} (epoch {progress['best_epoch']})")
    return f"{progress['epochs']} epochs trained{best}, median {progress['train_s_per_epoch']:.0f} s an epoch"


def resumable_config(config_dict: dict, state_dir: str) -> dict:
    """``config_dict`` with checkpoints kept in ``state_dir`` every epoch, resuming from the last one."""
    os.makedirs(state_dir, exist_ok=True)
    config_dict = dict(config_dict, checkpoint_dir=os.path.abspath(state_dir), checkpoint_every_epoch=True)
    resume_file = last_checkpoint(state_dir)
    if resume_file:
        config_dict["resume_file"] = resume_file
    return config_dict


def _fit_and_test(row, model, dataset, config_dict, max_batches, cold_max_count, say, state_dir=None) -> None:
    """Train with RecBole's trainer (recording each epoch), test the best checkpoint, time scoring."""
    config, net, trainer, (train_data, valid_data, test_data) = build(model, dataset, config_dict)
    row["device"] = str(config["device"])
    row["params"] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    row["uses_features"] = uses_features(model, net)
    label = f"{model} seed {config['seed']}"
    say(f"{label}: {len(train_data)} train batches/epoch" + (f" (capped at {max_batches})" if max_batches else "") + f", device {row['device']}")
    recorder = _EpochRecorder(trainer, max_batches, label, config["epochs"], say)
    if state_dir:
        recorder.keep_in(os.path.join(state_dir, RECORDS_FILE), config["eval_step"])
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=recorder.on_valid)
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    row.update({key: float(value) for key, value in test_result.items()})
    row.update(recorder.summary())
    row["best_valid"] = float(best_valid)
    row["best_epoch"] = best_epoch(row["valid_curve"])
    row["exclude_history"] = bool(getattr(trainer, "exclude_history", False))
    rankings = rank_test_targets(trainer, test_data)
    row["test_users"] = int(len(rankings.full))
    row["infer_ms_per_user"] = 1000.0 * rankings.seconds / max(1, len(rankings.full))
    headline = rankings.excl if row["exclude_history"] else rankings.full
    item_counts = train_item_counts(train_data, config)
    row.update(cold_metrics(headline, rankings.targets, item_counts, cold_max_count))
    row.update(protocol_metrics(rankings))
    users = train_data._dataset.id2token(config["USER_ID_FIELD"], rankings.users.numpy())
    row[PER_USER_KEY] = per_user_ndcg(rankings, list(users), cold=cold_mask(rankings.targets, item_counts, cold_max_count))
    say(
        f"{label}: done: test ndcg@10 {row.get('ndcg@10', float('nan')):.4f}, recall@10 {row.get('recall@10', float('nan')):.4f}, "
        f"repeat share {row.get('repeat_share') or 0:.3f}, {row['train_s_per_epoch']:.1f} s/epoch, {row['infer_ms_per_user']:.3f} ms/user"
    )


def uses_features(model_name: str, net=None) -> bool:
    """Whether a model reads item features (multimodal plugin models, FDSA / SASRecF categories)."""
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
        self.epoch_cpu: List[Optional[str]] = []  # each epoch's CPU kernel capability (None: not recorded)
        self.valid_curve: List[float] = []
        self.resumed_at: List[int] = []  # epochs (1-based) a killed run continued from
        self._records_path: Optional[str] = None
        self._epoch_start = 0.0
        self._last_heartbeat = 0.0
        original = trainer._train_epoch

        def timed_train_epoch(train_data, epoch_idx, loss_func=None, show_progress=False):
            loader = _CountingLoader(train_data, self.max_batches, self._heartbeat)
            self._epoch_start = self._last_heartbeat = time.perf_counter()
            loss = original(loader, epoch_idx, loss_func=loss_func, show_progress=show_progress)
            self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
            self.epoch_steps.append(loader.count)
            self.epoch_cpu.append(cpu_capability())
            return loss

        trainer._train_epoch = timed_train_epoch

    def keep_in(self, path: str, eval_step: int) -> None:
        """Write the records to ``path`` after every validation; continue those of a resumed run,
        cut to the epochs its checkpoint holds (a kill can fall between the two writes)."""
        self._records_path = path
        start = int(getattr(self.trainer, "start_epoch", 0))
        if start <= 0 or not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        self.epoch_seconds = saved["epoch_seconds"][:start]
        self.epoch_steps = saved["epoch_steps"][:start]
        self.epoch_cpu = (saved.get("epoch_cpu", []) + [None] * start)[:start]  # records written before it was kept
        self.valid_curve = saved["valid_curve"][: start // max(1, int(eval_step))]
        self.resumed_at = saved.get("resumed_at", []) + [start + 1]
        self.say(f"{self.label}: resumed after epoch {start} (valid ndcg@10 so far: {[round(v, 4) for v in self.valid_curve]})")

    def _save_records(self) -> None:
        records = {"epoch_seconds": self.epoch_seconds, "epoch_steps": self.epoch_steps, "epoch_cpu": self.epoch_cpu,
                   "valid_curve": self.valid_curve, "resumed_at": self.resumed_at}
        with open(self._records_path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(records, handle)
        os.replace(self._records_path + ".tmp", self._records_path)

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
        if self._records_path:
            self._save_records()

    def summary(self) -> dict:
        """The run's records; its times are medians over epochs, so one stalled epoch (a process
        paused or swapped out for a while, as a run continued over several sessions can be) does not
        skew them. ``epoch_seconds`` keeps every epoch's training time."""
        ms_per_step = [1000.0 * seconds / max(1, steps) for seconds, steps in zip(self.epoch_seconds, self.epoch_steps)]
        return {
            "valid_curve": list(self.valid_curve),
            "epochs": len(self.epoch_seconds),
            "train_steps": sum(self.epoch_steps),
            "epoch_seconds": [round(seconds, 1) for seconds in self.epoch_seconds],
            "epoch_cpu": list(self.epoch_cpu),
            "train_s_per_epoch": statistics.median(self.epoch_seconds) if self.epoch_seconds else 0.0,
            "train_ms_per_step": statistics.median(ms_per_step) if ms_per_step else 0.0,
            "resumed_at": list(self.resumed_at),
        }
