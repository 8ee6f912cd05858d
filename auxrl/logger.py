"""TensorBoard scalars and terminal progress."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from torch.utils.tensorboard import SummaryWriter


class Mirror(Protocol):
    """Somewhere else the scalars go (``log.wandb``: :class:`auxrl.tracking.WandbMirror`)."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


EVENT_GLOB = "events.out.tfevents.*"
PURGE_TMP = ".auxrl-purge-"  # prefix of a rewrite in progress (no "tfevents": readers skip it)
RECORD_OVERHEAD = 16  # bytes around each record of an event file: length, its CRC, the data's CRC


def purge_events(run_dir: str | Path, purge_step: int) -> int:
    """Drop the summaries logged at ``purge_step`` or later from the event files of ``run_dir``
    (those a resumed run logs again), each file rewritten atomically (a temp file, then
    ``os.replace``); file-version and session events stay. Returns the number dropped.

    TensorBoard's own reader hides them already (SummaryWriter's ``purge_step``), but the raw
    files keep them, and other readers (tbparse, ``event_file_loader``) would see every such
    step twice. A rewrite left over by a kill is removed first.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    run_dir = Path(run_dir)
    for stale in run_dir.glob(f"{PURGE_TMP}*"):
        stale.unlink(missing_ok=True)
    dropped = 0
    for path in sorted(run_dir.glob(EVENT_GLOB)):
        if not path.is_file():
            continue
        records = list(RawEventFileLoader(str(path)).Load())  # up to a truncated or corrupt record
        kept = []
        for record in records:
            event = Event.FromString(record)
            if not (event.HasField("summary") and event.step >= purge_step):
                kept.append(record)
        if len(kept) == len(records):
            continue
        # What the reader stopped at (a record cut short by a kill) is kept as it was.
        read = sum(RECORD_OVERHEAD + len(record) for record in records)
        with open(path, "rb") as f:
            f.seek(read)
            rest = f.read()
        fd, tmp = tempfile.mkstemp(prefix=PURGE_TMP, dir=run_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                writer = RecordWriter(f)
                for record in kept:
                    writer.write(record)
                f.write(rest)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, path.stat().st_mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dropped += len(records) - len(kept)
    return dropped


class Logger:
    """Scalars to TensorBoard under CleanRL's tag names; ``purge_step`` keeps resumed curves clean.

    ``mirror`` receives the same scalars (``log.wandb``).
    """

    def __init__(
        self, run_dir: Path, flush_secs: int = 10, purge_step: int | None = None, mirror: Mirror | None = None
    ) -> None:
        self._args = (str(run_dir), flush_secs, purge_step)
        self._writer: SummaryWriter | None = None
        self.mirror = mirror

    @property
    def writer(self) -> SummaryWriter:
        # Opened at the first event: a process that logs nothing (resuming a finished run) leaves
        # no empty event file behind.
        if self._writer is None:
            log_dir, flush_secs, purge_step = self._args
            if purge_step is not None:  # resumed: the events a crash left past the checkpoint go
                purge_events(log_dir, purge_step)
            self._writer = SummaryWriter(log_dir, flush_secs=flush_secs, purge_step=purge_step)
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.writer.add_scalar(tag, float(value), step)
            if self.mirror is not None:
                self.mirror.log({tag: float(value)}, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        kept = {t: float(v) for t, v in values.items() if v is not None and not math.isnan(float(v))}
        for tag, value in kept.items():
            self.writer.add_scalar(tag, value, step)
        if self.mirror is not None and kept:
            self.mirror.log(kept, step)  # one row per update

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.mirror is not None:
            self.mirror.close()


class NullLogger(Logger):
    """What ranks other than 0 of a multi-process run log: nothing (rank 0 logs for all)."""

    def __init__(self) -> None:
        super().__init__(Path("."))

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int = 0) -> None:
        pass


class Progress:
    """A rich progress bar (steps, SPS, recent return, ETA), or periodic lines when not a TTY.

    ``quiet=True`` shows and prints nothing.
    """

    def __init__(
        self, total: int, start: int, enabled: bool, print_every: float = 10.0, quiet: bool = False
    ) -> None:
        self.total, self.print_every, self.quiet = total, print_every, quiet
        self.returns: deque[float] = deque(maxlen=20)
        self.last_print = time.monotonic()
        self.bar = None
        if enabled and not quiet and sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self.bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[sps]} SPS"),
                TextColumn("return {task.fields[ret]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, sps="-", ret="-")
            self.bar.start()

    def update(self, step: int, sps: float, recent_return: float | None) -> None:
        ret = "-" if recent_return is None else f"{recent_return:.1f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=min(step, self.total), sps=f"{sps:,.0f}", ret=ret)
        elif not self.quiet and time.monotonic() - self.last_print >= self.print_every:
            self.last_print = time.monotonic()
            print(f"step {step:,}/{self.total:,}  SPS {sps:,.0f}  return {ret}", flush=True)

    def log(self, message: str) -> None:
        if not self.quiet:
            (self.bar.console.print if self.bar is not None else print)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
