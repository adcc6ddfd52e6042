"""The TensorBoard side of ``rlhf.logger.Logger``: what a user's TensorBoard reads back."""
from __future__ import annotations

import math

from rlhf.config import LoggingConfig
from rlhf.logger import Logger
from tests.cli_helpers import scalar_tags, scalars


def test_scalars_logged_together_read_back_per_tag_and_nan_is_skipped(tmp_path):
    logger = Logger(tmp_path, LoggingConfig(progress_bar=False), total_steps=100)
    logger.log({"rollout/ep_rew_mean": 1.5, "train/value_loss": 0.25, "train/approx_kl": math.nan,
                "time/fps": 1000}, step=10)
    logger.scalars({"rollout/ep_rew_mean": 2.5, "eval/mean_return": None}, step=20)
    logger.close()
    assert scalar_tags(tmp_path) == {"rollout/ep_rew_mean", "train/value_loss", "time/fps"}
    assert scalars(tmp_path, "rollout/ep_rew_mean") == [(10, 1.5), (20, 2.5)]
    assert scalars(tmp_path, "train/value_loss") == [(10, 0.25)]
    assert scalars(tmp_path, "time/fps") == [(10, 1000.0)]


def test_a_resumed_run_drops_what_a_killed_run_logged_past_its_checkpoint(tmp_path):
    first = Logger(tmp_path, LoggingConfig(progress_bar=False), total_steps=100)
    for step in (10, 20, 30):
        first.log({"train/value_loss": float(step)}, step)
    first.close()
    resumed = Logger(tmp_path, LoggingConfig(progress_bar=False), total_steps=100, start_step=20)
    resumed.log({"train/value_loss": 99.0}, 20)
    resumed.close()
    assert scalars(tmp_path, "train/value_loss") == [(10, 10.0), (20, 99.0)]


def test_events_wait_in_the_buffer_until_a_flush_and_text_and_hparams_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = Logger(tmp_path, LoggingConfig(progress_bar=False), total_steps=100)
    logger.writer.flush_seconds = 3600.0
    logger.writer.flush()
    size = logger.writer.path.stat().st_size
    logger.scalars({"train/value_loss": 1.0}, step=1)
    assert logger.writer.path.stat().st_size == size  # buffered: the training thread made no write call
    logger.flush()
    assert logger.writer.path.stat().st_size > size
    assert scalars(tmp_path, "train/value_loss") == [(1, 1.0)]  # readable while the run goes on
    logger.text("config", "lr: 0.1", 0)
    logger.hparams({"learning_rate": 0.1}, ("train/value_loss",))
    logger.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert acc.PluginTagToContent("hparams")


def test_a_zero_flush_interval_writes_every_event_through(tmp_path):
    logger = Logger(tmp_path, LoggingConfig(progress_bar=False), total_steps=100)
    logger.writer.flush_seconds = 0.0
    logger.writer.flush()
    for step in (1, 2):
        logger.scalars({"train/value_loss": float(step)}, step)
        assert scalars(tmp_path, "train/value_loss")[-1] == (step, float(step))
    logger.close()
