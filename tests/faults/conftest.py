"""Fixtures of the fault and soak tests, and the summary of what they measured.

Every test records its figures (recovery times, transfer durations, soak samples) through the
``figures`` fixture; they are printed as they are taken and again, all together, at the end of the
run in a "rustvpn fault and soak figures" section. ``RUSTVPN_FIGURES_JSON=PATH`` also writes them to
PATH as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from tests.faults.harness import BoxedHosts
from tests.integration.conftest import hosts, pki  # noqa: F401 - fixtures shared with the integration tests


@dataclass
class Figure:
    test: str
    name: str
    value: float | int | str
    unit: str


_FIGURES: list[Figure] = []


class FigureLog:
    """The figures of one test."""

    def __init__(self, test: str) -> None:
        self.test = test

    def add(self, name: str, value: float | int | str, unit: str = "") -> None:
        figure = Figure(self.test, name, round(value, 3) if isinstance(value, float) else value, unit)
        _FIGURES.append(figure)
        print(f"\n[figure] {self.test}: {name} = {figure.value} {unit}".rstrip(), flush=True)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> FigureLog:
    return FigureLog(request.node.name)


@pytest.fixture(params=["tcp", "quic"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def boxed(tmp_path: Path, pki: Path) -> Iterator[BoxedHosts]:  # noqa: F811 - the imported fixture
    """Two hosts whose underlay link runs through a LinkBox (loss, delay, cut)."""
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"):
        (tmp_path / name).symlink_to(pki / name)
    pair = BoxedHosts(tmp_path)
    try:
        yield pair
    finally:
        pair.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("rustvpn fault and soak figures")
    width = max(len(f.test) for f in _FIGURES)
    for f in _FIGURES:
        terminalreporter.write_line(f"{f.test.ljust(width)}  {f.name}: {f.value} {f.unit}".rstrip())
    target = os.environ.get("RUSTVPN_FIGURES_JSON")
    if target:
        Path(target).write_text(json.dumps([asdict(f) for f in _FIGURES], indent=2) + "\n")
        terminalreporter.write_line(f"figures written to {target}")
