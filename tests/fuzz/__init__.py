"""Coverage-guided fuzzing of the sans-IO parsers (atheris); see tests/fuzz/run.py."""
