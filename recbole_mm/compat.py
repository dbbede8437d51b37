"""Fixes that let RecBole 1.2.1 run on today's numpy, pandas and torch, kept in one place.

RecBole 1.2.1 (Feb 2025) predates numpy 2, pandas 3 copy-on-write, torch's ``weights_only=True``
default for ``torch.load`` and hyperopt's move to ``numpy.random.Generator``, and its DDP path
assumes CUDA and folder creation that no other process races. Each fix below is narrow, idempotent, and applied
by :func:`apply` when ``recbole_mm`` is imported, before anything imports ``recbole.quick_start``.
Every fix is named in :data:`FIXES`; the environment variable ``RECBOLE_MM_SKIP_FIXES`` (comma
separated names) leaves chosen fixes out, which is how the tests show each one is needed.
"""

import contextlib
import functools
import os
import warnings

import numpy as np

_APPLIED = set()


def _skipped():
    return {name.strip() for name in os.environ.get("RECBOLE_MM_SKIP_FIXES", "").split(",") if name.strip()}


# --- numpy 2 ----------------------------------------------------------------------------------

NUMPY2_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_", "bool8": "bool_"}


def fix_numpy_aliases():
    """Restore the numpy aliases removed in 2.0 that RecBole and ray 2.6 still use.

    ``Config.compatibility_settings`` reads ``np.float_``/``np.complex_``/``np.unicode_`` and
    ``ray.tune`` (imported by ``recbole.quick_start``) reads ``np.bool8``; without the aliases
    both raise ``AttributeError`` under numpy >= 2. No-op on numpy 1.x.
    """
    for alias, target in NUMPY2_ALIASES.items():
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))


# --- pandas copy-on-write ---------------------------------------------------------------------

def _fill_missing_sequences(frame):
    """Empty string for missing cells of ``*_seq`` columns (header names are ``field:type``)."""
    for column in frame.columns:
        if str(column).endswith("_seq") and frame[column].isna().any():
            frame[column] = frame[column].fillna("")
    return frame


class _PandasWithSeqFill:
    """Stands in for ``pandas`` inside ``recbole.data.dataset.dataset``: same module, but
    ``read_csv`` fills missing sequence cells, which RecBole's in-place ``fillna`` no longer does."""

    def __init__(self, pandas_module):
        self._pandas = pandas_module

    def __getattr__(self, name):
        return getattr(self._pandas, name)

    def read_csv(self, *args, **kwargs):
        return _fill_missing_sequences(self._pandas.read_csv(*args, **kwargs))


def _fill_nan_by_assignment(self):
    """Copy-on-write safe twin of ``Dataset._fill_nan``: same imputation, assigned back."""
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x)


def fix_pandas_fillna():
    """Make RecBole's missing-value handling work under pandas copy-on-write (pandas >= 3).

    ``Dataset._load_feat`` and ``Dataset._fill_nan`` call ``df[col].fillna(..., inplace=True)``,
    which under copy-on-write fills a temporary copy: missing ``token_seq`` cells then crash with
    ``'float' object has no attribute 'split'`` and missing floats stay NaN.
    """
    import recbole.data.dataset.dataset as dataset_module

    if not isinstance(dataset_module.pd, _PandasWithSeqFill):
        dataset_module.pd = _PandasWithSeqFill(dataset_module.pd)
    dataset_module.Dataset._fill_nan = _fill_nan_by_assignment


_SEQUENCE_METHODS = ("_remap", "_normalize", "_discretization")


def _elementwise_len_agg(original_agg):
    def agg(series, func=None, *args, **kwargs):
        if func is len and not args and not kwargs:
            return series.map(len)
        return original_agg(series, func, *args, **kwargs)

    return agg


def _with_elementwise_len(method):
    """Run a RecBole Dataset method with ``Series.agg(len)`` meaning per-cell lengths (pandas 2)."""
    if getattr(method, "_recbole_mm_seq_lengths", False):
        return method

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import pandas

        original = pandas.Series.agg
        pandas.Series.agg = _elementwise_len_agg(original)
        try:
            return method(*args, **kwargs)
        finally:
            pandas.Series.agg = original

    wrapper._recbole_mm_seq_lengths = True
    return wrapper


def fix_pandas_sequence_lengths():
    """Keep token_seq / float_seq fields intact under pandas >= 3.

    RecBole splits remapped sequences back per row with ``np.cumsum(feat[field].agg(len))``.
    pandas 3 applies ``agg(len)`` to the whole column (one number) instead of to each cell, so
    any token_seq item field (MovieLens genres, say) crashes in ``_remap`` with "Length of values
    does not match length of index". The fix restores per-cell lengths inside those three
    Dataset methods only; pandas behaves as usual everywhere else.
    """
    from recbole.data.dataset import Dataset

    for name in _SEQUENCE_METHODS:
        setattr(Dataset, name, _with_elementwise_len(getattr(Dataset, name)))


# --- torch >= 2.6 weights_only ----------------------------------------------------------------

@contextlib.contextmanager
def full_unpickling_for_recbole_checkpoints():
    """Within this block ``torch.load`` without an explicit ``weights_only`` unpickles fully.

    RecBole's checkpoints hold the whole ``Config`` object, which torch >= 2.6's default
    ``weights_only=True`` refuses. Only RecBole's own checkpoint loaders run inside this block.
    """
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous


def _loading_checkpoints(function):
    if getattr(function, "_recbole_mm_checkpoint_loader", False):
        return function

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with full_unpickling_for_recbole_checkpoints():
            return function(*args, **kwargs)

    wrapper._recbole_mm_checkpoint_loader = True
    return wrapper


def fix_checkpoint_loading():
    """Let RecBole's trainer and ``load_data_and_model`` read the checkpoints RecBole wrote."""
    import recbole.quick_start as quick_start_package
    import recbole.quick_start.quick_start as quick_start_module
    from recbole.trainer import Trainer

    Trainer.evaluate = _loading_checkpoints(Trainer.evaluate)
    Trainer.resume_checkpoint = _loading_checkpoints(Trainer.resume_checkpoint)
    wrapped = _loading_checkpoints(quick_start_module.load_data_and_model)
    quick_start_module.load_data_and_model = wrapped
    quick_start_package.load_data_and_model = wrapped


# --- torch.distributed on CPU ------------------------------------------------------------------

def _gpu_id_string(gpu_id):
    """``gpu_id`` as RecBole normalises it: ``(0, 1)`` -> ``"0,1"``, ``0`` -> ``"0"``."""
    return ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)


def _init_device_with_cpu_ddp(original):
    """``Config._init_device`` that starts a gloo process group when a DDP run has no CUDA.

    RecBole 1.2.1 (``config/configurator.py:495-508``) always calls
    ``init_process_group(backend="nccl")``, asserts one ``gpu_id`` per process, puts each rank
    on ``cuda:<local_rank>`` and calls ``torch.cuda.set_device``: a multi-process run without a
    GPU cannot start. Single-process runs and DDP runs with CUDA go through RecBole's own code.
    """
    if getattr(original, "_recbole_mm_cpu_ddp", False):
        return original

    @functools.wraps(original)
    def init_device(self):
        import torch
        import torch.distributed as dist

        config = self.final_config_dict
        config["gpu_id"] = _gpu_id_string(config["gpu_id"])
        os.environ["CUDA_VISIBLE_DEVICES"] = config["gpu_id"]
        if "local_rank" not in config or (config["gpu_id"] and torch.cuda.is_available()):
            return original(self)
        dist.init_process_group(
            backend="gloo",
            rank=config["local_rank"] + config["offset"],
            world_size=config["world_size"],
            init_method=f"tcp://{config['ip']}:{config['port']}",
        )
        config["device"] = torch.device("cpu")
        config["single_spec"] = False
        if config["local_rank"] != 0:  # as RecBole does: only rank 0 logs
            config.update(state="error", show_progress=False, verbose=False)

    init_device._recbole_mm_cpu_ddp = True
    return init_device


def _ddp_for_any_device(ddp_class):
    """Build ``DistributedDataParallel`` the way RecBole asks, valid for CPU modules too.

    ``AbstractTrainer.__init__`` (``trainer/trainer.py:62``) passes
    ``device_ids=[local_rank]``, which torch rejects for a module on the CPU. Non-persistent
    buffers (data rebuilt from the dataset on every rank, e.g. the plugin's item feature tables)
    are left out of DDP's buffer broadcast, which would otherwise copy them from rank 0 at
    every step.
    """
    if getattr(ddp_class, "_recbole_mm_any_device", False):
        return ddp_class

    def build(module, device_ids=None, **kwargs):
        parameter = next(module.parameters(), None)
        if parameter is not None and parameter.device.type == "cpu":
            device_ids = None
        data_buffers = [
            f"{prefix}.{name}" if prefix else name
            for prefix, sub in module.named_modules()
            for name in sub._non_persistent_buffers_set
        ]
        if data_buffers:
            ddp_class._set_params_and_buffers_to_ignore_for_model(module, data_buffers)
        return ddp_class(module, device_ids=device_ids, **kwargs)

    build._recbole_mm_any_device = True
    return build


def fix_distributed_cpu():
    """Let RecBole's own DDP path (``nproc`` / ``world_size`` / ``ip`` / ``port`` / ``offset``) run
    without CUDA: gloo instead of nccl, CPU device, CPU-valid DDP wrapper. With CUDA nothing
    changes (nccl, one GPU per process)."""
    from recbole.config import configurator
    from recbole.trainer import trainer as trainer_module

    configurator.Config._init_device = _init_device_with_cpu_ddp(configurator.Config._init_device)
    trainer_module.DistributedDataParallel = _ddp_for_any_device(trainer_module.DistributedDataParallel)


def _makedirs_exist_ok(dir_path):
    os.makedirs(dir_path, exist_ok=True)


def fix_ensure_dir_race():
    """Let several DDP processes create the same folders (``./log``, ``saved/``) at once.

    RecBole's ``utils.ensure_dir`` checks ``os.path.exists`` and then calls ``os.makedirs``; two
    ranks starting together both see no folder and the slower one dies with ``FileExistsError``.
    ``ensure_dir`` is imported by name in several RecBole modules, so its code object is swapped for
    ``os.makedirs(path, exist_ok=True)``, which every one of those names then runs.
    """
    from recbole.utils import utils

    utils.ensure_dir.__code__ = _makedirs_exist_ok.__code__


# --- hyperopt >= 0.2.7 exhaustive search --------------------------------------------------------

class _NumpyWithGeneratorRandomState:
    """Stands in for ``numpy`` inside ``recbole.trainer.hyper_tuning``: ``np.random.RandomState(seed)``
    returns a ``numpy.random.Generator``, which hyperopt's samplers now call (``rng.integers``)."""

    class _Random:
        def __getattr__(self, name):
            return getattr(np.random, name)

        @staticmethod
        def RandomState(seed=None):  # noqa: N802  (the name RecBole calls)
            return np.random.default_rng(seed)

    def __init__(self):
        self.random = self._Random()

    def __getattr__(self, name):
        return getattr(np, name)


def _hyperopt_samples_with_generator():
    """True when the installed hyperopt (>= 0.2.7) samples with ``numpy.random.Generator``."""
    from importlib import metadata

    try:
        version = metadata.version("hyperopt")
    except metadata.PackageNotFoundError:
        return False
    numbers = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    return numbers >= (0, 2, 7)


def fix_hyperopt_exhaustive():
    """Make ``HyperTuning(algo="exhaustive")`` work on hyperopt >= 0.2.7.

    RecBole's ``exhaustive_search`` (``trainer/hyper_tuning.py:121``) draws samples with
    ``np.random.RandomState(seed)``; hyperopt 0.2.7+ samplers call ``rng.integers`` (a ``Generator``
    method), so the first trial fails with ``'RandomState' object has no attribute 'integers'``.
    RecBole's ``random`` and ``bayes`` algorithms pass hyperopt's own Generator and are unaffected.
    """
    from recbole.trainer import hyper_tuning

    if not _hyperopt_samples_with_generator():
        return  # hyperopt absent, or < 0.2.7 (RandomState samplers): RecBole's code is right as it is
    if not isinstance(hyper_tuning.np, _NumpyWithGeneratorRandomState):
        hyper_tuning.np = _NumpyWithGeneratorRandomState()


# --- quiet imports ------------------------------------------------------------------------------

def quiet_known_warnings():
    """Silence deprecation warnings that RecBole 1.2.1 triggers on every run.

    ray 2.6.3 warns about ``pkg_resources`` on import (the import works: ``setup.py`` pins
    ``setuptools<81``), RecBole's trainer builds ``torch.cuda.amp.GradScaler`` once per epoch, and
    pandas >= 3.1 flags RecBole's ``inplace=True`` calls. None is actionable for a user; all would
    repeat in every log.
    """
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame\.\w+ is deprecated", module="recbole")
    # RecBole's no-op in-place fillna calls; fix_pandas_fillna does the filling instead.
    warnings.filterwarnings("ignore", message=r"A value is being set on a copy", module="recbole")


# --- autograd anomaly detection -------------------------------------------------------------


def fix_autograd_anomaly():
    """Undo the process-wide ``torch.autograd.set_detect_anomaly(True)`` that RecBole 1.2.1's
    ``model/sequential_recommender/sine.py`` runs at import (line 25), a debugging leftover that
    every RecBole run inherits once the sequential models are imported (quick-start and
    ``get_model`` import them all): each backward op is then checked for NaN and traced, about 1.5x
    the training step time on CPU. The module is imported here, once, so its side effect happens now
    and is switched off; users who want anomaly detection can still turn it on after this.
    """
    import importlib

    import torch

    was_enabled = torch.is_anomaly_enabled()
    importlib.import_module("recbole.model.sequential_recommender.sine")
    if not was_enabled:
        torch.autograd.set_detect_anomaly(False)


# --- applying ---------------------------------------------------------------------------------

FIXES = {
    "numpy_aliases": fix_numpy_aliases,
    "quiet_known_warnings": quiet_known_warnings,
    "pandas_fillna": fix_pandas_fillna,
    "pandas_sequence_lengths": fix_pandas_sequence_lengths,
    "checkpoint_loading": fix_checkpoint_loading,
    "distributed_cpu": fix_distributed_cpu,
    "ensure_dir_race": fix_ensure_dir_race,
    "hyperopt_exhaustive": fix_hyperopt_exhaustive,
    "autograd_anomaly": fix_autograd_anomaly,
}


def apply():
    """Apply every fix not listed in ``RECBOLE_MM_SKIP_FIXES``; safe to call repeatedly."""
    skipped = _skipped()
    unknown = skipped - set(FIXES)
    if unknown:
        raise ValueError(f"RECBOLE_MM_SKIP_FIXES names unknown fixes {sorted(unknown)}; known: {sorted(FIXES)}")
    for name, fix in FIXES.items():
        if name not in skipped and name not in _APPLIED:
            fix()
            _APPLIED.add(name)
    return sorted(_APPLIED)
