"""Bounded coverage-guided fuzzing of the parsers (marker ``fuzz``), one atheris process per target.

Each target in tests/fuzz/targets.py runs for RUSTVPN_FUZZ_SECONDS seconds (default 18; with five
targets and 3-4 s of start-up and report each, under two minutes in all). A crash fails its test with
the reproducer: the input in hex, the crash file and the traceback. Turn the input into a regression
test in tests/unit/test_fuzz_regressions.py along with the fix.

    .venv/bin/python -m pytest -m fuzz tests/fuzz                          # the CI run (also part of tests/run.sh)
    RUSTVPN_FUZZ_SECONDS=300 .venv/bin/python -m pytest -m fuzz tests/fuzz  # a longer run
    .venv/bin/python -m pytest -m "not fuzz"                               # everything else, without fuzzing

tests/fuzz/run.py does the same from the command line, with a corpus that can be kept between runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz.run import DEFAULT_SECONDS, run_target
from tests.fuzz.targets import SELFTEST, TARGETS

pytestmark = pytest.mark.fuzz
pytest.importorskip("atheris")


def _seconds() -> int:
    raw = os.environ.get("RUSTVPN_FUZZ_SECONDS", str(DEFAULT_SECONDS))
    try:
        seconds = int(raw)
    except ValueError:
        raise pytest.UsageError(f"RUSTVPN_FUZZ_SECONDS must be a whole number of seconds, not {raw!r}") from None
    if seconds < 1:
        raise pytest.UsageError(f"RUSTVPN_FUZZ_SECONDS must be at least 1, not {seconds}")
    return seconds


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_survives_bounded_run(name: str, tmp_path: Path) -> None:
    result = run_target(name, _seconds(), work_dir=tmp_path)
    if result.crashed:
        pytest.fail(f"fuzz target {name} crashed:\n{result.report()}", pytrace=False)
    # A run that executed nothing (broken start-up) must not pass as clean.
    assert result.executions > 0, result.report()


def test_runner_reports_a_crash(tmp_path: Path) -> None:
    # The runner's own check: a target that crashes on b"B!" must be caught, with that input and its file.
    result = run_target(SELFTEST.name, 30, work_dir=tmp_path)
    assert result.crashed, result.report()
    assert result.crash_input is not None and result.crash_input.startswith(b"B!"), result.report()
    assert result.crash_file is not None and result.crash_file.read_bytes() == result.crash_input
    assert "self-test crash" in result.traceback
    assert result.crash_input.hex() in result.report()
