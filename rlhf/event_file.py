"""A TensorBoard event file written by the training thread itself, through a buffer.

Why not ``torch.utils.tensorboard.SummaryWriter``'s file writer: its background thread opens, appends to
and closes the file once per record, and each of its wake-ups takes the GIL from the training loop (about
0.3 s of a 10 s CartPole run). Here a record goes into the open file's buffer, which reaches the disk
every ``FLUSH_SECONDS``, at ``flush()`` (trainers call it with each checkpoint, so what a resumed run keeps
is on disk) and at ``close()``. The records are tensorboard's own (``RecordWriter``: length, masked
CRC-32C, payload), the events and file name are SummaryWriter's, and TensorBoard reads the file as one of
SummaryWriter's.
"""
from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

FLUSH_SECONDS = 2.0  # TensorBoard itself reloads every 5 s
_file_numbers = itertools.count()


class EventFile:
    """``add_summary`` / ``flush`` / ``close`` on a new ``events.out.tfevents.*`` file in ``log_dir``.

    ``purge_step``: a resumed run's first step; TensorBoard then hides the events of earlier files at this
    step or later (what a killed run logged past its last checkpoint), as with SummaryWriter's ``purge_step``.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = log_dir / (f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}."
                               f"{next(_file_numbers)}")
        self._file = open(self.path, "wb")  # noqa: SIM115 - open for the writer's lifetime, closed by close()
        self._records = RecordWriter(self._file)
        self.flush_seconds = flush_seconds
        self._add(Event(wall_time=now, file_version="brain.Event:2"))
        if purge_step is not None:
            self._add(Event(wall_time=now, step=purge_step, file_version="brain.Event:2"))
            self._add(Event(wall_time=now, step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def add_summary(self, summary: Summary, step: int | None = None) -> None:
        event = Event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = int(step)
        self._add(event)
        if time.monotonic() >= self._flush_at:
            self.flush()

    def _add(self, event: Event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
        self._flush_at = time.monotonic() + self.flush_seconds

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
