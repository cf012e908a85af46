"""A study's trial inside its training job: the objective reported at each evaluation, pruning.

``llamantino search`` runs each trial as an ordinary training run whose recipe names the study's
journal (``llamantino_trial``). At each evaluation global rank 0 reports the objective (the eval
metric the study optimises) to the journal as the trial's intermediate value and appends it to
``output/llamantino_trial.json``, the trial's own record the study's tell step reads. With a pruner,
Optuna compares the value with the other trials' at that step and may prune: the trial stops like
a finished one (its model saved), marked pruned in that record. Every rank stops together: the
decision is broadcast. Training that ends after its last evaluation is evaluated once more, so the
objective is the final model's.

Optuna's JournalStorage file backend locks the journal itself, so the concurrent trials of a job
array report safely on a shared file system.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from transformers import TrainerCallback

RECORD = "llamantino_trial.json"  # in the output folder: the objective at each evaluation, and whether pruned


def pruner_of(kind: str, startup_trials: int):
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def report(spec, step: int, value: float) -> bool:
    """Report ``value`` at ``step`` for the trial; whether the pruner stops it. A trial the study
    already finished (a resumed job of a told trial) is left as it is."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(spec.journal))
    study = optuna.load_study(study_name=spec.study, storage=storage,
                              pruner=pruner_of(spec.pruner, spec.startup_trials))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, spec.number)
    if storage.get_trial(trial_id).state.is_finished():
        return False
    trial = optuna.trial.Trial(study, trial_id)
    trial.report(value, step)
    return trial.should_prune()


class TrialReport(TrainerCallback):
    def __init__(self, spec, trainer) -> None:
        self.spec = spec
        self.trainer = trainer
        self.evaluated_at = None
        self.pruned = False

    def _record(self, args, step: int, value: float) -> None:
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / RECORD
        try:
            values = json.loads(path.read_text()).get("values", []) if path.is_file() else []
        except (ValueError, AttributeError):
            values = []
        values = [item for item in values if isinstance(item, list) and item and item[0] != step] + [[step, value]]
        tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"trial": self.spec.number, "metric": self.spec.metric, "values": values,
                                   "pruned": self.pruned}))
        os.replace(tmp, path)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import torch

        from llamantino_plugin.ranks import collective_device, process_group

        dist = process_group()
        rank = dist.get_rank() if dist else 0
        self.evaluated_at = state.global_step
        prune = False
        value = (metrics or {}).get(self.spec.metric)
        reported = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if rank == 0 and reported:
            prune = report(self.spec, int(state.global_step), float(value)) and not self.pruned
            print(f"llamantino: trial {self.spec.number}: {self.spec.metric}={value:.4f} at step "
                  f"{state.global_step} reported to the study" + ("; pruned" if prune else ""), flush=True)
        if dist:
            decision = torch.tensor([1 if prune else 0], device=collective_device(dist))
            dist.broadcast(decision, src=0)
            prune = bool(decision.item())
        if prune:
            self.pruned = True
            control.should_training_stop = True
        if rank == 0 and reported:
            self._record(args, int(state.global_step), float(value))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if not self.pruned and self.evaluated_at != state.global_step and self.trainer.eval_dataset is not None:
            self.trainer.evaluate()  # the objective of the final model (on_evaluate reports it)
        return control
