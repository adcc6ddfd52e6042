"""One metric namespace (Stable-Baselines3's tag names) to TensorBoard, plus a console progress bar."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rlhf.config import LoggingConfig


class Logger:
    """Writes scalars to ``run_dir`` and shows steps/s and recent return while training."""

    def __init__(self, run_dir: str | Path, cfg: LoggingConfig, total_steps: int, start_step: int = 0,
                 headline: tuple[str, str] = ("rollout/ep_rew_mean", "return")) -> None:
        """``headline``: (stat key, label) shown beside steps/s in the console."""
        self.cfg, self.headline = cfg, headline
        self.writer = None
        if cfg.tensorboard:
            from rlhf.event_file import EventFile

            # purge_step drops events a killed run logged past its last checkpoint.
            self.writer = EventFile(run_dir, purge_step=start_step if start_step else None)
        self.console = Console(stderr=True)
        self.progress = None
        self._last_print = -1
        self.total = total_steps
        if cfg.progress_bar and sys.stderr.isatty():
            self.progress = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[fps]:>7.0f} steps/s"),
                                     TextColumn(headline[1] + " {task.fields[ret]}"), TimeRemainingColumn(),
                                     console=self.console, transient=False)
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, fps=0.0, ret="-")
            self.progress.start()
        self.t0, self.step0 = time.perf_counter(), start_step

    def fps(self, step: int) -> float:
        return (step - self.step0) / max(time.perf_counter() - self.t0, 1e-9)

    def scalars(self, stats: dict[str, float], step: int) -> None:
        """TensorBoard only (NaN and None skipped), no console progress.

        All of them go into one event (one ``Summary`` holding a value per tag), which TensorBoard reads
        exactly as one ``add_scalar`` event per tag: a training iteration logs ~20 scalars, and one event
        costs a tenth of twenty (0.1 ms against 1.2 ms here, and as much less work for the writer thread).
        """
        if self.writer is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=key, simple_value=float(value)) for key, value in stats.items()
                  if value is not None and not math.isnan(value)]
        if values:
            self.writer.add_summary(Summary(value=values), step)

    def log(self, stats: dict[str, float], step: int) -> None:
        self.scalars(stats, step)
        ret = stats.get(self.headline[0])
        ret_text = "-" if ret is None or math.isnan(ret) else f"{ret:.1f}"
        if self.progress is not None:
            self.progress.update(self.task, completed=min(step, self.total), fps=stats.get("time/fps", 0.0), ret=ret_text)
        elif self.cfg.progress_bar:
            tenth = int(10 * step / max(self.total, 1))
            if tenth != self._last_print:
                self._last_print = tenth
                self.console.print(f"step {step:>9d}/{self.total}  {stats.get('time/fps', 0.0):7.0f} steps/s  "
                                   f"{self.headline[1]} {ret_text}", highlight=False)

    def text(self, tag: str, body: str, step: int = 0) -> None:
        if self.writer is not None:
            from torch.utils.tensorboard.summary import text

            self.writer.add_summary(text(tag, body), step)

    def hparams(self, hparams: dict[str, float | str | bool], metrics: tuple[str, ...]) -> None:
        """Hyperparameters into the same event file (the HPARAMS tab), as Stable-Baselines3 does."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hp

        exp, ssi, sei = hp(hparams, {m: 0.0 for m in metrics})
        for summary in (exp, ssi, sei):
            self.writer.add_summary(summary)

    def flush(self) -> None:
        """Put what was logged on disk now (trainers call it with each checkpoint)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
