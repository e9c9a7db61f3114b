"""The files of a run folder, and the CSV logs that training writes into it step by step
(docs/architecture.md, Training).

A run lives in one folder:

    checkpoint.safetensors   the latest full training state (train_state.py), written
                             every ``checkpoint_every`` steps and at the end
    model.safetensors        weights and config only (what ``MaskRCNN.from_checkpoint``,
                             ``tinymaskrcnn predict`` and ``evaluate`` read), at the end
    log.csv                  one row per step: lr, the five losses, their sum, seconds,
                             and those seconds split into compute, transfer and update
                             (StepTime)
    eval.csv                 COCO AP of the held-out set every ``eval_every`` steps

Shapes used below:
    S: rows of a log (the steps it logged)

The logs are appended a row at a time and flushed, so that they survive a Ctrl-C, and a
resumed run first drops the rows written after the checkpoint it resumes from, so that a
log never holds a step twice.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from .atomic_file import write_atomically
from .model import LOSS_NAMES

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
LOG = "log.csv"
EVAL_LOG = "eval.csv"
LOG_COLUMNS = ["step", "lr", *LOSS_NAMES, "loss", "seconds", "compute", "transfer", "update"]
EVAL_COLUMNS = [
    "step",
    *(f"{t}_{m}" for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75")),
]


@dataclass
class StepTime:
    """Where a step's seconds went (log.csv's compute, transfer and update columns)."""

    compute: float  # batch, forward and backward (with workers: the slowest worker's)
    transfer: float  # weights out, gradients back, waiting on workers (0 in one process)
    update: float  # summing gradients and the optimizer step


class RunLogs:
    """log.csv and eval.csv of the run folder ``out_dir``, for a run that starts (or
    resumes) after step ``start``; close() when done."""

    def __init__(self, out_dir, start: int):
        self._steps = _CsvLog(os.path.join(out_dir, LOG), LOG_COLUMNS, start)
        self._evals = _CsvLog(os.path.join(out_dir, EVAL_LOG), EVAL_COLUMNS, start)

    def write_step(self, step, lr, losses, total, seconds, times):
        """A row of log.csv: the step completed, its rate, its losses (LOSS_NAMES ->
        float), their sum ``total``, how long it took and where that went (``times``,
        a StepTime)."""
        values = [f"{losses[k]:.6f}" for k in LOSS_NAMES]
        split = [f"{t:.4f}" for t in (times.compute, times.transfer, times.update)]
        self._steps.write([step, f"{lr:.6g}", *values, f"{total:.6f}", f"{seconds:.3f}", *split])

    def write_eval(self, step, metrics):
        """A row of eval.csv from ``evaluate.evaluate``'s dict (empty where it has None)."""
        row = [step]
        for column in EVAL_COLUMNS[1:]:
            iou_type, name = column.split("_")
            value = metrics.get(iou_type, {}).get(name)
            row.append("" if value is None else f"{value:.4f}")
        self._evals.write(row)

    def close(self):
        self._steps.close()
        self._evals.close()


class _CsvLog:
    """A CSV file with a header, appended row by row and flushed. Opened for a run that
    resumes after step ``start``, it keeps the rows up to that step and drops the rest."""

    def __init__(self, path, columns, start):
        kept = []
        if start and os.path.exists(path):
            with open(path, newline="") as f:
                kept = [row for row in csv.reader(f)][1:]
            kept = [row for row in kept if row and int(row[0]) <= start]
            # A log written before a column was added: its rows get that cell empty.
            kept = [row + [""] * (len(columns) - len(row)) for row in kept]
        text = io.StringIO(newline="")
        csv.writer(text).writerows([columns, *kept])
        write_atomically(path, lambda f: f.write(text.getvalue().encode("utf-8")))
        self._file = open(path, "a", newline="")
        self._writer = csv.writer(self._file)

    def write(self, row):
        self._writer.writerow(row)
        self._file.flush()

    def close(self):
        self._file.close()


def read_log(path) -> dict[str, np.ndarray]:
    """A run's log.csv (or eval.csv) as column name -> (S,) float array (empty cells NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{os.fspath(path)!r} is empty: no header row")
    header, body = rows[0], rows[1:]
    return {
        name: np.array([float(r[i]) if r[i] != "" else np.nan for r in body], dtype=np.float64)
        for i, name in enumerate(header)
    }
