"""``run_recbole_mm``: RecBole's ``run_recbole`` plus the plugin's CPU-sane overall defaults."""

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


def run_distributed(model, dataset, config_file_list=None, nproc=1, world_size=-1, ip="localhost", port="5678", group_offset=0):
    """Multi-process training through RecBole's own ``run`` (torch.distributed DDP)."""
    from recbole.quick_start import run

    with plugin_overall_defaults():
        return run(
            model, dataset, config_file_list=config_file_list, nproc=nproc, world_size=world_size,
            ip=ip, port=port, group_offset=group_offset,
        )
