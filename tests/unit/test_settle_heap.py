"""app.settle_heap: what lives at start-up is out of the cycle collector's reach; later garbage
is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from rustvpn.app import settle_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    gc.unfreeze()  # whatever an earlier test froze
    try:
        yield
    finally:
        gc.unfreeze()


def test_start_up_objects_are_frozen_and_later_garbage_is_still_collected(frozen_heap: None) -> None:
    before = cycle()  # a cycle alive at start-up, dropped only later
    holder = before()
    assert gc.get_freeze_count() == 0
    settle_heap()
    assert gc.get_freeze_count() > 0
    assert holder is not None and gc.is_tracked(holder)
    del holder
    after = cycle()  # born after start-up: a session's or a packet's garbage
    gc.collect()
    assert after() is None, "garbage made after settle_heap must still be collected"
    assert before() is not None, "objects alive at settle_heap are frozen: no collection walks them"
