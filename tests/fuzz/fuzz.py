"""Atheris entry point for one target: ``python tests/fuzz/fuzz.py TARGET [libFuzzer flags] [CORPUS_DIR...]``.

Normally started by tests/fuzz/run.py, which gives it a corpus, a dictionary and a time limit; run by
hand it takes any libFuzzer flag, e.g. ``-runs=1000`` or a crash file to replay under atheris. Targets
are in tests/fuzz/targets.py; an exception escaping one is a crash (atheris prints the traceback,
libFuzzer writes the input to ``<artifact_prefix>crash-<sha1>``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# Run as a script, so the repository root (for ``tests.fuzz``) must be put on the path first.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# Instrumented on import, so that branch and comparison coverage of the parsers, and of the YAML and
# JSON code they drive, is what guides the mutations. Oracle code is left out. (ipaddress is already
# imported at interpreter start-up, too early for this hook.)
with atheris.instrument_imports(include=["rustvpn", "yaml", "json"]):
    from tests.fuzz import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        names = ", ".join([*targets.TARGETS, targets.SELFTEST.name])
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer flags] [corpus dirs]; targets: {names}")
    name = sys.argv.pop(1)
    try:
        target = targets.find_target(name)
    except KeyError:
        sys.exit(f"unknown target {name!r}")
    if target is targets.SELFTEST:
        # Its code is in tests/, not instrumented on import; without coverage it would never find the crash.
        atheris.instrument_func(target.run)
    atheris.Setup(sys.argv, target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
