"""Makes RecBole's own entry points find the plugin's models, datasets, trainers and yaml defaults.

RecBole 1.2.1 has no plugin registry: ``get_model`` looks a name up as
``recbole.model.<type>_recommender.<lowercase name>``, ``create_dataset`` as
``recbole.data.dataset.<Name>Dataset`` and ``get_trainer`` as ``recbole.trainer.<Name>Trainer``.
:func:`register` puts the plugin's classes at those places (aliasing each model module into
``sys.modules``) and teaches ``Config`` to read the plugin's ``properties/model/<Model>.yaml`` and
``properties/dataset/<ds>.yaml`` the way it reads RecBole's own files. After ``import recbole_mm``,
stock ``recbole.quick_start.run_recbole(model="SASRecMM", dataset=...)`` works.
"""

import contextlib
import importlib
import importlib.util
import sys

import yaml

from recbole_mm import resources

# model name -> module that defines the class of that name
PLUGIN_MODELS = {
    "SASRecMM": "recbole_mm.model.sasrecmm",
    "MUFASA": "recbole_mm.model.mufasa",
    "DMAE": "recbole_mm.model.dmae",
    "CAMMSR": "recbole_mm.model.cammsr",
}

_REGISTERED = {}
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


def _read_yaml(path, loader):
    with open(path, "r", encoding="utf-8") as handle:
        return yaml.load(handle.read(), Loader=loader) or {}


def _plugin_defaults(config, model, dataset):
    """Plugin yaml values for this run, in priority order (later wins)."""
    values = {}
    if _PLUGIN_OVERALL["active"]:
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

    Order (later wins): RecBole's overall + sample yaml, the plugin's overall.yaml (only inside
    :func:`plugin_overall_defaults`, i.e. ``run_recbole_mm``), the plugin model's yaml, the plugin's
    dataset yaml, RecBole's own dataset yaml, RecBole's quick-start yaml for the model type.
    Config files, ``config_dict`` and the command line still override all of these.
    """
    import os

    from recbole.config import configurator

    original = configurator.Config._load_internal_config_dict
    if getattr(original, "_recbole_mm_hook", False):
        return

    def load_internal_config_dict(self, model, model_class, dataset):
        original(self, model, model_class, dataset)
        plugin_values = _plugin_defaults(self, model, dataset)
        if not plugin_values:
            return
        recbole_properties = os.path.join(os.path.dirname(os.path.realpath(configurator.__file__)), "..", "properties")
        later_files = [os.path.join(recbole_properties, "dataset", f"{dataset}.yaml")]
        if model_class.type.name == "SEQUENTIAL":
            later_files.append(os.path.join(recbole_properties, "quick_start_config", "sequential.yaml"))
        self.internal_config_dict.update(plugin_values)
        for path in later_files:
            if os.path.isfile(path):
                self.internal_config_dict.update(_read_yaml(path, self.yaml_loader))

    load_internal_config_dict._recbole_mm_hook = True
    configurator.Config._load_internal_config_dict = load_internal_config_dict


def _default_trainer():
    """The plugin's trainer (resumable checkpoints, named loss faults) for models that name none."""
    from recbole_mm.trainer import MultimodalTrainer

    return MultimodalTrainer


def register_model(name, module_name):
    """Expose one plugin model (and its dataset / trainer classes) to RecBole's lookups."""
    import recbole.data.dataset as dataset_package
    import recbole.model.sequential_recommender  # noqa: F401  (parent package must exist)
    import recbole.trainer as trainer_package

    module = importlib.import_module(module_name)
    model_class = getattr(module, name)
    alias = f"recbole.model.sequential_recommender.{name.lower()}"
    existing = sys.modules.get(alias)
    if existing is not None and existing is not module:
        raise RuntimeError(f"cannot register {name}: RecBole already has a module {alias}")
    sys.modules[alias] = module
    dataset_class = getattr(model_class, "dataset_class", None)
    if dataset_class is not None:
        setattr(dataset_package, f"{name}Dataset", dataset_class)
    trainer_class = getattr(model_class, "trainer_class", None) or _default_trainer()
    setattr(trainer_package, f"{name}Trainer", trainer_class)
    _REGISTERED[name] = model_class
    return model_class


def register():
    """Register every plugin model whose module is present; idempotent. Returns the names."""
    _install_config_hook()
    for name, module_name in PLUGIN_MODELS.items():
        if name in _REGISTERED:
            continue
        if importlib.util.find_spec(module_name) is None:  # model file not part of this build
            continue
        register_model(name, module_name)
    return sorted(_REGISTERED)


def registered_models():
    return dict(_REGISTERED)
