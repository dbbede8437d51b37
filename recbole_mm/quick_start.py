"""``run_recbole_mm`` and ``run_distributed``: RecBole's quick start with the plugin's defaults."""

from recbole.quick_start import run_recbole

from recbole_mm.registry import plugin_overall_defaults


def run_recbole_mm(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None):
    """Train and test ``model`` on ``dataset`` exactly as ``run_recbole`` does.

    Differences: ``properties/overall.yaml`` of the plugin is read below the model and dataset
    yaml (the user's ``config_file_list`` and ``config_dict`` still win), and the returned dict
    also names the model (what RecBole's HyperTuning expects).
    """
    with plugin_overall_defaults():
        result = run_recbole(
            model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict, saved=saved, queue=queue
        )
    result["model"] = model
    return result


def distributed_worker(rank, model, dataset, config_file_list, kwargs):
    """What each DDP process runs (RecBole's ``run_recboles`` under the plugin's defaults).

    ``torch.multiprocessing.spawn`` starts fresh interpreters that unpickle this function by name,
    which imports ``recbole_mm`` first: the compat fixes and the model registration are in place in
    every child before RecBole's quick start is imported there.
    """
    from recbole.quick_start.quick_start import run_recboles

    with plugin_overall_defaults():
        run_recboles(rank, model, dataset, config_file_list, kwargs)


def run_distributed(
    model, dataset, config_file_list=None, config_dict=None, saved=True, nproc=1, world_size=-1, ip="localhost", port="5678", group_offset=0
):
    """Multi-process training the way RecBole's ``run`` does it (torch.distributed DDP).

    Starts ``nproc`` processes on this machine with global ranks ``group_offset .. group_offset +
    nproc - 1`` of ``world_size`` (default ``nproc``); rank 0 listens on ``ip:port``. gloo on
    CPU, nccl on GPU (``gpu_id`` must then list one GPU per local process). Returns rank 0's
    result dict on the node that has rank 0 (``None`` on the others).
    """
    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {}, world_size=world_size, ip=ip, port=port, nproc=nproc, offset=group_offset)
    kwargs = {"config_dict": config_dict, "saved": saved, "queue": queue}
    mp.spawn(distributed_worker, args=(model, dataset, config_file_list, kwargs), nprocs=nproc, join=True)
    result = None if queue.empty() else queue.get()
    if result is not None:
        result["model"] = model
    return result
