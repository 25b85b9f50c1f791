"""The run's CSV log, and the Ctrl-C flag that lets a run stop between optimizer steps."""

from __future__ import annotations

import csv
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path


def claim_log(log_dir: Path, model: str, stamp: str) -> Path:
    """A new run's log file, <model>-<stamp>.csv, created here so that two runs started in
    the same second (side by side, one log_dir) never write one file: the second gets
    <model>-<stamp>_002.csv, which sorts after the first ('_' > '.'), and so on."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = log_dir / f"{model}-{stamp}{'' if n == 1 else f'_{n:03d}'}.csv"
        try:
            path.open("x").close()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{log_dir}: 999 logs named {model}-{stamp}*.csv already")


class CsvLog:
    """One row per logged step. Opening it at a resumed step drops the rows written after
    that step's saved state (a run killed mid-way wrote them; the resumed run writes them
    again), so the file never holds a step twice."""

    COLUMNS = ["time", "step", "tokens", "lr", "train_loss", "val_loss", "tokens_per_s", "mfu", "grad_norm"]

    def __init__(self, path: Path, keep_through: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and keep_through is not None:
            self._truncate(keep_through)
        new = not path.exists() or path.stat().st_size == 0
        self._fh = open(path, "a", newline="")
        self._w = csv.writer(self._fh)
        if new:
            self._w.writerow(self.COLUMNS)

    def _truncate(self, last_step: int) -> None:
        with open(self.path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= last_step]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def row(self, **values) -> None:
        values["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._w.writerow(["" if values.get(c) is None else values[c] for c in self.COLUMNS])
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class TrainingInterrupted(Exception):
    """Ctrl-C (or SIGTERM) arrived; the run stopped after a whole step and saved its state."""

    def __init__(self, step: int, state_dir: str):
        super().__init__(f"interrupted at step {step}; state saved in {state_dir}; "
                         f"continue with: python -m training.train --resume {state_dir}")
        self.step, self.state_dir = step, state_dir


class StopFlag:
    """While active, SIGINT/SIGTERM only set a flag that the loop reads between optimizer
    steps: a signal can no longer land between `opt.step()` and the step counter, so the
    saved state is always a whole step. A second Ctrl-C stops at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr)

    def __enter__(self) -> StopFlag:
        try:
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        except ValueError:  # not the main thread (an embedding app): signals stay as they are
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
