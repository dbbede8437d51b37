"""Fixes that let RecBole 1.2.1 run on today's numpy, pandas and torch, kept in one place.

RecBole 1.2.1 (Feb 2025) predates numpy 2, pandas 3 copy-on-write and torch's
``weights_only=True`` default for ``torch.load``. Each fix below is narrow, idempotent, and applied
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


# --- applying ---------------------------------------------------------------------------------

FIXES = {
    "numpy_aliases": fix_numpy_aliases,
    "quiet_known_warnings": quiet_known_warnings,
    "pandas_fillna": fix_pandas_fillna,
    "pandas_sequence_lengths": fix_pandas_sequence_lengths,
    "checkpoint_loading": fix_checkpoint_loading,
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
