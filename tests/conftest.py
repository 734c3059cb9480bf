"""Shared test set-up: integration tests (marked ``root``) skip cleanly when not root."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 and os.path.exists("/dev/net/tun"):
        return
    skip = pytest.mark.skip(reason="needs root and /dev/net/tun (run the README's test command)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
