"""The bounded CI version of scripts/fault_inject.py: SIGKILL a training process at random moments,
resume, and require the final weights and logged losses to equal an uninterrupted run's."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_inject.py"


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    spec = importlib.util.spec_from_file_location("fault_inject", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = []
    report = module.inject(tmp_path, kills=3, steps=90, seed=3, min_s=2.5, max_s=5.0, log=lines.append)
    assert report["kills"] >= 1 and any("killed" in line for line in lines), lines
    assert report["weights_equal"], report
    assert report["losses_equal"], report
    assert report["logged_steps"] == 30
