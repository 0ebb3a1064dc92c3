"""Shared pytest setup: a one-thread torch (small ops lose to thread hand-offs) and the slow marker."""

import torch

torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: benchmarks-like checks that take seconds; deselect with -m 'not slow'")
