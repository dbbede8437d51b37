"""The feature-file format, at its former import path: see :mod:`recbole_mm.feature_files`.

The module moved below both ``recbole_mm.data`` and ``recbole_mm.embed`` (which write and read
these files) so that neither package imports the other. Only the CAMMSR fixture still under ``data/``
imports this name; it goes when that fixture leaves the product package.
"""

from recbole_mm.feature_files import FLOAT_DTYPES, feature_paths, read_ids, write_features, write_ids  # noqa: F401
