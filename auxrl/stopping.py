"""Stopping a run by hand (Ctrl-C) or by a scheduler (SIGTERM) without cutting an update in half.

The first SIGINT or SIGTERM only records the request; the trainer asks :meth:`StopSignals.check`
at its safe points (before an update starts, and after a rollout, whose steps are then dropped)
and stops there with :class:`StopRequested`, so the checkpoint it saves holds whole updates: the
weights, the optimizer's moments and the step count agree. A second signal stops at once with
:class:`Stopped` (the base of ``StopRequested``); nothing is saved then, and the last checkpoint
stays ``latest``. Both are ``KeyboardInterrupt``s carrying ``signum``: the command line exits
with 128 + signum (130 Ctrl-C, 143 SIGTERM), and :func:`auxrl.train` raises them.

Signal handlers can only be installed in the main thread; elsewhere (e.g. ``auxrl.train`` in a
worker thread) Python's own Ctrl-C behaviour is left as it is, and so is a signal the process
was started with ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop by signal ``signum``, at once: the command line exits with 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequested(Stopped):
    """A stop asked for by a signal, raised at a safe point: the state is whole and can be saved."""


class StopSignals:
    """Context manager: defer SIGINT / SIGTERM to the trainer's safe points (see the module doc).

    ``announce`` is called once, with a line saying what happens next, when the first signal
    arrives. With ``enabled=False`` (several processes, whose ranks must stop together) or outside
    the main thread, nothing is installed and :meth:`check` never raises.
    """

    def __init__(self, announce: Callable[[str], None], enabled: bool = True) -> None:
        self.announce = announce
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None  # the first signal received
        self.forced = False  # a second signal arrived: stopped at once, not at a safe point
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        if self.enabled:
            for sig in SIGNALS:
                # Left ignored where it is (a shell starts `cmd &` with SIGINT ignored: a Ctrl-C
                # meant for the script that started the run must not stop it).
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, handler in self._previous.items():
            # None: a handler not installed from Python; the default is the closest we can restore.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self.forced = True
            raise Stopped(signum)
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.announce(
            f"{name}: stopping after the update in progress, then saving a checkpoint "
            f"(Ctrl-C again stops at once without saving; the last checkpoint stays)"
        )

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop was asked for (call only where the state is whole)."""
        if self.signum is not None:
            raise StopRequested(self.signum)
