"""Makes RecBole's own entry points find the plugin's models, datasets, trainers and yaml defaults.

RecBole 1.2.1 has no plugin registry: ``get_model`` looks a name up as
``recbole.model.<type>_recommender.<lowercase name>``, ``create_dataset`` as
``recbole.data.dataset.<Name>Dataset`` and ``get_trainer`` as ``recbole.trainer.<Name>Trainer``.
:func:`register` makes those names answer with the plugin's classes (an alias module in
``sys.modules`` per model, a module ``__getattr__`` for datasets and trainers; each plugin module is
imported when RecBole first asks for it) and teaches ``Config`` to read the plugin's
``properties/model/<Model>.yaml`` and ``properties/dataset/<ds>.yaml`` the way it reads RecBole's
own files. :func:`activate` does all of it, together with :mod:`recbole_mm.compat`, right after
RecBole's first import: after ``import recbole_mm``, stock
``recbole.quick_start.run_recbole(model="SASRecMM", dataset=...)`` works.
"""

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

import yaml

from recbole_mm import resources

# model name -> module that defines the class of that name
PLUGIN_MODELS = {
    "SASRecMM": "recbole_mm.model.sasrecmm",
    "MUFASA": "recbole_mm.model.mufasa",
    "DMAE": "recbole_mm.model.dmae",
    "CAMMSR": "recbole_mm.model.cammsr",
}

_REGISTERED = {}  # model name -> module that defines it
_PLUGIN_OVERALL = {"active": False}


@contextlib.contextmanager
def plugin_overall_defaults():
    """Within this block ``Config`` also reads ``properties/overall.yaml`` (below model/dataset yaml)."""
    previous = _PLUGIN_OVERALL["active"]
    _PLUGIN_OVERALL["active"] = True
    try:
        yield
    finally:
        _PLUGIN_OVERALL["active"] = previous


def watched_by_a_person():
    """True when stdout and stderr are terminals and no ``CI`` variable is set (to a true value).

    ``run_recbole_mm`` uses it as the default of ``show_progress``: RecBole's per-epoch progress
    bars (written to stderr) show while a person watches, and stay out of CI output, log files
    and pipes. A ``show_progress`` in the user's files, ``config_dict`` or command line wins.
    """
    in_ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    streams = (sys.stdout, sys.stderr)
    return not in_ci and all(getattr(stream, "isatty", lambda: False)() for stream in streams)


def _read_yaml(path, loader):
    with open(path, "r", encoding="utf-8") as handle:
        return yaml.load(handle.read(), Loader=loader) or {}


def _plugin_defaults(config, model, dataset):
    """Plugin yaml values for this run, in priority order (later wins)."""
    values = {}
    if _PLUGIN_OVERALL["active"]:
        values["show_progress"] = watched_by_a_person()
        values.update(_read_yaml(resources.overall_yaml(), config.yaml_loader))
    root = resources.bundled_dataset_root(dataset)
    if root is not None:
        values["data_path"] = root
    model_file = resources.model_yaml(model) if model in _REGISTERED else None
    if model_file:
        values.update(_read_yaml(model_file, config.yaml_loader))
    dataset_file = resources.dataset_yaml(dataset)
    if dataset_file:
        dataset_values = _read_yaml(dataset_file, config.yaml_loader)
        values.update(dataset_values)
        config.parameters["Dataset"] += [key for key in dataset_values if key not in config.parameters["Dataset"]]
    return values


def _install_config_hook():
    """Wrap ``Config._load_internal_config_dict`` so plugin yaml files count as internal defaults.

    RecBole reads, later wins: its ``overall.yaml``, its ``model/<Model>.yaml`` (its own models),
    its ``dataset/sample.yaml``, its ``dataset/<dataset>.yaml``, then the quick-start yaml of the
    model type (``sequential.yaml``, ``context-aware.yaml``, ``knowledge_base.yaml``, ...). The
    plugin's values go in right after ``sample.yaml``: the plugin's ``overall.yaml`` and the
    :func:`watched_by_a_person` default of ``show_progress`` (both only inside
    :func:`plugin_overall_defaults`, i.e. ``run_recbole_mm``), the plugin model's yaml, the plugin's
    dataset yaml. Config files, ``config_dict`` and the command line override all of these.
    """
    from recbole.config import configurator

    original = configurator.Config._load_internal_config_dict
    if getattr(original, "_recbole_mm_hook", False):
        return
    recbole_properties = os.path.join(os.path.dirname(os.path.realpath(configurator.__file__)), "..", "properties")

    def load_internal_config_dict(self, model, model_class, dataset):
        plugin_values = _plugin_defaults(self, model, dataset)
        below_plugin = {os.path.realpath(os.path.join(recbole_properties, name))
                        for name in ("overall.yaml", f"model/{model}.yaml", "dataset/sample.yaml")}
        injected = []
        read_file = self._update_internal_config_dict

        def update_then_read(file):
            if not injected and os.path.realpath(file) not in below_plugin:
                self.internal_config_dict.update(plugin_values)
                injected.append(True)
            return read_file(file)

        self._update_internal_config_dict = update_then_read  # this Config object only
        try:
            original(self, model, model_class, dataset)
        finally:
            del self._update_internal_config_dict
        if not injected:  # no dataset or quick-start file after sample.yaml (general models)
            self.internal_config_dict.update(plugin_values)

    load_internal_config_dict._recbole_mm_hook = True
    configurator.Config._load_internal_config_dict = load_internal_config_dict


def _default_trainer():
    """The plugin's trainer (resumable checkpoints, named loss faults) for models that name none."""
    from recbole_mm.trainer import MultimodalTrainer

    return MultimodalTrainer


def _model_class(name):
    return getattr(importlib.import_module(_REGISTERED[name]), name)


class _PluginModelModule(types.ModuleType):
    """What ``recbole.model.sequential_recommender.<name>`` holds for a plugin model.

    RecBole's ``get_model`` finds it by name (``find_spec`` answers from ``sys.modules``) and
    reads the class from it; the plugin's module is imported then, on that first read.
    """

    def __init__(self, alias, target):
        super().__init__(alias, f"Alias of {target} for RecBole's get_model.")
        self.__spec__ = importlib.machinery.ModuleSpec(alias, None)
        self._target = target

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(importlib.import_module(self._target), attribute)


def _lookup(suffix, pick):
    """Module ``__getattr__`` answering ``<Model><suffix>`` for registered plugin models."""

    def module_getattr(attribute):
        name = attribute[: -len(suffix)] if attribute.endswith(suffix) else None
        if name in _REGISTERED:
            found = pick(_model_class(name))
            if found is not None:
                return found
        raise AttributeError(attribute)

    module_getattr._recbole_mm_lookup = True
    return module_getattr


def _install_lookups():
    """``recbole.data.dataset.<Model>Dataset`` and ``recbole.trainer.<Model>Trainer`` for plugin
    models, answered when RecBole's ``create_dataset`` / ``get_trainer`` ask (PEP 562 module
    ``__getattr__``: only names the modules do not define reach it)."""
    import recbole.data.dataset as dataset_package
    import recbole.trainer as trainer_package

    lookups = (
        (dataset_package, _lookup("Dataset", lambda cls: getattr(cls, "dataset_class", None))),
        (trainer_package, _lookup("Trainer", lambda cls: getattr(cls, "trainer_class", None) or _default_trainer())),
    )
    for package, module_getattr in lookups:
        present = package.__dict__.get("__getattr__")
        if present is not None and not getattr(present, "_recbole_mm_lookup", False):
            raise RuntimeError(f"cannot register plugin models: {package.__name__} already defines __getattr__")
        package.__getattr__ = module_getattr


def register_model(name, module_name):
    """Expose one plugin model (class ``name`` in ``module_name``) to RecBole's lookups.

    Nothing of the model is imported here: ``get_model(name)`` imports ``module_name`` when RecBole
    first reads the class, and ``<name>Dataset`` / ``<name>Trainer`` are the class's
    ``dataset_class`` / ``trainer_class`` (default :class:`recbole_mm.trainer.MultimodalTrainer`).
    """
    activate()
    import recbole.model.sequential_recommender  # noqa: F401  (parent package must exist)

    alias = f"recbole.model.sequential_recommender.{name.lower()}"
    existing = sys.modules.get(alias)
    if existing is not None and getattr(existing, "_target", None) != module_name:
        raise RuntimeError(f"cannot register {name}: RecBole already has a module {alias}")
    if existing is None:
        if importlib.util.find_spec(alias) is not None:
            raise RuntimeError(f"cannot register {name}: RecBole already has a module {alias}")
        sys.modules[alias] = _PluginModelModule(alias, module_name)
    _REGISTERED[name] = module_name
    return name


def register():
    """Register every plugin model of this build; idempotent. Returns the registered names."""
    activate()
    for name, module_name in PLUGIN_MODELS.items():
        if name not in _REGISTERED and importlib.util.find_spec(module_name) is not None:
            register_model(name, module_name)
    return sorted(_REGISTERED)


def registered_models():
    """Registered plugin models, name -> class (importing their modules)."""
    return {name: _model_class(name) for name in sorted(_REGISTERED)}


# --- activation: when RecBole is imported ----------------------------------------------------------

_ACTIVE = {"done": False, "running": False}


def activate():
    """Apply :mod:`recbole_mm.compat`, hook ``Config`` and register the models; idempotent.

    Runs by itself right after RecBole's top package is first imported (see
    :func:`activate_when_recbole_is_imported`), so ``import recbole_mm`` stays light (no torch,
    no RecBole) for the data tools, and ``import recbole_mm`` followed by any RecBole import makes
    stock ``run_recbole(model="MUFASA")`` work.
    """
    if _ACTIVE["done"] or _ACTIVE["running"]:
        return
    _ACTIVE["running"] = True
    try:
        from recbole_mm import compat

        compat.apply()
        _install_config_hook()
        _install_lookups()
        _ACTIVE["done"] = True
        register()
    finally:
        _ACTIVE["running"] = False


class _ActivateAfter(importlib.abc.Loader):
    """Loader of the ``recbole`` package: RecBole's own loader, then :func:`activate`."""

    def __init__(self, loader, finder):
        self._loader, self._finder = loader, finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        activate()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _RecBoleImportHook(importlib.abc.MetaPathFinder):
    """Finds ``recbole`` with the other finders and wraps its loader in :class:`_ActivateAfter`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "recbole":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ActivateAfter(spec.loader, self)
                return spec
        return None


def activate_when_recbole_is_imported():
    """Activate now if RecBole is already imported, else right after its first import."""
    if "recbole" in sys.modules:
        activate()
    elif not any(isinstance(finder, _RecBoleImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RecBoleImportHook())
