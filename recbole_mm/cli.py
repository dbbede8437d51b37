"""Command line: RecBole's run_recbole.py flags, for the plugin's models and RecBole's own.

    run_recbole_mm                                             # the demo: SASRecMM on ml-100k-mm
    run_recbole_mm --model MUFASA --dataset ml-100k-mm --epochs=5
    run_recbole_mm --model SASRec --dataset ml-100k-mm --config_files "a.yaml b.yaml"
    run_recbole_mm --model MUFASA --nproc 2                    # DDP: gloo on CPU, nccl on GPU
    run_recbole_mm --model MUFASA --checkpoint_every_epoch=True
    run_recbole_mm --resume saved/MUFASA-<time>-last.pth       # same flags as the first run

(``python run_recbole_mm.py`` in a checkout is the same command.) Any extra ``--key=value``
overrides a config key, exactly as with RecBole's script (RecBole's Config reads them from the
command line). Mistakes in the input (unknown model or dataset, a missing or malformed config
file, a value of the wrong type) end with one line on stderr and exit status 2, before training.
"""

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import time

import yaml

from recbole_mm import resources

PROG = "run_recbole_mm"
DEMO_MODEL = "SASRecMM"
DEMO_DATASET = "ml-100k-mm"
USAGE_ERROR = 2
RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender", "knowledge_aware_recommender")
# RecBole's models that need a library RecBole does not install: model -> import name.
OPTIONAL_LIBRARY_MODELS = {"LightGBM": "lightgbm", "XGBoost": "xgboost"}


class InputError(ValueError):
    """A mistake in what the user asked for, reported as one line without a traceback."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", type=str, default=None, help=f"model name, plugin or RecBole (default {DEMO_MODEL})")
    parser.add_argument("--dataset", "-d", type=str, default=None, help=f"dataset name (default {DEMO_DATASET})")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated yaml files")
    parser.add_argument("--nproc", type=int, default=1, help="processes for distributed training")
    parser.add_argument("--ip", type=str, default="localhost", help="master address (multi-node)")
    parser.add_argument("--port", type=str, default="5678", help="master port (multi-node)")
    parser.add_argument("--world_size", type=int, default=-1, help="total processes over all nodes")
    parser.add_argument("--group_offset", type=int, default=0, help="rank offset of this node")
    parser.add_argument("--resume", type=str, default=None, help="continue from this checkpoint (plugin models)")
    args, _ = parser.parse_known_args(argv)
    return resolve_names(args)


def resolve_names(args):
    """Model and dataset: as given, else those of the ``--resume`` checkpoint, else the demo's."""
    from recbole_mm.registry import register

    if args.resume and not os.path.isfile(args.resume):
        raise InputError(f"checkpoint not found: {args.resume}")
    if args.resume and (args.model is None or args.dataset is None):
        from recbole_mm.trainer import load_checkpoint

        saved = load_checkpoint(args.resume)["config"]
        args.model = args.model or saved["model"]
        args.dataset = args.dataset or saved["dataset"]
    args.model = args.model or DEMO_MODEL
    args.dataset = args.dataset or DEMO_DATASET
    plugin_models = register()
    if args.resume and args.model not in plugin_models:
        raise InputError(f"--resume needs a plugin model ({', '.join(plugin_models)}); "
                         f"{args.model} trains with RecBole's own Trainer, which has no resume option")
    return args


def demo_config_files(args):
    """The quick demo profile applies when the user runs the default model on the default dataset."""
    if args.model == DEMO_MODEL and args.dataset == DEMO_DATASET and not args.config_files:
        return [os.path.join(resources.properties_dir(), "demo.yaml")]
    return []


# --- checks before training ------------------------------------------------------------------------

def read_config_file(path):
    """The key: value pairs of a yaml config file, or :class:`InputError` naming the file and line."""
    if not os.path.isfile(path):
        raise InputError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            values = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise InputError(f"malformed yaml in {path}{where}: {problem}") from None
    if values is not None and not isinstance(values, dict):
        raise InputError(f"{path} must hold key: value pairs, found a {type(values).__name__}")
    return values or {}


def recbole_models():
    """Class names of RecBole 1.2.1's models (the optional-library ones included)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    names = set(OPTIONAL_LIBRARY_MODELS)
    for package_name in RECBOLE_MODEL_PACKAGES:
        package = importlib.import_module(f"recbole.model.{package_name}")
        names.update(name for name, value in vars(package).items()
                     if isinstance(value, type) and issubclass(value, AbstractRecommender) and value.__module__.startswith("recbole.model."))
    return sorted(names)


def check_model(name):
    """:class:`InputError` unless ``name`` is a plugin or RecBole model whose libraries are installed."""
    from recbole_mm.registry import register

    plugin = register()
    recbole = recbole_models()
    if name in plugin or name in recbole:
        library = OPTIONAL_LIBRARY_MODELS.get(name)
        if library and importlib.util.find_spec(library) is None:
            raise InputError(f"model {name} needs the package {library}, which is not installed (pip install {library})")
        return
    close = [known for known in plugin + recbole if known.lower() == name.lower()]
    hint = f"did you mean {close[0]}? " if close else ""
    raise InputError(f"unknown model {name!r}; {hint}plugin models: {', '.join(plugin)}; RecBole models: {', '.join(recbole)}")


def _type_problem(default, value):
    """What is wrong with ``value`` for a key whose default is ``default``; None when it fits."""
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if isinstance(default, (int, float)):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, dict):
        return None if isinstance(value, dict) else "a mapping ({key: value, ...})"
    return None  # strings and lists: RecBole accepts scalars and strings for many of them


def check_types(config):
    """:class:`InputError` for the first user value whose type does not fit the key's default."""
    sources = (("the command line", config.cmd_config_dict), ("config_dict", config.variable_config_dict), ("the config files", config.file_config_dict))
    for source, values in sources:
        for key, value in values.items():
            if key not in config.internal_config_dict:
                continue
            default = config.internal_config_dict[key]
            expected = _type_problem(default, value)
            if expected:
                raise InputError(f"config value of the wrong type: {key}={value!r} (from {source}); expected {expected}, like the default {default!r}")


def _downloadable_by_recbole(dataset):
    import recbole

    url_file = os.path.join(os.path.dirname(recbole.__file__), "properties", "dataset", "url.yaml")
    with open(url_file, encoding="utf-8") as handle:
        return dataset.lower() in (yaml.safe_load(handle) or {})


def check_dataset(config):
    """:class:`InputError` when the dataset's atomic files are missing (and RecBole cannot download them)."""
    folder, name = config["data_path"], config["dataset"]
    present = os.path.isdir(folder) and any(entry.startswith(f"{name}.") and entry.endswith(".inter") for entry in os.listdir(folder))
    if present or _downloadable_by_recbole(name):
        return
    raise InputError(f"dataset {name!r} not found: no {name}.inter in {folder} (set data_path to the folder that holds "
                     f"the {name}/ folder, e.g. --data_path=/path/to/datasets)")


def check_inputs(args, config_files, config_dict):
    """Everything that can be checked before training: files, model, config types, dataset."""
    for path in config_files:
        read_config_file(path)
    check_model(args.model)
    from recbole.config import Config

    from recbole_mm.registry import plugin_overall_defaults

    # RecBole's Config warns (through the root logger) about the flags it leaves to argparse here.
    logging.disable(logging.WARNING)
    try:
        with plugin_overall_defaults():
                config = Config(model=args.model, dataset=args.dataset, config_file_list=config_files or None, config_dict=config_dict)
    except (ValueError, TypeError) as error:  # RecBole's Config checks some values itself
        raise InputError(f"invalid configuration: {error}") from None
    finally:
        logging.disable(logging.NOTSET)
    check_types(config)
    check_dataset(config)
    return config


# --- running ---------------------------------------------------------------------------------------

def plain_metrics(metrics) -> dict:
    """RecBole's metric dict with plain floats (it holds numpy scalars, printed as ``np.float64(...)``)."""
    return {name: float(value) for name, value in dict(metrics).items()}


def main(argv=None):
    """Parse, check, train and test; returns RecBole's result dict (raises :class:`InputError`)."""
    args = parse_args(argv)
    config_files = (args.config_files.split() if args.config_files else []) + demo_config_files(args)
    config_dict = {"resume_file": args.resume} if args.resume else None
    check_inputs(args, config_files, config_dict)
    started = time.time()
    if args.nproc > 1 or args.world_size > 0:
        from recbole_mm.quick_start import run_distributed

        result = run_distributed(
            args.model, args.dataset, config_files or None, config_dict, nproc=args.nproc, world_size=args.world_size,
            ip=args.ip, port=args.port, group_offset=args.group_offset,
        )
    else:
        from recbole_mm.quick_start import run_recbole_mm

        result = run_recbole_mm(model=args.model, dataset=args.dataset, config_file_list=config_files or None, config_dict=config_dict)
    print(f"{args.model} on {args.dataset}: {time.time() - started:.0f} s")
    if result is not None:
        print("best valid:", plain_metrics(result["best_valid_result"]))
        print("test:      ", plain_metrics(result["test_result"]))
    return result


def run(argv=None) -> int:
    """The ``run_recbole_mm`` command: :func:`main`, with input mistakes as one line on stderr."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0
