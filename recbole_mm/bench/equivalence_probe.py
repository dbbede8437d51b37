"""Child side of :mod:`recbole_mm.bench.equivalence`: train one plugin model from a given source tree.

Run as ``python -c <this file's text> TREE SPEC_JSON`` (never imported by the package): it puts TREE
first on ``sys.path``, so ``recbole_mm`` (model, layers, yaml, RecBole fixes) comes from that tree,
then for each config of the spec trains the model with RecBole's trainer and prints one JSON line:
the tree's model fingerprint and, per config, every epoch's loss (as float hex), a sha1 of the
trained parameters and a sha1 of the full-ranking scores of the first test batch.
"""

import hashlib
import json
import sys


def _digest(tensors) -> str:
    digest = hashlib.sha1()
    for tensor in tensors:
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def probe(tree: str, spec: dict) -> dict:
    sys.path.insert(0, tree)
    import torch

    import recbole_mm  # noqa: F401  (the tree's: compat fixes and model registration)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_mm.bench.runner import model_fingerprint

    torch.set_num_threads(1)
    model = spec["model"]
    result = {"package": recbole_mm.__file__, "fingerprint": model_fingerprint(model), "configs": []}
    for overrides in spec["configs"]:
        config = Config(model=model, dataset=spec["dataset"], config_dict={**spec["base"], **overrides})
        init_seed(config["seed"], config["reproducibility"])
        train, _, test = data_preparation(config, create_dataset(config))
        init_seed(config["seed"], config["reproducibility"])
        net = get_model(model)(config, train._dataset)
        trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
        trainer.fit(train, None, verbose=False, saved=False, show_progress=False)
        losses = [float(sum(loss) if isinstance(loss, tuple) else loss).hex() for loss in trainer.train_loss_dict.values()]
        net.eval()
        with torch.no_grad():
            scores = net.full_sort_predict(next(iter(test))[0].to(net.device))
        state = net.state_dict()
        result["configs"].append({"overrides": overrides, "losses": losses,
                                  "parameters": _digest(state[name] for name in sorted(state)), "scores": _digest([scores])})
    return result


if __name__ == "__main__":
    print("EQUIVALENCE " + json.dumps(probe(sys.argv[1], json.loads(sys.argv[2]))))
