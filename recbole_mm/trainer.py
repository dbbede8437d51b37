"""The plugin models' trainer: RecBole's ``Trainer`` plus resumable checkpoints and clear faults.

Registered as ``recbole.trainer.<Model>Trainer`` for every plugin model that names no trainer of
its own (see :mod:`recbole_mm.registry`), so stock ``run_recbole`` uses it too. On top of RecBole:

* ``checkpoint_every_epoch: True`` writes ``<checkpoint_dir>/<Model>-<time>-last.pth`` after every
  epoch (weights, optimizer, early-stopping state, best valid result, and the random generators of
  every process). ``resume_file: <path>`` (``run_recbole_mm.py --resume <path>``) continues from it;
  on one process the resumed run ends exactly as the uninterrupted one. RecBole's own best-model
  file (``saved=True``) is still written and still what the final test loads.
* A NaN / Inf loss stops training naming the loss term (``train_loss<i>`` of RecBole's log, or the
  model's ``loss_names``), the epoch and the batch; RecBole only says ``Training loss is nan``.
* Loading a checkpoint of another model or dataset (``resume_file``, ``evaluate(model_file=...)``)
  raises :class:`CheckpointMismatchError` saying what was saved and what this run is.
* Under DDP all processes use rank 0's checkpoint file name and wait for its writes, so every rank
  reloads the same, complete best model.
* ``exclude_history: True`` ranks without the items of the user's input sequence (validation and
  test; see :mod:`recbole_mm.evaluation`). Off by default: RecBole's ranking.
"""

import os
import random

import numpy as np
import torch
import torch.distributed as dist
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_mm import compat
from recbole_mm.evaluation import HistoryExclusion


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to this run's model or dataset."""


class NonFiniteLossError(ValueError):
    """A loss term became NaN or Inf during training (a ``ValueError``, as RecBole raises)."""


def load_checkpoint(path, map_location="cpu"):
    """Read a RecBole checkpoint (it pickles the whole ``Config``; only load files you trust)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with compat.full_unpickling_for_recbole_checkpoints():
        checkpoint = torch.load(path, map_location=map_location, weights_only=False, mmap=True)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointMismatchError(f"{path} is not a RecBole checkpoint (it has no 'config' and 'state_dict')")
    return checkpoint


def _shape_mismatches(saved, current):
    problems = [f"missing '{key}'" for key in current if key not in saved]
    problems += [f"unexpected '{key}'" for key in saved if key not in current]
    problems += [
        f"'{key}' is {tuple(saved[key].shape)} in the checkpoint, {tuple(value.shape)} here"
        for key, value in current.items()
        if key in saved and tuple(saved[key].shape) != tuple(value.shape)
    ]
    return problems


def check_checkpoint(checkpoint, config, model, path):
    """Raise :class:`CheckpointMismatchError` unless ``checkpoint`` was saved by this model on this dataset."""
    saved_model, saved_dataset = checkpoint["config"]["model"], checkpoint["config"]["dataset"]
    if str(saved_model).lower() != str(config["model"]).lower() or saved_dataset != config["dataset"]:
        raise CheckpointMismatchError(
            f"checkpoint {path} was saved by {saved_model} on dataset '{saved_dataset}', but this run is "
            f"{config['model']} on dataset '{config['dataset']}': run with --model {saved_model} "
            f"--dataset {saved_dataset}, or pass a checkpoint of {config['model']} on '{config['dataset']}'"
        )
    problems = _shape_mismatches(checkpoint["state_dict"], model.state_dict())
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} ({saved_model} on '{saved_dataset}') does not fit this model: "
            + "; ".join(problems[:3])
            + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
            + ". The dataset files or the model's hyper-parameters (hidden_size, modalities, ...) differ from the saved run."
        )


def rng_state(train_data):
    """Every random generator a training epoch draws from, for an exact resume."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
        "loader": train_data.generator.get_state() if getattr(train_data, "generator", None) is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, train_data):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if state.get("loader") is not None and getattr(train_data, "generator", None) is not None:
        train_data.generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_file_for(saved_model_file):
    """``saved/MUFASA-Nov-23-2026_10-00-00.pth`` -> ``saved/MUFASA-Nov-23-2026_10-00-00-last.pth``."""
    stem, extension = os.path.splitext(saved_model_file)
    return f"{stem}-last{extension or '.pth'}"


class MultimodalTrainer(HistoryExclusion, Trainer):
    """RecBole's ``Trainer`` with per-epoch resumable checkpoints, named loss faults, DDP-safe saving
    and the optional history-excluded ranking."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.distributed = not config["single_spec"]
        if self.distributed:  # every rank must write / read rank 0's file, not one named by its own clock
            names = [self.saved_model_file]
            dist.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]
        self.checkpoint_every_epoch = bool(config["checkpoint_every_epoch"])
        self.resume_model_file = resume_file_for(self.saved_model_file)
        self._saving = True
        self._pending_rng = None
        self._epoch = 0
        if config["resume_file"]:
            self.resume_checkpoint(config["resume_file"])

    # ----- ranks -----------------------------------------------------------------------------

    @property
    def rank(self):
        return dist.get_rank() if self.distributed else 0

    def _barrier(self):
        if self.distributed:
            dist.barrier()

    # ----- checkpoints -------------------------------------------------------------------------

    def _checkpoint_state(self, epoch):
        """RecBole's checkpoint content (``Trainer._save_checkpoint``), so RecBole can read ours."""
        return {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's save (rank 0 writes); ``extra`` adds keys; all ranks wait until the file is complete."""
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        extra = kwargs.pop("extra", None) or {}
        if self.rank == 0:
            state = self._checkpoint_state(epoch)
            state.update(extra)
            torch.save(state, saved_model_file + ".tmp", pickle_protocol=4)
            os.replace(saved_model_file + ".tmp", saved_model_file)  # a kill mid-write leaves the old file whole
            if verbose:
                self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")
        self._barrier()

    def _save_resumable(self, epoch, train_data):
        """The state after ``epoch`` (training, evaluation and early stopping done) into ``-last.pth``."""
        states = [rng_state(train_data)]
        if self.distributed:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, rng_state(train_data))
        extra = {
            "resumable": True,
            "best_valid_result": self.best_valid_result,
            "best_model_file": os.path.abspath(self.saved_model_file),
            "rng_states": states,
        }
        self._save_checkpoint(epoch, verbose=False, saved_model_file=self.resume_model_file, extra=extra)

    def resume_checkpoint(self, resume_file):
        """RecBole's resume, after checking the file is this model's and dataset's; a ``-last.pth``
        file also restores the best valid result, the best-model file and the random generators."""
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file)
        check_checkpoint(checkpoint, self.config, self.model, resume_file)
        super().resume_checkpoint(resume_file)
        if not checkpoint.get("resumable"):
            return  # a best-model file: RecBole's semantics (it becomes this run's best-model file)
        self.saved_model_file = self._best_model_file(checkpoint["best_model_file"], resume_file)
        self.resume_model_file = resume_file
        self.best_valid_result = checkpoint["best_valid_result"]
        states = checkpoint["rng_states"]
        self._pending_rng = states[self.rank] if self.rank < len(states) else None

    @staticmethod
    def _best_model_file(recorded, resume_file):
        beside = os.path.join(os.path.dirname(os.path.abspath(resume_file)), os.path.basename(recorded))
        for candidate in (recorded, beside):
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"resume checkpoint {resume_file} belongs with the best-model file {recorded}, which is missing; "
            f"copy it next to {resume_file}"
        )

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and model_file is not None:
            check_checkpoint(load_checkpoint(model_file), self.config, self.model, model_file)
        return super().evaluate(eval_data, load_best_model=load_best_model, model_file=model_file, show_progress=show_progress)

    # ----- training ------------------------------------------------------------------------------

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._saving = saved
        if self.start_epoch >= self.epochs:  # resumed after the last epoch: keep the best-model file as it is
            saved = False
        result = super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress, callback_fn=callback_fn)
        if self._saving and self.checkpoint_every_epoch and self._epoch >= self.start_epoch:
            # training is over (all epochs, or early stopping): a resume only re-runs the final test
            self._save_resumable(self.epochs - 1, train_data)
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng, train_data)
            self._pending_rng = None
        elif self._saving and self.checkpoint_every_epoch and epoch_idx > self.start_epoch:
            self._save_resumable(epoch_idx - 1, train_data)
        self._epoch = epoch_idx
        checked = self._finite_loss(loss_func or self.model.calculate_loss, epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func=checked, show_progress=show_progress)

    def _loss_term_name(self, index, count):
        """``loss_names`` of the model (a list, or a method returning one) when it has one per term."""
        names = getattr(self.model, "loss_names", None)
        names = names() if callable(names) else names
        label = f"term {index + 1} of {count} (train_loss{index + 1} in the log)" if count > 1 else "the loss"
        if names and len(names) == count:
            return f"'{names[index]}', {label}"
        return label

    def _finite_loss(self, loss_func, epoch_idx):
        """``loss_func`` that raises :class:`NonFiniteLossError` naming the first NaN / Inf term."""
        model_name = self.config["model"]
        batch = {"index": -1}

        def checked(interaction):
            batch["index"] += 1
            losses = loss_func(interaction)
            terms = losses if isinstance(losses, tuple) else (losses,)
            if bool(torch.isfinite(torch.stack([term.detach().sum() for term in terms])).all()):
                return losses  # one device sync per batch; the per-term search below only runs on a fault
            for index, term in enumerate(terms):
                if not bool(torch.isfinite(term).all()):
                    kind = "nan" if bool(torch.isnan(term).any()) else "inf"
                    raise NonFiniteLossError(
                        f"Training loss is {kind}: {self._loss_term_name(index, len(terms))} of "
                        f"{model_name}.calculate_loss, epoch {epoch_idx}, batch {batch['index']}. "
                        "Lower learning_rate, set clip_grad_norm, check the feature files for NaN/Inf, "
                        "or set that term's weight to 0."
                    )
            return losses

        return checked
