"""Command line: RecBole's run_recbole.py flags, for the plugin's models and RecBole's own.

    python run_recbole_mm.py                                   # the demo: SASRecMM on ml-100k-mm
    python run_recbole_mm.py --model MUFASA --dataset ml-100k-mm --epochs=5
    python run_recbole_mm.py --model SASRec --dataset ml-100k-mm --config_files "a.yaml b.yaml"
    python run_recbole_mm.py --model MUFASA --nproc 2              # DDP: gloo on CPU, nccl on GPU
    python run_recbole_mm.py --model MUFASA --checkpoint_every_epoch=True
    python run_recbole_mm.py --resume saved/MUFASA-<time>-last.pth  # same flags as the first run

Any extra ``--key=value`` overrides a config key, exactly as with RecBole's script (RecBole's
Config reads them from the command line).
"""

import argparse
import os
import sys
import time

import recbole_mm
from recbole_mm import resources

DEMO_MODEL = "SASRecMM"
DEMO_DATASET = "ml-100k-mm"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    if args.resume and (args.model is None or args.dataset is None):
        from recbole_mm.trainer import load_checkpoint

        saved = load_checkpoint(args.resume)["config"]
        args.model = args.model or saved["model"]
        args.dataset = args.dataset or saved["dataset"]
    args.model = args.model or DEMO_MODEL
    args.dataset = args.dataset or DEMO_DATASET
    if args.resume and args.model not in recbole_mm.registered_models():
        raise SystemExit(f"--resume needs a plugin model ({', '.join(sorted(recbole_mm.registered_models()))}); "
                         f"{args.model} trains with RecBole's own Trainer, which has no resume option")
    return args


def demo_config_files(args):
    """The quick demo profile applies when the user runs the default model on the default dataset."""
    if args.model == DEMO_MODEL and args.dataset == DEMO_DATASET and not args.config_files:
        return [os.path.join(resources.properties_dir(), "demo.yaml")]
    return []


def plain_metrics(metrics) -> dict:
    """RecBole's metric dict with plain floats (it holds numpy scalars, printed as ``np.float64(...)``)."""
    return {name: float(value) for name, value in dict(metrics).items()}


def main(argv=None):
    args = parse_args(argv)
    config_files = (args.config_files.split() if args.config_files else []) + demo_config_files(args)
    config_dict = {"resume_file": args.resume} if args.resume else None
    started = time.time()
    if args.nproc > 1 or args.world_size > 0:
        from recbole_mm.quick_start import run_distributed

        result = run_distributed(
            args.model, args.dataset, config_files or None, config_dict, nproc=args.nproc, world_size=args.world_size,
            ip=args.ip, port=args.port, group_offset=args.group_offset,
        )
    else:
        result = recbole_mm.run_recbole_mm(model=args.model, dataset=args.dataset, config_file_list=config_files or None, config_dict=config_dict)
    print(f"{args.model} on {args.dataset}: {time.time() - started:.0f} s")
    if result is not None:
        print("best valid:", plain_metrics(result["best_valid_result"]))
        print("test:      ", plain_metrics(result["test_result"]))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
