"""With CI=true, tests that need the shared conformance data fail when it is
absent instead of skipping (issue 13, defect 4); without CI they keep
skipping, saying so.

Both helpers are exercised through the tests that use them: the C one
(tests/unit/testdata.h) through the unit test programs built by `make unit`,
the Python one (conftest.need_testdata) through a pytest run of
test_spf_suite_dns.py.  MAILSTREAM_TESTDATA points at a directory that does
not exist, so the real data, present or not, plays no part.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mslocal

HERE = Path(__file__).resolve().parent
# The unit test programs that read the data (tests/unit/testdata.h).
UNIT_TESTS = ["test_ms_spf_suite", "test_ms_dkim"]


def _env(tmp_path: Path, ci: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["MAILSTREAM_TESTDATA"] = str(tmp_path / "absent")
    if ci:
        env["CI"] = "true"
    return env


@pytest.mark.parametrize("name", UNIT_TESTS)
def test_unit_test_skips_or_fails_under_ci(tmp_path, name):
    prog = mslocal.build_dir() / "tests" / name
    assert prog.exists(), f"{prog} missing: run `make unit`"
    r = subprocess.run([str(prog)], capture_output=True, text=True, timeout=120,
                       env=_env(tmp_path, ci=False))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SKIP: {tmp_path / 'absent'}/" in r.stdout, r.stdout
    r = subprocess.run([str(prog)], capture_output=True, text=True, timeout=120,
                       env=_env(tmp_path, ci=True))
    assert r.returncode != 0, r.stdout + r.stderr
    assert "absent, and CI is set" in r.stdout + r.stderr, r.stdout + r.stderr


def test_python_test_skips_or_fails_under_ci(tmp_path):
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            "--basetemp", str(tmp_path / "pytest"), str(HERE / "test_spf_suite_dns.py")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=HERE.parents[1],
                       env=_env(tmp_path, ci=False))
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=HERE.parents[1],
                       env=_env(tmp_path, ci=True))
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout + r.stderr
    assert "absent, and CI is set" in r.stdout, r.stdout
