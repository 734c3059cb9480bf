"""Fixtures of the hostile suite: the certificates and one live world per transport.

The worlds live as long as this package's tests run: starting daemons is the slow part, and every
attack must leave them as it found them anyway (that is what the suite checks).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.hostile.certs import Pki, write_pki
from tests.hostile.world import SERVER, World


def _can_run() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


@pytest.fixture(scope="session")
def hostile_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("hostile-pki"), [SERVER])


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _world(mode: str, tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[World]:
    if not _can_run():
        pytest.skip("needs root and /dev/net/tun")
    # A run stopped with SIGTERM (a CI timeout) unwinds like Ctrl-C, through this finally: the
    # daemons run in sessions of their own and would outlive the run with their namespaces.
    previous = signal.signal(signal.SIGTERM, _interrupted)
    world = World(mode, tmp_path_factory.mktemp(f"hostile-{mode}"), pki)
    try:
        yield world
    finally:
        world.close()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="package")
def tcp_world(tmp_path_factory: pytest.TempPathFactory, hostile_pki: Pki) -> Iterator[World]:
    yield from _world("tcp", tmp_path_factory, hostile_pki)


@pytest.fixture(scope="package")
def quic_world(tmp_path_factory: pytest.TempPathFactory, hostile_pki: Pki) -> Iterator[World]:
    yield from _world("quic", tmp_path_factory, hostile_pki)
