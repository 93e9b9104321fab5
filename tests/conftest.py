"""Shared test set-up."""
import pytest
import torch

torch.set_num_threads(1)  # the suite runs with -n 2 on 2 cores: one thread per worker


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test compiles from a fresh dynamo state: its per-process limit of recompilations per function (hit in
    torch 2.6 once a worker has compiled the models' forward under enough different guards) must not depend on which
    tests the xdist worker happened to run before."""
    torch.compiler.reset()
    yield
