"""Shared fixtures: a per-session token cache so the corpus is tokenised once per test run, and one torch
thread for modules of tiny models."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Point HYBRIDLM_CACHE at a fresh directory shared by every test of the session."""
    if "HYBRIDLM_TEST_CACHE" in os.environ:  # reuse across local runs when set
        os.environ["HYBRIDLM_CACHE"] = os.environ["HYBRIDLM_TEST_CACHE"]
    else:
        os.environ["HYBRIDLM_CACHE"] = str(tmp_path_factory.mktemp("hybridlm-cache"))
    yield


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models run fastest single-threaded, and a busy 2-core CI box punishes oversubscription (OpenMP
    stalls). Modules opt in with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_thread_members():
    """Sweep members (worker and child processes) inherit one CPU thread: 2 threads on 2 shared cores stall
    when other jobs run, and comparisons of two sweeps, or of a warm member with a cold `hybridlm train`,
    need the same thread count on both sides (bit-exact CPU results)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
