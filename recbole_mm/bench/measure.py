"""What a benchmark run measures beyond RecBole's metrics: the test rankings under both ranking
protocols, per-user NDCG@10, cold-item and history metrics, peak memory. The metric key constants
of a run row live here.

Two ranking protocols, both from the same scores of the same trained model:

- ``full``: RecBole's ranking of every item (padding id excluded);
- ``excl``: the items of the user's input sequence left out (``exclude_history: True``, see
  :mod:`recbole_mm.evaluation`); a target that repeats one of them is a miss.

A run is trained (early stopping) and tested under the protocol its config names; the other one is
measured from the same rankings, so it costs no second training.
"""

import collections
import sys
import time
from typing import Dict, Optional

METRIC_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10")
COLD_KEYS = ("cold_recall@10", "cold_ndcg@10")
PROTOCOLS = ("full", "excl")
PROTOCOL_NAMES = {"full": "all items ranked (RecBole)", "excl": "input history left out"}
# How a run's top 10 treats the input history, the share of test targets that repeat an item of
# it, and Recall / NDCG @10 under each protocol.
HISTORY_KEYS = ("history_in_top10", "repeat_share") + tuple(
    f"{protocol}_{metric}@10" for protocol in PROTOCOLS for metric in ("recall", "ndcg")
)
NOT_RUN = "not run yet"  # the error of a row whose run is not in the cache (report-only)
PER_USER_KEY = "per_user"  # {"users": [user tokens, sorted], "full": [NDCG@10], "excl": [NDCG@10], "cold": [tokens]}
COLD_USERS_KEY = "cold"  # in a per-user record: the tokens of the cold-item test users (the cold metrics' users)
PER_USER_DIGITS = 5
TIMING_REPEATS = 3  # full-sort scoring runs per test batch; the fastest counts

Rankings = collections.namedtuple("Rankings", "full excl targets users repeats history_in_top seconds")
Rankings.__doc__ = """Per test user: 0-based target rank under each protocol (a repeated target is
``n_items`` under ``excl``), target item, user id, whether the target repeats the input, how many
input items the full ranking puts in the top 10; and the seconds spent scoring."""


def rank_test_targets(trainer, test_data, k: int = 10) -> Rankings:
    """Rank every test target among all items, scored exactly as RecBole's full-sort evaluation.

    Uses the trainer's ``_full_sort_batch_eval`` (the model's ``full_sort_predict`` or RecBole's
    predict fallback, RecBole's padding mask) with history exclusion switched off for the call, and
    derives both protocols from those scores. The first batch runs once untimed to warm up; each
    batch counts with the fastest of ``TIMING_REPEATS`` runs, so a load spike of another process
    on a shared machine does not land in the figure.
    """
    import torch

    from recbole_mm.evaluation import history_mask

    trainer.model.eval()
    synchronize = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sequence_field = getattr(trainer.model, "ITEM_SEQ", None)
    user_field = trainer.config["USER_ID_FIELD"]
    excluding = getattr(trainer, "exclude_history", False)
    parts, seconds = [], 0.0
    try:
        trainer.exclude_history = False
        with torch.no_grad():
            for index, batch in enumerate(test_data):
                if index == 0:
                    trainer._full_sort_batch_eval(batch)
                fastest = float("inf")
                for _ in range(TIMING_REPEATS):
                    synchronize()
                    start = time.perf_counter()
                    interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
                    synchronize()
                    fastest = min(fastest, time.perf_counter() - start)
                seconds += fastest
                rows, items = positive_u.to(scores.device), positive_i.to(scores.device)
                row_scores = scores[rows]
                target = row_scores.gather(1, items.unsqueeze(1))
                full = (row_scores > target).sum(dim=1)
                if sequence_field is not None and sequence_field in interaction:
                    seen = history_mask(interaction[sequence_field].to(scores.device)[rows], scores.shape[1])
                else:
                    seen = torch.zeros_like(row_scores, dtype=torch.bool)
                repeats = seen.gather(1, items.unsqueeze(1)).squeeze(1)
                excl = (row_scores.masked_fill(seen, float("-inf")) > target).sum(dim=1)
                excl = torch.where(repeats, torch.full_like(excl, scores.shape[1]), excl)
                in_top = seen.gather(1, row_scores.topk(min(k, row_scores.shape[1]), dim=1).indices).sum(dim=1)
                users = interaction[user_field].to(scores.device)[rows]
                parts.append([t.cpu() for t in (full, excl, positive_i, users, repeats, in_top)])
    finally:
        trainer.exclude_history = excluding
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return Rankings(empty, empty, empty, empty, empty.bool(), empty, seconds)
    return Rankings(*(torch.cat(column) for column in zip(*parts)), seconds)


def ndcg_gains(ranks, k: int = 10):
    """Per-user NDCG@k of single-target rankings (0-based target ranks)."""
    import torch

    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    return torch.where(ranks < k, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))


def rank_metrics(ranks, k: int = 10) -> Dict[str, Optional[float]]:
    """Recall@k and NDCG@k of single-target rankings given 0-based target ranks."""
    import torch

    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    if ranks.numel() == 0:
        return {f"recall@{k}": None, f"ndcg@{k}": None}
    return {f"recall@{k}": float((ranks < k).double().mean()), f"ndcg@{k}": float(ndcg_gains(ranks, k).mean())}


def protocol_metrics(rankings: Rankings, k: int = 10) -> dict:
    """The ``HISTORY_KEYS`` fields of a run (``{}`` when nothing was ranked)."""
    if rankings.full.numel() == 0:
        return {}
    metrics = {
        f"history_in_top{k}": float(rankings.history_in_top.double().mean()),
        "repeat_share": float(rankings.repeats.double().mean()),
    }
    for protocol in PROTOCOLS:
        for name, value in rank_metrics(getattr(rankings, protocol), k).items():
            metrics[f"{protocol}_{name}"] = value
    return metrics


def per_user_ndcg(rankings: Rankings, user_tokens, k: int = 10, cold=None) -> dict:
    """``{"users": tokens, "full": [...], "excl": [...]}``, ordered by user token (a key stable across
    models and runs on the same data; RecBole's internal ids are not meant to be compared). With
    ``cold`` (a boolean mask over the users, see :func:`cold_mask`), also ``"cold"``: the tokens of
    the cold-item users, so that a report can pair models on them."""
    order = sorted(range(len(user_tokens)), key=lambda index: str(user_tokens[index]))
    per_user = {"users": [str(user_tokens[index]) for index in order]}
    for protocol in PROTOCOLS:
        gains = ndcg_gains(getattr(rankings, protocol), k).tolist()
        per_user[protocol] = [round(gains[index], PER_USER_DIGITS) or 0 for index in order]  # 0, not 0.0: compact JSON
    if cold is not None:
        per_user[COLD_USERS_KEY] = [per_user["users"][position] for position, index in enumerate(order) if bool(cold[index])]
    return per_user


def train_item_counts(train_data, config):
    """How often each item is the target of a training sequence (its training interactions)."""
    import torch

    dataset = train_data._dataset
    items = dataset.inter_feat[config["ITEM_ID_FIELD"]]
    return torch.bincount(torch.as_tensor(items).long(), minlength=dataset.item_num)


def cold_mask(targets, item_counts, cold_max_count: int):
    """Which test users are cold-item users: their target is in at most ``cold_max_count`` training sequences."""
    return item_counts[targets] <= cold_max_count


def cold_metrics(ranks, targets, item_counts, cold_max_count: int, k: int = 10) -> dict:
    """Recall@k / NDCG@k over the test users whose target is in at most ``cold_max_count`` training sequences."""
    cold = cold_mask(targets, item_counts, cold_max_count)
    metrics = rank_metrics(ranks[cold], k)
    return {
        "cold_max_count": cold_max_count,
        "cold_users": int(cold.sum()),
        f"cold_recall@{k}": metrics[f"recall@{k}"],
        f"cold_ndcg@{k}": metrics[f"ndcg@{k}"],
    }


def machine_id() -> str:
    """The machine a run's timings belong to: this boot of this host (Linux's boot id), else the host
    name. Step times of two runs are comparable only when they share it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        import platform

        return platform.node() or "unknown"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to here (``AVX512``, ``AVX2``, ``DEFAULT``, ...;
    the ``ATEN_CPU_CAPABILITY`` environment variable can lower it). Kernels of two capabilities round
    differently, so a seeded run is bit-identical only where it matches, and a chaotic early phase can
    turn the rounding into a different trajectory: the bench records it for every epoch."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def same_machine(*runs_machines) -> bool:
    """Whether timings of groups of runs (each a set of :func:`machine_id` values, None = not recorded)
    may be compared: all known ids are one, and a known id never meets an unrecorded one. Groups that
    all predate the record compare as before."""
    machines = set().union(*runs_machines)
    return not (machines - {None}) or len(machines) == 1


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM on Linux, else ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
