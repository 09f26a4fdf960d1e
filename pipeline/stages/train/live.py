"""Per-epoch training metrics with dvclive (DVC's own logger), in its layout, as each epoch ends.

``dvclive/metrics.json`` holds the latest epoch (``step`` = epoch number, from 1) and
``dvclive/plots/metrics/{train_loss,val_loss,val_accuracy}.tsv`` one row per epoch so far. dvc.yaml
declares them as the train stage's metrics and plots, so ``dvc exp show`` shows the running epoch while
``dvc exp run`` trains, and ``dvc plots show`` / ``dvc plots diff`` draw the curves of every experiment.

dvclive is told to leave dvc.yaml alone (the pipeline declares its outputs) and to save no experiment of
its own (``dvc exp run`` does that), and, unless the user says otherwise, DVC Studio is kept offline:
this project's commands never reach out to the internet unasked.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.stages.train.loop import EpochStats

DVCLIVE_DIR = Path("dvclive")
#: what each epoch logs (EpochStats fields); timings stay in metrics/train.json, out of the curves
LOGGED = ("train_loss", "val_loss", "val_accuracy")


@contextmanager
def epoch_logger(folder: Path = DVCLIVE_DIR) -> Iterator[Callable[[EpochStats], None]]:
    """A callback for :func:`~pipeline.stages.train.loop.fine_tune` that logs each epoch to ``folder``
    (emptied first: a run's curves are that run's only)."""
    os.environ.setdefault("DVC_STUDIO_OFFLINE", "true")
    from dvclive import Live  # imported here: it loads DVC, which only the training run needs

    live = Live(dir=str(folder), save_dvc_exp=False, dvcyaml=False, report=None)

    def log(stats: EpochStats) -> None:
        live.step = stats.epoch
        for name in LOGGED:
            live.log_metric(name, getattr(stats, name))
        live.make_summary()

    try:
        yield log
    finally:
        live.end()
