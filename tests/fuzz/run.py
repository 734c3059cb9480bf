"""Runs the fuzz targets for a bounded time each: one atheris subprocess per target, one after another.

    .venv/bin/python tests/fuzz/run.py --seconds 60                      # every target, 60 s each
    .venv/bin/python tests/fuzz/run.py --seconds 300 --target exchange   # one target (repeatable)
    .venv/bin/python tests/fuzz/run.py --seconds 300 --corpus-dir DIR    # keep the corpus it grows
    .venv/bin/python tests/fuzz/run.py --target exchange --reproduce FILE  # replay an input, no atheris

Targets (tests/fuzz/targets.py): framing, exchange, flow_hash, config_file, status_request. Each run
starts from the target's seeds (plus tests/fuzz/corpus/<target>/ if present) in a fresh temporary
corpus, or in DIR/<target> with --corpus-dir, and uses the target's dictionary. Per target it prints
the executions done, the coverage reached and whether it crashed; on a crash it prints the crashing
input (hex, and repr when short), the crash file (kept, with the log) and the traceback.
Exit status: 0 no crash, 1 a target crashed or hung, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from tests.fuzz.targets import TARGETS, Target, dictionary_text, find_target  # noqa: E402

ENTRY = HERE / "fuzz.py"
SEEDS_DIR = HERE / "corpus"
# Start-up (instrumenting yaml takes a few seconds) and libFuzzer's final report, beyond --seconds.
GRACE_SECONDS = 120
# Per target; five targets then take just under two minutes (the CI budget for fuzzing).
DEFAULT_SECONDS = 18
_ARTIFACT_KINDS = ("crash-", "timeout-", "oom-", "leak-")


@dataclass
class Result:
    target: str
    seconds: float
    executions: int
    coverage: str
    crashed: bool
    why: str
    crash_file: Path | None
    crash_input: bytes | None
    log_file: Path
    traceback: str

    def summary(self) -> str:
        state = f"CRASHED ({self.why})" if self.crashed else "ok"
        return f"{self.target:15} {state:10} {self.executions:>10} execs in {self.seconds:6.1f} s  {self.coverage}"

    def report(self) -> str:
        """The reproducer: enough to write a regression test without rerunning anything."""
        lines = [self.summary()]
        if self.crash_input is not None:
            lines.append(f"crashing input ({len(self.crash_input)} bytes), hex: {self.crash_input.hex()}")
            if len(self.crash_input) <= 300:
                lines.append(f"as bytes: {self.crash_input!r}")
        if self.crash_file is not None:
            lines.append(f"crash file: {self.crash_file}")
            lines.append(
                f"replay: {sys.executable} {HERE / 'run.py'} --target {self.target} --reproduce {self.crash_file}"
            )
        lines.append(f"log: {self.log_file}")
        if self.traceback:
            lines.append(self.traceback)
        return "\n".join(lines)


def _seed_corpus(target: Target, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds):
        (corpus / f"seed-{i:03}").write_bytes(seed)
    committed = SEEDS_DIR / target.name
    if committed.is_dir():
        for path in committed.iterdir():
            if path.is_file():
                shutil.copyfile(path, corpus / f"committed-{path.name}")


def _executions(log: str) -> int:
    for pattern in (r"stat::number_of_executed_units:\s*(\d+)", r"Done (\d+) runs", r"^#(\d+)\s"):
        found = re.findall(pattern, log, re.MULTILINE)
        if found:
            return int(found[-1])
    return 0


def _coverage(log: str) -> str:
    found = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/", log)
    return f"cov {found[-1][0]} ft {found[-1][1]} corpus {found[-1][2]}" if found else "no coverage reported"


def _traceback(log: str) -> str:
    """atheris's report of the exception, or libFuzzer's own error lines (timeout, out of memory)."""
    start = log.find("=== Uncaught Python exception: ===")
    if start >= 0:
        end = log.find("\n==", start + 10)
        return log[start : end if end >= 0 else None].strip()
    errors = [line for line in log.splitlines() if "ERROR: libFuzzer" in line or line.startswith("SUMMARY")]
    return "\n".join(errors)


def run_target(
    name: str,
    seconds: int,
    *,
    work_dir: Path | None = None,
    corpus_dir: Path | None = None,
    seed: int | None = None,
    keep: bool = False,
) -> Result:
    """Fuzz one target for ``seconds`` in its own process; the work directory is kept only on a crash."""
    target = find_target(name)
    work = Path(tempfile.mkdtemp(prefix=f"rustvpn-fuzz-{name}-", dir=work_dir))
    corpus = corpus_dir / name if corpus_dir is not None else work / "corpus"
    _seed_corpus(target, corpus)
    dictionary = work / f"{name}.dict"
    dictionary.write_text(dictionary_text(target.dictionary) if target.dictionary else "", encoding="ascii")
    artifacts = work / "artifacts"
    artifacts.mkdir()
    files = work / "files"  # scratch space of the target itself (the config file it rewrites)
    files.mkdir()
    log_file = work / "fuzz.log"
    command = [
        sys.executable,
        str(ENTRY),
        name,
        str(corpus),
        f"-max_total_time={seconds}",
        f"-max_len={target.max_len}",
        "-timeout=10",  # one input running this long is a hang, reported like a crash
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
    ]
    if target.dictionary:
        command.append(f"-dict={dictionary}")
    command += target.options
    if seed is not None:
        command.append(f"-seed={seed}")
    env = dict(os.environ, RUSTVPN_FUZZ_WORKDIR=str(files))
    started = time.monotonic()
    hung = False
    with log_file.open("wb") as log_out:
        process = subprocess.Popen(command, stdout=log_out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            returncode = process.wait(timeout=seconds + GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait()
            hung = True
    elapsed = time.monotonic() - started
    log = log_file.read_text(encoding="utf-8", errors="replace")
    found = sorted(p for p in artifacts.iterdir() if p.name.startswith(_ARTIFACT_KINDS))
    crash_file = found[0] if found else None
    crashed = hung or returncode != 0 or crash_file is not None
    why = "hung" if hung else crash_file.name.split("-")[0] if crash_file else f"exit {returncode}" if crashed else ""
    result = Result(
        target=name,
        seconds=elapsed,
        executions=_executions(log),
        coverage=_coverage(log),
        crashed=crashed,
        why=why,
        crash_file=crash_file,
        crash_input=crash_file.read_bytes() if crash_file else None,
        log_file=log_file,
        traceback=_traceback(log) if crashed else "",
    )
    if not crashed and not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def reproduce(name: str, path: Path) -> int:
    data = path.read_bytes()
    print(f"{name}: replaying {path} ({len(data)} bytes): {data.hex()}")
    try:
        find_target(name).run(data)
    except Exception:
        traceback.print_exc()
        return 1
    print("no crash")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seconds", type=int, default=DEFAULT_SECONDS, help=f"fuzzing time per target (default {DEFAULT_SECONDS})"
    )
    parser.add_argument("--target", action="append", help="a target to run (repeatable; default: all)")
    parser.add_argument("--corpus-dir", type=Path, help="keep each target's corpus in DIR/<target>")
    parser.add_argument("--work-dir", type=Path, help="where the per-run directories go (default: system temp)")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed, to repeat a run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory of clean runs too")
    parser.add_argument("--reproduce", type=Path, metavar="FILE", help="run one input through --target, in process")
    args = parser.parse_args(argv)
    names = args.target or list(TARGETS)
    for name in names:
        try:
            find_target(name)
        except KeyError:
            parser.error(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
    if args.reproduce is not None:
        if len(names) != 1:
            parser.error("--reproduce needs exactly one --target")
        return reproduce(names[0], args.reproduce)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")

    crashed = False
    for name in names:
        print(f"{name}: fuzzing for {args.seconds} s ...", flush=True)
        result = run_target(
            name, args.seconds, work_dir=args.work_dir, corpus_dir=args.corpus_dir, seed=args.seed, keep=args.keep
        )
        print(result.report() if result.crashed else result.summary(), flush=True)
        crashed |= result.crashed
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
