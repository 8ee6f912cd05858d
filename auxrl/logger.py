"""TensorBoard scalars and terminal progress."""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class Logger:
    """Scalars to TensorBoard under CleanRL's tag names; ``purge_step`` keeps resumed curves clean."""

    def __init__(self, run_dir: Path, flush_secs: int = 10, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(str(run_dir), flush_secs=flush_secs, purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.writer.add_scalar(tag, float(value), step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Progress:
    """A rich progress bar (steps, SPS, recent return, ETA), or periodic lines when not a TTY."""

    def __init__(self, total: int, start: int, enabled: bool, print_every: float = 10.0) -> None:
        self.total, self.print_every = total, print_every
        self.returns: deque[float] = deque(maxlen=20)
        self.last_print = time.monotonic()
        self.bar = None
        if enabled and sys.stdout.isatty():
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
        elif time.monotonic() - self.last_print >= self.print_every:
            self.last_print = time.monotonic()
            print(f"step {step:,}/{self.total:,}  SPS {sps:,.0f}  return {ret}", flush=True)

    def log(self, message: str) -> None:
        (self.bar.console.print if self.bar is not None else print)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
