"""``python -m recbole_mm.bench.cammsr``: CAMMSR vs SASRec and SASRecMM, its ablations, category noise.

Every variant trains through RecBole's own pipeline (:func:`recbole_mm.bench.runner.run_model`)
under one protocol (:func:`recbole_mm.bench.profiles.model_config`: same MAX_ITEM_LIST_LENGTH,
hidden size, epochs, batch size, learning rate, seed); the script prints one markdown table with
test Recall@5/10, NDCG@5/10 and training seconds per epoch (also as a ratio to SASRec). Ablations
change one thing of CAMMSR. The robustness variant trains CAMMSR on a copy of the dataset whose
``.item`` file has the category field of ``--noise`` (default 20%) of the items replaced at random
(written into a temporary data folder, the other files linked; the bundled files are never
touched) and the table reports its drop against clean CAMMSR; the same with the label-reading
category prior on, against clean CAMMSR with the prior.

Examples::

    python -m recbole_mm.bench.cammsr                                # ml-100k-mm, quick budget
    python -m recbole_mm.bench.cammsr --epochs 5 --max-batches 0 --threads 1
    python -m recbole_mm.bench.cammsr --variants SASRec,CAMMSR,"category noise" --noise 0.3

``--diagnose`` trains nothing: on one training batch of the dataset it prints, for SASRec,
SASRecMM, CAMMSR and CAMMSR with the first version's settings, the user-vector rms and logit std at
initialisation and the CPU time of a training step (interleaved rounds in one process; CPU time,
not wall time, so that other processes on a shared machine do not skew the ratios), each as a ratio
to SASRec; and for the two CAMMSR readings the gate's mean weights in training and evaluation, the
gradient norms that reach the encoder from the next-item and the contrastive losses and the gate
from the category loss, and how much the modality swap changes the item vectors::

    python -m recbole_mm.bench.cammsr --diagnose --threads 1
"""

import os
import random
import sys
from typing import Optional

import yaml

from recbole_mm import resources
from recbole_mm.bench import ablation

NOISY = "category noise"
NOISY_PRIOR = "category noise (prior on)"
PRIOR = "category prior on"
SINGLE = "single modality"
CLEAN = "CAMMSR"
NOISE_BASELINE = {NOISY: CLEAN, NOISY_PRIOR: PRIOR}  # noisy variant -> the clean variant it is compared with
# The first version's choices (before the scale, ID-path, gate and contrastive fixes), for comparison.
FIRST_VERSION = {
    "dyt_unit_gain": False, "input_norm": "dyt", "id_path": "expert", "id_dropout_prob": 0.5, "gate_norm": False,
    "category_from": "item", "category_prior": True, "cl_false_negatives": False, "cl_warmup_steps": 0,
    "swap_mode": "sources", "synergy_residual": False, "cl_rows": 1.0,
}


def dataset_settings(dataset: str) -> dict:
    """The plugin's dataset yaml (modalities, category_field, load_col), or {}."""
    path = resources.dataset_yaml(dataset)
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def first_modality_only(name: str, config: dict, args) -> dict:
    """The single-modality ablation keeps only the first of the configured (or the dataset's) modalities."""
    if name != SINGLE:
        return config
    modalities = config.get("modalities") or dataset_settings(args.dataset).get("modalities")
    if not modalities:
        raise SystemExit(f"'{SINGLE}' needs the dataset's modalities (none in properties/dataset/{args.dataset}.yaml): pass --set modalities=[...]")
    return {**config, "modalities": list(modalities)[:1]}


# ----- category noise -------------------------------------------------------------------------


def perturb_categories(source_folder: str, target_folder: str, dataset: str, field: str, share: float, seed: int) -> int:
    """Copy ``<dataset>.item`` with ``field`` of ``share`` of the items replaced by a different random
    draw (as many distinct categories as the item had, from the field's vocabulary); link every other
    file of the dataset folder. Returns how many items were changed."""
    os.makedirs(target_folder, exist_ok=True)
    for name in os.listdir(source_folder):
        if name != f"{dataset}.item":
            os.symlink(os.path.abspath(os.path.join(source_folder, name)), os.path.join(target_folder, name))
    with open(os.path.join(source_folder, f"{dataset}.item"), encoding="utf-8") as handle:
        header, *rows = handle.read().splitlines()
    columns = [column.split(":")[0] for column in header.split("\t")]
    if field not in columns:
        raise SystemExit(f"category field '{field}' is not a column of {dataset}.item ({columns})")
    index = columns.index(field)
    cells = [row.split("\t") for row in rows]
    vocabulary = sorted({token for cell in cells for token in cell[index].split()})
    rng = random.Random(seed)
    changed = rng.sample(range(len(cells)), int(round(share * len(cells))))
    for row in changed:
        original = cells[row][index].split()
        count = min(max(1, len(original)), len(vocabulary))
        drawn = rng.sample(vocabulary, count)
        while set(drawn) == set(original) and count < len(vocabulary):  # a replacement must differ
            drawn = rng.sample(vocabulary, count)
        cells[row][index] = " ".join(drawn)
    with open(os.path.join(target_folder, f"{dataset}.item"), "w", encoding="utf-8") as handle:
        handle.write("\n".join([header] + ["\t".join(cell) for cell in cells]) + "\n")
    return len(changed)


def noisy_data_path(args, name: str, config: dict, scratch: str) -> Optional[str]:
    """For the noise variant: a temporary data folder holding the perturbed copy of ``args.dataset``."""
    if name not in NOISE_BASELINE:
        return None
    root = args.data_path or resources.bundled_dataset_root(args.dataset)
    if root is None:
        raise SystemExit(f"cannot find {args.dataset}/: pass --data-path")
    field = config.get("category_field") or dataset_settings(args.dataset).get("category_field")
    scratch = os.path.join(scratch, name.replace(" ", "_").replace(",", ""))
    changed = perturb_categories(os.path.join(root, args.dataset), os.path.join(scratch, args.dataset), args.dataset, field, args.noise, args.seed)
    print(f"[cammsr-bench] {name}: '{field}' of {changed} items replaced at random", file=sys.stderr, flush=True)
    return scratch


def drop_vs_clean(name: str, row: dict, rows: dict) -> str:
    """NDCG@10 drop of a CAMMSR variant against clean CAMMSR (a noisy variant: against its clean
    counterpart; blank for other models)."""
    clean, value = rows.get(NOISE_BASELINE.get(name, CLEAN), {}).get("ndcg@10"), row.get("ndcg@10")
    if SUITE.variants[name][0] != "CAMMSR" or name == CLEAN or value is None or not clean:
        return ""
    return f"{100 * (clean - value) / clean:+.1f}%"


SUITE = ablation.AblationSuite(
    name="cammsr",
    description=__doc__,
    full_variant=CLEAN,
    variants={
        "SASRec": ("SASRec", {}),
        "SASRecMM": ("SASRecMM", {}),
        CLEAN: ("CAMMSR", {}),
        "w/o category guidance": ("CAMMSR", {"cat_weight": 0.0}),
        "category weight 0.3": ("CAMMSR", {"cat_weight": 0.3}),  # the category task carries cold items: more of it
        "category weight 1.0": ("CAMMSR", {"cat_weight": 1.0}),
        "w/o swap CL": ("CAMMSR", {"cl_weight": 0.0}),
        "LayerNorm (no DyT)": ("CAMMSR", {"norm": "layernorm"}),
        "DyT gamma 1 (no unit gain)": ("CAMMSR", {"dyt_unit_gain": False}),
        "w/o gate (mean)": ("CAMMSR", {"gating": "mean"}),
        "raw gate (no gate_norm)": ("CAMMSR", {"gate_norm": False}),
        "category head on z": ("CAMMSR", {"category_from": "item"}),
        "ID as gated expert": ("CAMMSR", {"id_path": "expert"}),
        "w/o synergy experts": ("CAMMSR", {"synergy_experts": False}),
        "CL w/o false-negative mask": ("CAMMSR", {"cl_false_negatives": False}),
        "swap re-runs experts": ("CAMMSR", {"swap_mode": "sources"}),
        "DyT input (no LayerNorm input)": ("CAMMSR", {"input_norm": "dyt"}),
        "synergy w/o residual": ("CAMMSR", {"synergy_residual": False}),
        "CL w/o warm-up": ("CAMMSR", {"cl_warmup_steps": 0}),
        "CL on all rows": ("CAMMSR", {"cl_rows": 1.0}),
        "LayerNorm + CL w/o warm-up": ("CAMMSR", {"norm": "layernorm", "cl_warmup_steps": 0}),  # the two best on dense
        "LayerNorm at lr 0.003": ("CAMMSR", {"norm": "layernorm", "learning_rate": 0.003}),  # SASRec's and SASRecMM's dense lr
        "LayerNorm at dropout 0.5": ("CAMMSR", {"norm": "layernorm", "dropout": 0.5}),  # this and the next: LayerNorm's dropout-0.5 grid points
        "LayerNorm at lr 0.003 dropout 0.5": ("CAMMSR", {"norm": "layernorm", "learning_rate": 0.003, "dropout": 0.5}),
        "input ID dropout 0.2": ("CAMMSR", {"id_dropout_prob": 0.2}),  # these three: levers on content for rare items
        "MLP projection": ("CAMMSR", {"projection": "mlp"}),
        "feature dropout 0.3": ("CAMMSR", {"feature_dropout_prob": 0.3}),
        "feature dropout 0": ("CAMMSR", {"feature_dropout_prob": 0.0}),
        "patience 10": ("CAMMSR", {"stopping_step": 10}),  # these two: does the cold-item score follow the stopping epoch?
        "SASRecMM patience 10": ("SASRecMM", {"stopping_step": 10}),
        "SASRec patience 10": ("SASRec", {"stopping_step": 10}),
        "GRU4Rec patience 10": ("GRU4Rec", {"stopping_step": 10}),
        "first-version settings": ("CAMMSR", FIRST_VERSION),
        PRIOR: ("CAMMSR", {"category_prior": True}),
        SINGLE: ("CAMMSR", {}),  # the first modality alone (first_modality_only)
        NOISY: ("CAMMSR", {}),
        NOISY_PRIOR: ("CAMMSR", {"category_prior": True}),
    },
    metrics=("recall@5", "recall@10", "ndcg@5", "ndcg@10"),
    config_extras={"topk": [5, 10], "metrics": ["Recall", "NDCG"]},
    extra_options=(("--noise", dict(type=float, default=0.2, help="share of items whose category is replaced at random")),),
    prepare_config=first_modality_only,
    data_path_for=noisy_data_path,
    own_data_variants=tuple(NOISE_BASELINE),
    extra_column=("NDCG@10 drop vs CAMMSR", drop_vs_clean),
    settings_extra=lambda args: f"category noise {args.noise:.0%}",
)


# ----- --diagnose: scale, gradients and step time at initialisation -------------------------------


def _diagnose_args(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.cammsr --diagnose")
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument("--dataset", default="ml-100k-mm")
    parser.add_argument("--data-path", help="folder holding <dataset>/ (the bundled set needs none)")
    parser.add_argument("--profile", default="quick", help="batch size, MAX_ITEM_LIST_LENGTH, hidden size, lr from this profile")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per round and model")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the median is reported)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every model (yaml value), repeatable")
    return parser.parse_args(argv)


class _Diagnosis:
    """The models of ``--diagnose`` built on one dataset, and the measurements on its batches."""

    MODELS = {"SASRec": ("SASRec", {}), "SASRecMM": ("SASRecMM", {}), CLEAN: ("CAMMSR", {}),
              "CAMMSR, first-version settings": ("CAMMSR", FIRST_VERSION)}

    def __init__(self, args):
        from recbole.data import create_dataset, data_preparation

        from recbole_mm.bench.profiles import get_profile

        self.args = args
        self.profile = get_profile(args.profile)
        self.data_path = args.data_path or resources.bundled_dataset_root(args.dataset)
        config = self.config("CAMMSR")
        train, _, _ = data_preparation(config, create_dataset(config))
        self.dataset = train._dataset
        self.batches = [batch for _, batch in zip(range(args.steps + 1), train)]

    def config(self, model: str, overrides: Optional[dict] = None):
        from recbole.config import Config

        from recbole_mm.bench.profiles import model_config
        from recbole_mm.registry import plugin_overall_defaults

        settings = {**model_config(model, self.profile), "seed": self.args.seed, "state": "WARNING",
                    **ablation.parse_overrides(self.args.overrides), **(overrides or {})}
        if self.data_path:
            settings["data_path"] = self.data_path
        with plugin_overall_defaults():
            return Config(model=model, dataset=self.args.dataset, config_dict=settings)

    def build(self, model: str, overrides: dict):
        from recbole.utils import get_model, init_seed

        init_seed(self.args.seed, True)
        return get_model(model)(self.config(model, overrides), self.dataset)

    def init_scale(self, model):
        """``(user-vector rms, logit std)`` on the first batch, eval mode."""
        import torch

        batch = self.batches[0]
        model.eval()
        with torch.no_grad():
            user = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
            items = model.item_vectors(torch.arange(model.n_items)) if hasattr(model, "item_vectors") else model.item_embedding.weight
            return float(user.pow(2).mean().sqrt()), float((user @ items.t()).std())

    def step_times(self, models: dict) -> dict:
        """Median CPU ms per training step of each model, rounds interleaved."""
        from recbole_mm.bench.speed import interleaved_cpu_ms, training_task

        tasks = {name: training_task(model, self.batches[1:], self.profile.learning_rate) for name, model in models.items()}
        return interleaved_cpu_ms(tasks, self.args.rounds)

    def gate_and_gradients(self, model) -> str:
        """One line on the gate, the gradient balance and the swap of a fresh CAMMSR."""
        import torch

        items = torch.arange(model.n_items)
        model.eval()
        with torch.no_grad():
            mixture = model.item_mixture(items)
            evaluated = mixture.weights[1:].mean(0)
            swapped = model.mixture.swapped(mixture, model.swap_mode)
            swap_change = float(((swapped - mixture.mixed).norm(dim=-1) / mixture.mixed.norm(dim=-1).clamp_min(1e-12))[1:].mean())
        model.train()
        model.cl_warmup_steps = 0  # full contrastive weight, as after the warm-up
        torch.manual_seed(self.args.seed)
        ce, category, contrastive = model.calculate_loss(self.batches[0])
        with torch.no_grad():
            trained = model.gate_weights(items)[1:].mean(0)
        encoder = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
        gate = [p for n, p in model.named_parameters() if n.startswith("mixture.query") or n.endswith("log_temperature")]

        def norm(loss, params):
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            return float(sum(g.pow(2).sum() for g in grads if g is not None) ** 0.5)

        weights = lambda w: "/".join(f"{x:.2f}" for x in w.tolist())  # noqa: E731
        return (f"experts {'/'.join(model.mixture.expert_names)}; gate means eval {weights(evaluated)}, train {weights(trained)}; "
                f"|grad| on the encoder: CE {norm(ce, encoder):.2e}, weighted CL {norm(contrastive, encoder):.2e} "
                f"(ratio {norm(contrastive, encoder) / norm(ce, encoder):.2f}); |grad| on the gate from the weighted category loss "
                f"{norm(category, gate):.1e}; the swap changes item vectors by {100 * swap_change:.1f}%")


def diagnose(argv=None) -> int:
    """``--diagnose``: print the init-scale / step-time table and the gate lines (see the module doc)."""
    import tempfile

    import torch

    args = _diagnose_args(argv)
    torch.set_num_threads(args.threads)
    previous_cwd, previous_argv = os.getcwd(), sys.argv
    with tempfile.TemporaryDirectory(prefix="cammsr_diagnose_") as scratch:
        os.chdir(scratch)  # RecBole writes log folders into cwd and reads --key=value from argv
        sys.argv = sys.argv[:1]
        try:
            diagnosis = _Diagnosis(args)
            models = {name: diagnosis.build(model, overrides) for name, (model, overrides) in _Diagnosis.MODELS.items()}
            scales = {name: diagnosis.init_scale(model) for name, model in models.items()}
            lines = [diagnosis.gate_and_gradients(models[name]) for name in (CLEAN, "CAMMSR, first-version settings")]
            models = {name: diagnosis.build(model, overrides) for name, (model, overrides) in _Diagnosis.MODELS.items()}  # fresh for timing
            times = diagnosis.step_times(models)
        finally:
            os.chdir(previous_cwd)
            sys.argv = previous_argv
    (rms, logits), reference_time = scales["SASRec"], times["SASRec"]
    print("| model | user rms at init | vs SASRec | logit std at init | vs SASRec | train step CPU ms | vs SASRec |")
    print("|---|---|---|---|---|---|---|")
    for name, (user_rms, logit_std) in scales.items():
        print(f"| {name} | {user_rms:.4f} | {user_rms / rms:.2f}x | {logit_std:.4f} | {logit_std / logits:.2f}x | "
              f"{times[name]:.0f} | {times[name] / reference_time:.2f}x |")
    print()
    for name, line in zip((CLEAN, "CAMMSR, first-version settings"), lines):
        print(f"- {name}: {line}")
    print(f"\nSettings: dataset {args.dataset}, profile {args.profile} (batch {diagnosis.profile.train_batch_size}, "
          f"MAX_ITEM_LIST_LENGTH {diagnosis.profile.max_len}, hidden {diagnosis.profile.hidden_size}), seed {args.seed}, "
          f"threads {args.threads}, {args.steps} steps x {args.rounds} rounds.")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--diagnose" in argv:
        return diagnose(argv)
    return ablation.main(SUITE, argv)


if __name__ == "__main__":
    sys.exit(main())
