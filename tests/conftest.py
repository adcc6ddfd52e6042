import os

import pytest
import torch

os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small nets run fastest on one thread, and a busy 2-core machine must not be oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
