"""``python run_recbole_mm.py`` in a checkout: the ``run_recbole_mm`` command (see recbole_mm/cli.py).

    python run_recbole_mm.py                                   # the demo: SASRecMM on ml-100k-mm
    python run_recbole_mm.py --model MUFASA --dataset ml-100k-mm --epochs=5
    python run_recbole_mm.py --resume saved/MUFASA-<time>-last.pth
"""

import sys

from recbole_mm.cli import DEMO_DATASET, DEMO_MODEL, InputError, demo_config_files, main, parse_args, plain_metrics, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
