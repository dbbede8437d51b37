"""Fixes that let RecBole 1.2.1 run on today's numpy, pandas, scipy, torch and Python, kept in one place.

RecBole 1.2.1 (Feb 2025) predates numpy 2, pandas 3 copy-on-write, scipy's new ``dok_matrix``,
torch's ``weights_only=True`` default for ``torch.load``, hyperopt's move to
``numpy.random.Generator`` and Python 3.12 (its ``ray<=2.6.3`` pin has no wheels there); its DDP
path assumes CUDA and folder creation that no other process races.

Each fix is a :class:`Fix`: a name, a test of whether the installed stack needs it (the version
gate) and a function that applies it and returns how to undo it. Every patch replaces one named
attribute of a RecBole class or module (or adds a missing one) and keeps the original, so
:func:`undo` restores RecBole exactly. :func:`apply` runs when RecBole is first imported after
``recbole_mm`` (see :mod:`recbole_mm.registry`), before anything imports ``recbole.quick_start``.
``RECBOLE_MM_SKIP_FIXES`` (comma separated names) leaves chosen fixes out, which is how the tests
show that each fix is needed; :func:`status` says for each fix whether it is applied and why not.
"""

import contextlib
import functools
import importlib
import os
import sys
import types
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

RECBOLE_VERSION = "1.2.1"

_APPLIED: Dict[str, Callable[[], None]] = {}  # fix name -> undo, in application order


class RecBoleVersionError(ImportError):
    """The installed RecBole is not the release whose internals these fixes and the registry target."""


def version_of(package: str) -> Optional[Tuple[int, ...]]:
    """Installed version of ``package`` as a tuple of ints (``(2, 4, 6)``), None when absent."""
    try:
        text = metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
    numbers = []
    for part in text.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:  # "0rc1": keep 0, stop
            break
    return tuple(numbers)


def check_recbole_version():
    """Raise :class:`RecBoleVersionError` unless RecBole 1.2.1 is installed."""
    try:
        found = metadata.version("recbole")
    except metadata.PackageNotFoundError:
        found = None
    if found != RECBOLE_VERSION:
        raise RecBoleVersionError(
            f"recbole_mm needs RecBole {RECBOLE_VERSION} (found {found or 'none'}): its fixes and model "
            f"registration rely on that release's internals; install it with pip install recbole=={RECBOLE_VERSION}"
        )


# --- patch bookkeeping --------------------------------------------------------------------------

_MISSING = object()


def _replace(owner, name, value) -> Callable[[], None]:
    """Set ``owner.name = value``; return the function that puts the original back (or removes it)."""
    original = owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name, _MISSING)

    def restore():
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)

    setattr(owner, name, value)
    return restore


def _undo_all(undos: List[Callable[[], None]]) -> Callable[[], None]:
    def restore():
        for undo in reversed(undos):
            undo()

    return restore


def _skipped():
    return {name.strip() for name in os.environ.get("RECBOLE_MM_SKIP_FIXES", "").split(",") if name.strip()}


# --- numpy 2 ----------------------------------------------------------------------------------

NUMPY2_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_", "bool8": "bool_"}


def numpy_2():
    return (version_of("numpy") or (0,)) >= (2,)


def fix_numpy_aliases():
    """Restore the numpy aliases removed in 2.0 that RecBole and ray 2.6 still read.

    ``Config.compatibility_settings`` reads ``np.float_``/``np.complex_``/``np.unicode_`` and
    ``ray.tune`` (imported by ``recbole.quick_start``) reads ``np.bool8``; without the aliases
    both raise ``AttributeError`` under numpy >= 2.
    """
    return _undo_all([_replace(np, alias, getattr(np, target)) for alias, target in NUMPY2_ALIASES.items()
                      if alias not in np.__dict__])


# --- ray (Python >= 3.12) -------------------------------------------------------------------------

RAY_MISSING_MESSAGE = (
    "ray is not installed: RecBole's ray-tuning helper needs ray<=2.6.3, which has no wheels for "
    "Python >= 3.12; use python -m recbole_mm.tune (hyperopt) or Python 3.11 with ray 2.6.3"
)


def ray_missing():
    """True when ``ray.tune`` cannot be imported (or what is imported is this module's stand-in)."""
    if getattr(sys.modules.get("ray"), "_recbole_mm_stand_in", False):
        return True
    try:
        importlib.import_module("ray.tune")
    except ImportError:
        return True
    return False


class _RayTuneStandIn(types.ModuleType):
    """``ray.tune`` where ray is not installed: importable; ``report`` does what ray's does outside a
    Ray session (nothing: RecBole's ``objective_function`` calls it on every run), and anything else
    says why it cannot run."""

    @staticmethod
    def report(*args, **kwargs):
        return None

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise ModuleNotFoundError(RAY_MISSING_MESSAGE)

        return unavailable


def fix_ray_stand_in():
    """Let ``recbole.quick_start`` import where ray cannot be installed (Python >= 3.12).

    ``recbole/quick_start/quick_start.py`` runs ``from ray import tune`` at import, for its
    ``objective_function`` (``tune.report``) only; RecBole 1.2.1 pins ``ray<=2.6.3``, which has
    no wheels past Python 3.11. A ``ray`` module goes into ``sys.modules`` whose ``tune.report``
    is a no-op, as ray's own is outside a Ray session (so ``objective_function`` and RecBole's
    HyperTuning run), and whose other ``tune`` functions raise a clear error.
    """
    ray = types.ModuleType("ray")
    ray.__doc__ = RAY_MISSING_MESSAGE
    ray.__path__ = []
    ray._recbole_mm_stand_in = True
    ray.tune = _RayTuneStandIn("ray.tune", RAY_MISSING_MESSAGE)

    def restore():
        for name, module in (("ray", ray), ("ray.tune", ray.tune)):
            if sys.modules.get(name) is module:
                del sys.modules[name]

    sys.modules["ray"], sys.modules["ray.tune"] = ray, ray.tune
    return restore


# --- scipy >= 1.13 dok_matrix ------------------------------------------------------------------

# RecBole 1.2.1's models that build their adjacency with ``dok_matrix._update``.
GRAPH_MODEL_MODULES = (
    "recbole.model.general_recommender.gcmc",
    "recbole.model.general_recommender.lightgcn",
    "recbole.model.general_recommender.ncl",
    "recbole.model.general_recommender.ngcf",
    "recbole.model.general_recommender.spectralcf",
    "recbole.model.knowledge_aware_recommender.kgin",
    "recbole.model.knowledge_aware_recommender.mcclk",
)


def scipy_dok_without_update():
    import scipy.sparse

    return not hasattr(scipy.sparse.dok_matrix, "_update")


class _ScipySparseWithDokUpdate(types.ModuleType):
    """``scipy.sparse`` as RecBole's graph models see it: ``dok_matrix`` has ``_update`` again."""

    def __init__(self, sparse):
        super().__init__(sparse.__name__, sparse.__doc__)
        self._sparse = sparse

        class dok_matrix(sparse.dok_matrix):  # noqa: N801  (the name RecBole calls)
            def _update(self, entries):
                """Bulk insert ``{(row, col): value}``, as scipy < 1.13's ``dok_matrix._update`` did."""
                for (row, col), value in entries.items():
                    self[row, col] = value

        self.dok_matrix = dok_matrix

    def __getattr__(self, name):
        return getattr(self._sparse, name)


def fix_scipy_dok_update():
    """Let RecBole's graph models (LightGCN, NGCF, NCL, GCMC, SpectralCF, KGIN, MCCLK) build
    their adjacency matrices on scipy >= 1.13, where ``dok_matrix`` lost its ``_update`` method
    (``'dok_matrix' object has no attribute '_update'``). Only those modules' ``sp`` name changes:
    it reads scipy.sparse through a wrapper whose ``dok_matrix`` subclass has ``_update`` back.
    """
    import scipy.sparse

    undos = []
    for module_name in GRAPH_MODEL_MODULES:
        module = importlib.import_module(module_name)
        undos.append(_replace(module, "sp", _ScipySparseWithDokUpdate(scipy.sparse)))
    return _undo_all(undos)


# --- pandas copy-on-write ---------------------------------------------------------------------

def pandas_3():
    return (version_of("pandas") or (0,)) >= (3,)


def _fill_missing_sequences(frame):
    """Empty string for missing cells of ``*_seq`` columns (header names are ``field:type``)."""
    for column in frame.columns:
        if str(column).endswith("_seq") and frame[column].isna().any():
            frame[column] = frame[column].fillna("")
    return frame


class _PandasWithSeqFill(types.ModuleType):
    """Stands in for ``pandas`` inside ``recbole.data.dataset.dataset``: same module, but
    ``read_csv`` fills missing sequence cells, which RecBole's in-place ``fillna`` no longer does."""

    def __init__(self, pandas_module):
        super().__init__(pandas_module.__name__, pandas_module.__doc__)
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

    return _undo_all([
        _replace(dataset_module, "pd", _PandasWithSeqFill(dataset_module.pd)),
        _replace(dataset_module.Dataset, "_fill_nan", _fill_nan_by_assignment),
    ])


_SEQUENCE_METHODS = ("_remap", "_normalize", "_discretization")


def _elementwise_len_agg(original_agg):
    def agg(series, func=None, *args, **kwargs):
        if func is len and not args and not kwargs:
            return series.map(len)
        return original_agg(series, func, *args, **kwargs)

    return agg


def _with_elementwise_len(method):
    """Run a RecBole Dataset method with ``Series.agg(len)`` meaning per-cell lengths (pandas 2)."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import pandas

        restore = _replace(pandas.Series, "agg", _elementwise_len_agg(pandas.Series.agg))
        try:
            return method(*args, **kwargs)
        finally:
            restore()

    return wrapper


def fix_pandas_sequence_lengths():
    """Keep token_seq / float_seq fields intact under pandas >= 3.

    RecBole splits remapped sequences back per row with ``np.cumsum(feat[field].agg(len))``.
    pandas 3 applies ``agg(len)`` to the whole column (one number) instead of to each cell, so
    any token_seq item field (MovieLens genres, say) crashes in ``_remap`` with "Length of values
    does not match length of index". The three Dataset methods that do this run with
    ``Series.agg(len)`` meaning per-cell lengths for their duration (the class attribute is put
    back when each returns; one data-loading thread at a time, as RecBole loads); ``agg`` with
    anything but ``len`` is pandas' own, and pandas behaves as usual everywhere else.
    """
    from recbole.data.dataset import Dataset

    return _undo_all([_replace(Dataset, name, _with_elementwise_len(getattr(Dataset, name))) for name in _SEQUENCE_METHODS])


# --- torch >= 2.6 weights_only ----------------------------------------------------------------

def torch_loads_weights_only():
    return (version_of("torch") or (0,)) >= (2, 6)


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
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with full_unpickling_for_recbole_checkpoints():
            return function(*args, **kwargs)

    return wrapper


def fix_checkpoint_loading():
    """Let RecBole's trainer and ``load_data_and_model`` read the checkpoints RecBole wrote."""
    import recbole.quick_start as quick_start_package
    import recbole.quick_start.quick_start as quick_start_module
    from recbole.trainer import Trainer

    wrapped = _loading_checkpoints(quick_start_module.load_data_and_model)
    return _undo_all([
        _replace(Trainer, "evaluate", _loading_checkpoints(Trainer.evaluate)),
        _replace(Trainer, "resume_checkpoint", _loading_checkpoints(Trainer.resume_checkpoint)),
        _replace(quick_start_module, "load_data_and_model", wrapped),
        _replace(quick_start_package, "load_data_and_model", wrapped),
    ])


# --- torch.distributed on CPU ------------------------------------------------------------------

def always():
    return True


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

    return init_device


def is_plugin_model(module) -> bool:
    """True for models defined in ``recbole_mm`` (checked by module name: compat imports no model)."""
    return type(module).__module__.split(".")[0] == "recbole_mm"


def _ddp_builder(ddp_class):
    """Build ``DistributedDataParallel`` the way RecBole asks, valid for CPU modules too.

    ``AbstractTrainer.__init__`` (``trainer/trainer.py:62``) passes ``device_ids=[local_rank]``,
    which torch rejects for a module on the CPU; on the CPU it is left out. On CUDA the call is
    RecBole's unchanged. One optimisation, for the plugin's models only (:func:`is_plugin_model`):
    when every buffer of the model is non-persistent (item feature tables each rank rebuilds from
    the same files), DDP's per-step broadcast of buffers from rank 0 is switched off
    (``broadcast_buffers=False``, a public DDP option); it would copy the tables every step.
    RecBole's own models keep DDP's defaults.
    """

    def build(module, device_ids=None, **kwargs):
        parameter = next(module.parameters(), None)
        if parameter is not None and parameter.device.type == "cpu":
            device_ids = None
        if is_plugin_model(module) and "broadcast_buffers" not in kwargs:
            buffers = [name for name, _ in module.named_buffers()]
            non_persistent = [
                f"{prefix}.{name}" if prefix else name
                for prefix, sub in module.named_modules()
                for name in sub._non_persistent_buffers_set
            ]
            if buffers and sorted(buffers) == sorted(non_persistent):
                kwargs["broadcast_buffers"] = False
        return ddp_class(module, device_ids=device_ids, **kwargs)

    return build


def fix_distributed_cpu():
    """Let RecBole's own DDP path (``nproc`` / ``world_size`` / ``ip`` / ``port`` / ``offset``) run
    without CUDA: gloo instead of nccl, CPU device, no ``device_ids`` for a CPU module. With
    CUDA, RecBole's nccl set-up and DDP call are unchanged (see :func:`_ddp_builder` for the one
    buffer option the plugin's models set on any device)."""
    from recbole.config import configurator
    from recbole.trainer import trainer as trainer_module

    return _undo_all([
        _replace(configurator.Config, "_init_device", _init_device_with_cpu_ddp(configurator.Config._init_device)),
        _replace(trainer_module, "DistributedDataParallel", _ddp_builder(trainer_module.DistributedDataParallel)),
    ])


def _makedirs_exist_ok(dir_path):
    """``ensure_dir`` without the check-then-create race: ``os.makedirs(dir_path, exist_ok=True)``."""
    os.makedirs(dir_path, exist_ok=True)


def fix_ensure_dir_race():
    """Let several DDP processes create the same folders (``./log``, ``saved/``) at once.

    RecBole's ``utils.ensure_dir`` checks ``os.path.exists`` and then calls ``os.makedirs``; two
    ranks starting together both see no folder and the slower one dies with ``FileExistsError``.
    Every RecBole module that imported ``ensure_dir`` by name (``recbole.utils``,
    ``recbole.utils.logger``, ``recbole.data.utils``, ...; all are imported by then) gets
    ``os.makedirs(path, exist_ok=True)`` under that name instead.
    """
    import recbole.quick_start  # noqa: F401  (imports every RecBole module that uses ensure_dir)
    from recbole.utils import utils

    original = utils.ensure_dir
    users = [module for name, module in list(sys.modules.items())
             if name.split(".")[0] == "recbole" and getattr(module, "ensure_dir", None) is original]
    return _undo_all([_replace(module, "ensure_dir", _makedirs_exist_ok) for module in users])


# --- hyperopt >= 0.2.7 exhaustive search --------------------------------------------------------

class _NumpyWithGeneratorRandomState(types.ModuleType):
    """Stands in for ``numpy`` inside ``recbole.trainer.hyper_tuning``: ``np.random.RandomState(seed)``
    returns a ``numpy.random.Generator``, which hyperopt's samplers now call (``rng.integers``)."""

    class _Random:
        def __getattr__(self, name):
            return getattr(np.random, name)

        @staticmethod
        def RandomState(seed=None):  # noqa: N802  (the name RecBole calls)
            return np.random.default_rng(seed)

    def __init__(self):
        super().__init__("numpy")
        self.random = self._Random()

    def __getattr__(self, name):
        return getattr(np, name)


def hyperopt_samples_with_generator():
    """True when the installed hyperopt (>= 0.2.7) samples with ``numpy.random.Generator``."""
    found = version_of("hyperopt")
    return found is not None and found >= (0, 2, 7)


def fix_hyperopt_exhaustive():
    """Make ``HyperTuning(algo="exhaustive")`` work on hyperopt >= 0.2.7.

    RecBole's ``exhaustive_search`` (``trainer/hyper_tuning.py:121``) draws samples with
    ``np.random.RandomState(seed)``; hyperopt 0.2.7+ samplers call ``rng.integers`` (a ``Generator``
    method), so the first trial fails with ``'RandomState' object has no attribute 'integers'``.
    RecBole's ``random`` and ``bayes`` algorithms pass hyperopt's own Generator and are unaffected.
    """
    from recbole.trainer import hyper_tuning

    return _replace(hyper_tuning, "np", _NumpyWithGeneratorRandomState())


# --- quiet imports ------------------------------------------------------------------------------

# (message regex, category, module regex of the code the warning is attributed to)
KNOWN_WARNINGS = (
    # ray 2.6.3 imports pkg_resources (setuptools < 81, pinned in setup.py): works, warns.
    (r"pkg_resources is deprecated", UserWarning, r"ray(\.|$)"),
    # RecBole's trainer builds torch.cuda.amp.GradScaler once per epoch (deprecated in torch 2.4).
    (r".*torch\.cuda\.amp\.GradScaler.*", FutureWarning, r"recbole\."),
    # pandas >= 3.1 flags RecBole's inplace=True calls; fix_pandas_fillna does the filling.
    (r"The inplace keyword in DataFrame\.\w+ is deprecated", Warning, r"recbole\."),
    (r"A value is being set on a copy", Warning, r"recbole\."),
    # Python >= 3.12 flags invalid escapes in docstrings of RecBole's source (e.g. dien.py) when it is
    # compiled; such warnings name the file (module = its path), not the module.
    (r"invalid escape sequence", SyntaxWarning, r".*[\\/]recbole[\\/]"),
)


def quiet_known_warnings():
    """Silence deprecation warnings that RecBole 1.2.1 and ray 2.6.3 raise on every run.

    None is actionable for a user and all would repeat in every log. Each filter names the module
    the warning comes from (``ray.*`` or ``recbole.*``, or a file under ``recbole/`` for warnings
    raised while Python compiles RecBole's source), so the same warnings from the user's own code
    still show.
    """
    added = []
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
        added.append(warnings.filters[0])

    def restore():
        for entry in added:
            if entry in warnings.filters:
                warnings.filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings itself calls
        if mutated is not None:
            mutated()

    return restore


# --- autograd anomaly detection -------------------------------------------------------------


_ANOMALY = {}


def fix_autograd_anomaly():
    """Undo the process-wide ``torch.autograd.set_detect_anomaly(True)`` that RecBole 1.2.1's
    ``model/sequential_recommender/sine.py`` runs at import (line 25), a debugging leftover that
    every RecBole run inherits once the sequential models are imported (quick-start and
    ``get_model`` import them all): each backward op is then checked for NaN and traced, about 1.5x
    the training step time on CPU. The module is imported here, once, so its side effect happens now
    and is switched off; users who want anomaly detection can still turn it on after this.
    """
    import torch

    if "user_choice" not in _ANOMALY:  # the state before RecBole's import, remembered across undo/apply
        _ANOMALY["user_choice"] = torch.is_anomaly_enabled()
        importlib.import_module("recbole.model.sequential_recommender.sine")
    if _ANOMALY["user_choice"]:  # the user turned it on: kept
        return lambda: None
    torch.autograd.set_detect_anomaly(False)
    return lambda: torch.autograd.set_detect_anomaly(True)  # the state RecBole's import leaves


# --- applying ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fix:
    """One compatibility fix: ``needed()`` is its version gate, ``apply()`` returns its undo."""

    name: str
    needed: Callable[[], bool]
    apply: Callable[[], Callable[[], None]]
    gate: str  # the condition ``needed`` checks, in words


# In application order: the warning filters before ray is first imported (its import warns), the
# numpy aliases and the ray stand-in before anything imports recbole.quick_start (ray reads np.bool8).
FIXES = {fix.name: fix for fix in (
    Fix("quiet_known_warnings", always, quiet_known_warnings, "always (filters by module)"),
    Fix("numpy_aliases", numpy_2, fix_numpy_aliases, "numpy >= 2"),
    Fix("ray_stand_in", ray_missing, fix_ray_stand_in, "ray not importable (Python >= 3.12)"),
    Fix("pandas_fillna", pandas_3, fix_pandas_fillna, "pandas >= 3"),
    Fix("pandas_sequence_lengths", pandas_3, fix_pandas_sequence_lengths, "pandas >= 3"),
    Fix("scipy_dok_update", scipy_dok_without_update, fix_scipy_dok_update, "scipy without dok_matrix._update (>= 1.13)"),
    Fix("checkpoint_loading", torch_loads_weights_only, fix_checkpoint_loading, "torch >= 2.6"),
    Fix("distributed_cpu", always, fix_distributed_cpu, "always (RecBole 1.2.1 DDP is CUDA-only)"),
    Fix("ensure_dir_race", always, fix_ensure_dir_race, "always (RecBole 1.2.1 ensure_dir races)"),
    Fix("hyperopt_exhaustive", hyperopt_samples_with_generator, fix_hyperopt_exhaustive, "hyperopt >= 0.2.7"),
    Fix("autograd_anomaly", always, fix_autograd_anomaly, "always (RecBole 1.2.1 sine.py)"),
)}


def status() -> Dict[str, str]:
    """For each fix: ``applied``, ``skipped (RECBOLE_MM_SKIP_FIXES)`` or ``not needed (<gate> is false)``."""
    skipped = _skipped()
    report = {}
    for name, fix in FIXES.items():
        if name in _APPLIED:
            report[name] = "applied"
        elif name in skipped:
            report[name] = "skipped (RECBOLE_MM_SKIP_FIXES)"
        elif not fix.needed():
            report[name] = f"not needed ({fix.gate} is false)"
        else:
            report[name] = "not applied yet"
    return report


def apply() -> List[str]:
    """Check RecBole's version, then apply every needed fix not listed in ``RECBOLE_MM_SKIP_FIXES``.

    Idempotent: a fix already applied is not applied twice. Returns the names applied so far.
    """
    skipped = _skipped()
    unknown = skipped - set(FIXES)
    if unknown:
        raise ValueError(f"RECBOLE_MM_SKIP_FIXES names unknown fixes {sorted(unknown)}; known: {sorted(FIXES)}")
    check_recbole_version()
    for name, fix in FIXES.items():
        if name in skipped or name in _APPLIED or not fix.needed():
            continue
        _APPLIED[name] = fix.apply()
    return sorted(_APPLIED)


def undo(name: Optional[str] = None):
    """Revert one applied fix (``name``) or all of them, newest first; RecBole is then as shipped."""
    names = [name] if name is not None else list(_APPLIED)
    for fix_name in reversed(names):
        restore = _APPLIED.pop(fix_name, None)
        if restore is not None:
            restore()
