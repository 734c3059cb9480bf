from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rustvpn.pki import new_authority, write_demo_set
from tests.integration.netns import SERVER_UNDERLAY4, SERVER_UNDERLAY6, NetnsPair


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem, server.pem/.key, client.pem/.key in one directory; other/ holds a set from another CA."""
    root = tmp_path_factory.mktemp("pki")
    write_demo_set(root, [SERVER_UNDERLAY4, SERVER_UNDERLAY6])
    write_demo_set(root / "other", [SERVER_UNDERLAY4, SERVER_UNDERLAY6], ca=new_authority("another CA"))
    return root


@pytest.fixture
def hosts(tmp_path: Path, pki: Path) -> Iterator[NetnsPair]:
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"):
        (tmp_path / name).symlink_to(pki / name)
    (tmp_path / "other").symlink_to(pki / "other")
    pair = NetnsPair(tmp_path)
    try:
        yield pair
    finally:
        pair.close()
