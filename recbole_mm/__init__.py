"""recbole-mm: multimodal sequential recommenders (MUFASA, DMAE, CAMMSR, SASRecMM) for RecBole 1.2.1.

``import recbole_mm`` is all a RecBole user needs: from the first import of RecBole on, the fixes
RecBole 1.2.1 needs on today's numpy / pandas / scipy / torch (:mod:`recbole_mm.compat`) are in
place and the plugin's models are registered, so stock
``recbole.quick_start.run_recbole(model="SASRecMM", dataset="ml-100k-mm")`` works. Importing the
package itself stays light (no torch, no RecBole): the data tools (``recbole_mm.data.convert``,
``recbole_mm.embed``) load only what they use.
"""

from recbole_mm.registry import activate_when_recbole_is_imported

__version__ = "0.1.0"
__all__ = ["run_recbole_mm", "register", "registered_models", "__version__"]

_LAZY = {
    "run_recbole_mm": "recbole_mm.quick_start",
    "register": "recbole_mm.registry",
    "registered_models": "recbole_mm.registry",
}


def __getattr__(name):
    """``recbole_mm.run_recbole_mm`` and friends, imported on first use (they import RecBole)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recbole_mm' has no attribute {name!r}")


activate_when_recbole_is_imported()
