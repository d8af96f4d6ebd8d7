"""Run every fuzz target for its time budget, after replaying its stored regression inputs.

``TRUSTFLOW_FUZZ_SECONDS`` sets the budget per target; see ``docs/fuzzing.md``."""

from __future__ import annotations

import pytest
from fuzz_engine import Target, budget_seconds, execute, regression_inputs, run_for, run_seed
from fuzz_targets import TARGETS

BY_NAME = {t.name: t for t in TARGETS}
REGRESSIONS = [(t.name, path) for t in TARGETS for path in regression_inputs(t.name)]


@pytest.mark.parametrize(
    ("name", "path"), REGRESSIONS, ids=[f"{n}/{p.name}" for n, p in REGRESSIONS]
)
def test_regression_input(name: str, path: object) -> None:
    """An input that once failed its target is refused with a documented error now."""
    from pathlib import Path

    assert isinstance(path, Path)
    execute(BY_NAME[name], path.read_bytes())


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz(target: Target) -> None:
    for seed in target.seeds():  # the seeds themselves must not crash
        execute(target, seed)
    base_seed = run_seed()
    print(f"{target.name}: reproduce a failure with TRUSTFLOW_FUZZ_SEED={base_seed}")
    stats = run_for(target, budget_seconds(), base_seed)
    print(f"{target.name}: {stats.examples} inputs in {stats.seconds:.1f} s")
