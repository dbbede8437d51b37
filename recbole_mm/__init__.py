"""recbole-mm: multimodal sequential recommenders (MUFASA, DMAE, CAMMSR, SASRecMM) for RecBole 1.2.1.

``import recbole_mm`` is all a RecBole user needs: it applies the fixes RecBole 1.2.1 needs on
today's numpy / pandas / torch (:mod:`recbole_mm.compat`) and registers the plugin's models so
that stock ``recbole.quick_start.run_recbole(model="SASRecMM", dataset="ml-100k-mm")`` works.
"""

from recbole_mm import compat

compat.apply()

from recbole_mm.registry import register, registered_models  # noqa: E402

register()

from recbole_mm.quick_start import run_recbole_mm  # noqa: E402

__version__ = "0.1.0"
__all__ = ["run_recbole_mm", "register", "registered_models", "__version__"]
