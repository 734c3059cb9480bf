"""Fixtures for the Ansible role tests (see controller.py).

* ``ansible_bed`` (session): two bare systemd hosts (no rustvpn; python3, python3-venv,
  systemd, sshd, root's authorized key) and a fresh controller in host a's network namespace.
  The tests share it and run in file order: each deployment step builds on the previous one.
* ``static_controller`` (session): the same controller without hosts or namespaces, for
  ``--syntax-check``, ansible-lint and yamllint.

All tests here are marked ``ansible``; those that boot hosts also ``root`` and ``systemd``.
Select them with ``-m ansible``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible.controller import (
    AnsibleTestbed,
    Controller,
    ansible_testbed,
    missing_controller_tools,
    missing_testbed_prerequisites,
)


@pytest.fixture(scope="session")
def ansible_bed() -> Iterator[AnsibleTestbed]:
    reason = missing_testbed_prerequisites()
    if reason:
        pytest.skip(reason)
    with ansible_testbed(log=lambda line: print(line, flush=True)) as bed:
        yield bed


@pytest.fixture(scope="session")
def static_controller() -> Iterator[Controller]:
    reason = missing_controller_tools()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="rustvpn-ansible-static-") as workdir:
        yield Controller(Path(workdir), log=lambda line: print(line, flush=True))
