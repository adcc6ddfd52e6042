"""Running user code (a reward function) so that it cannot end or hang the run behind our back.

A reward file is ordinary Python with the user's rights (no sandbox). What this module adds:

- **Containment**: ``sys.exit``, ``KeyboardInterrupt`` raised by the function itself, ``GeneratorExit`` or any
  other ``BaseException`` become a :class:`UserCodeError` that the caller turns into a one-line message.
- **A time limit per call** (``timeout_s``): on the main thread a ``SIGALRM`` timer raises inside the user's
  code when it overruns; the call then fails with a message naming the limit.
- **Signals are honoured**: while user code runs, SIGINT/SIGTERM first reach whatever handler was installed
  before (the trainer's stop flag records the request; a second signal still escalates), then
  :class:`UserCodeInterrupted` is raised inside the user's code, so a hanging call never keeps the process
  from stopping. The caller rolls back the step it was computing and lets the exception travel up.

Off the main thread signals cannot be installed: calls run unguarded there (no timeout).
"""
from __future__ import annotations

import numbers
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

DEFAULT_TIMEOUT_S = 10.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class UserCodeInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived while user code ran. The step being computed was abandoned (and rolled
    back by the env); the stop request has reached the previously installed handler. A trainer treats
    it as "stop now and checkpoint the last completed update"; left alone it ends the process the way
    Ctrl-C does. ``env_step_undone`` is True when an env step was rolled back (the env is then exactly as
    after its last completed step, so saving it is safe)."""

    env_step_undone = False

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} while a reward function ran")


class _Timeout(BaseException):
    """Raised inside user code by the SIGALRM timer; never escapes :meth:`Guard.call`."""


class UserCodeError(Exception):
    """User code failed: raised, exited, or overran its time limit. ``reason`` says which, in words."""

    def __init__(self, reason: str, cause: BaseException | None = None):
        super().__init__(reason)
        self.reason, self.cause = reason, cause


def describe(exc: BaseException) -> str:
    """One phrase for what user code did: 'called sys.exit(3)', 'raised KeyError: 'x''."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = str(exc)
    return f"raised {type(exc).__name__}: {text}" if text else f"raised {type(exc).__name__}"


def check_timeout(timeout_s: Any) -> float | None:
    """``timeout_s`` if it is None or a finite number of seconds above 0, else a ValueError naming it."""
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real)
                                  or not 0 < timeout_s < float("inf")):
        raise ValueError(f"reward_timeout_s={timeout_s!r}: must be a positive number of seconds or None")
    return timeout_s


class Guard:
    """Runs user callables with a time limit and signal handling (see the module docstring).

    Use as a context manager around a batch of calls (handlers are installed once per batch, which keeps
    the per-call cost to two ``setitimer`` calls), then :meth:`call` for each one.
    """

    def __init__(self, timeout_s: float | None = DEFAULT_TIMEOUT_S):
        self.timeout_s = check_timeout(timeout_s)
        self._active = False
        self._previous: dict[int, Any] = {}
        self._signalled: int | None = None

    # ------------------------------------------------------------------ installing handlers
    def __enter__(self) -> "Guard":
        self._signalled = None
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        if self.timeout_s is not None:
            self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._active:
            return
        if self.timeout_s is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        self._active = False

    def _on_alarm(self, signum: int, frame: Any) -> None:
        raise _Timeout()

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self._signalled = signum
        previous = self._previous.get(signum)
        if previous == signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)  # the trainer's stop flag; a second Ctrl-C raises KeyboardInterrupt here
        elif signum == signal.SIGTERM:  # default action: terminate, as if we had not been here
            self.__exit__()
            os.kill(os.getpid(), signum)
        raise UserCodeInterrupted(signum)

    # ------------------------------------------------------------------ calling
    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``; failures become :class:`UserCodeError`, signals :class:`UserCodeInterrupted`."""
        timed = self._active and self.timeout_s is not None
        try:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
            try:
                return fn(*args)
            finally:
                if timed:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except UserCodeInterrupted:
            raise
        except _Timeout:
            raise UserCodeError(f"did not return within {self.timeout_s:g} s (reward_timeout_s)") from None
        except KeyboardInterrupt as exc:
            if self._signalled is not None:  # a real Ctrl-C (second one): let it stop the process
                raise
            raise UserCodeError(describe(exc), exc) from None
        except BaseException as exc:  # noqa: BLE001 - user code may raise or exit any way it likes
            raise UserCodeError(describe(exc), exc) from None


@contextmanager
def guarded(timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Iterator[Guard]:
    with Guard(timeout_s) as guard:
        yield guard
