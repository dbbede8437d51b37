"""``python -m recbole_mm.bench.speed``: training-step and full-ranking time of several models, measured
in one process with the models interleaved, as ratios to SASRec.

The benchmark's rows time each run on its own, so on a shared machine two rows made under different
load do not compare. Here every model is built through RecBole's pipeline on one regime's data and
config (its yaml defaults; speed does not depend on the tuned learning rate or dropout), and the
rounds alternate between the models, so a load change hits all of them alike. Times are CPU time of
this process (``time.process_time``: another process on the machine does not add to them); each
figure is the median over rounds, after one warm-up round. Training: forward, backward and Adam step
on the same training batches; inference: the trainer's full-sort scoring of the same test users
(the bench's own scoring path, history mask included).

    python -m recbole_mm.bench.speed --models SASRec,SASRecMM,MUFASA,DMAE,CAMMSR --threads 1
    python -m recbole_mm.bench.speed --regime long --models SASRec,MUFASA --steps 3
"""

import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List

from recbole_mm.bench import benchmark
from recbole_mm.bench.pipeline import scratch_run_dir, build
from recbole_mm.bench.profiles import FIRST_SEED, REGIMES, SPEED_REFERENCE


def interleaved_cpu_ms(tasks: Dict[str, Callable[[], int]], rounds: int) -> Dict[str, float]:
    """Median CPU milliseconds per unit of each task over ``rounds`` interleaved rounds (one more round
    first, untimed, to warm up). A task runs once per round and returns how many units it did."""
    times = {name: [] for name in tasks}
    for round_index in range(rounds + 1):
        for name, task in tasks.items():
            start = time.process_time()
            units = task()
            if round_index:
                times[name].append(1000.0 * (time.process_time() - start) / max(1, units))
    return {name: statistics.median(values) for name, values in times.items()}


def training_task(model, batches, learning_rate: float) -> Callable[[], int]:
    """One pass of forward, backward and Adam step over ``batches``; returns the step count."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

    def run() -> int:
        model.train()
        for batch in batches:
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            (sum(loss) if isinstance(loss, tuple) else loss).backward()
            optimizer.step()
        return len(batches)

    return run


def inference_task(trainer, test_data, batches) -> Callable[[], int]:
    """Full-sort scoring of ``batches`` of test users through the trainer; returns the user count."""
    import torch

    trainer.tot_item_num = test_data._dataset.item_num  # what RecBole's evaluate() sets before scoring
    trainer.item_tensor = test_data._dataset.get_item_feature().to(trainer.device)

    def run() -> int:
        trainer.model.eval()
        users = 0
        with torch.no_grad():
            for batch in batches:
                interaction, scores, _, _ = trainer._full_sort_batch_eval(batch)
                users += scores.shape[0]
        return users

    return run


def first(loader, count: int) -> List:
    return [batch for _, batch in zip(range(count), loader)]


def measure(regime: str, models: List[str], out: str, steps: int, eval_batches: int, rounds: int, overrides: dict) -> Dict[str, dict]:
    """``{model: {"train_ms", "infer_ms_per_user", "params"}}`` for ``models`` on ``regime``'s data."""
    table = benchmark.prepare_regime(regime, out, run_missing=False, progress=False, overrides=overrides)
    training, inference, results = {}, {}, {}
    with scratch_run_dir(sys.argv[0]):
        for model in models:
            config_dict = dict(table.config(model, None), seed=FIRST_SEED, state="WARNING")
            if table.options["data_path"]:  # generated regimes; the bundled set is found by the plugin
                config_dict["data_path"] = table.options["data_path"]
            config, net, trainer, (train_data, _, test_data) = build(model, table.dataset, config_dict)
            training[model] = training_task(net, first(train_data, steps), config["learning_rate"])
            inference[model] = inference_task(trainer, test_data, first(test_data, eval_batches))
            results[model] = {"params": sum(p.numel() for p in net.parameters() if p.requires_grad)}
        for model, value in interleaved_cpu_ms(training, rounds).items():
            results[model]["train_ms"] = value
        for model, value in interleaved_cpu_ms(inference, rounds).items():
            results[model]["infer_ms_per_user"] = value
    return results


def markdown(results: Dict[str, dict], reference: str = SPEED_REFERENCE) -> str:
    base = results.get(reference, {})
    lines = [f"| Model | Params | Train step CPU ms | vs {reference} | Full ranking CPU ms/user | vs {reference} |",
             "|---|---|---|---|---|---|"]
    for model, row in results.items():
        ratio = lambda key: f"{row[key] / base[key]:.2f}x" if base.get(key) else "-"  # noqa: E731
        lines.append(f"| {model} | {row['params']:,} | {row['train_ms']:.1f} | {ratio('train_ms')} | "
                     f"{row['infer_ms_per_user']:.3f} | {ratio('infer_ms_per_user')} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.bench.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", choices=sorted(REGIMES), default="dense", help="whose data and config (default dense)")
    parser.add_argument("--models", default="SASRec,SASRecMM,MUFASA,DMAE,CAMMSR", help="comma-separated; SASRec is the reference")
    parser.add_argument("--steps", type=int, default=5, help="training batches per round")
    parser.add_argument("--eval-batches", type=int, default=2, help="test batches (of eval_batch_size users) per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every model (yaml value), repeatable")
    parser.add_argument("--out", default="results", help="where generated regime data lives (sparse, cold)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    import torch

    import recbole_mm  # noqa: F401  (compat fixes + plugin registration)
    from recbole_mm.bench.profiles import parse_overrides

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    results = measure(args.regime, models, args.out, args.steps, args.eval_batches, args.rounds, parse_overrides(args.overrides))
    print(markdown(results))
    print(f"\nRegime {args.regime} (yaml defaults), {args.steps} training batches and {args.eval_batches} test batches per round, "
          f"median of {args.rounds} interleaved rounds, CPU time, {args.threads} thread(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
