"""Shared fixtures: a per-session token cache so the corpus is tokenised once per test run."""

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
