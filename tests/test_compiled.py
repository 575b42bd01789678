"""The opt-in compiled request path (``make fast``, :mod:`lbkit.compiled`).

The build is made in a temporary copy of the project (the package, the tests,
the lab files), never in the checkout, and the L7 tests run again there: mypyc
checks annotations at run time, types a variable once per function and
compiles classes differently, so the compiled proxy must pass the same tests
as the Python one. The guard that falls back to the Python modules when a
source is newer than its build (or ``LBKIT_PURE=1``) is checked on that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lbkit import _fastpath
from lbkit.compiled import MODULES, build, remove

ROOT = Path(__file__).resolve().parent.parent
ACTIVE = "import sys, lbkit.compiled as c; sys.exit(0 if c.active() else 3)"


def fake_package(tmp: Path) -> Path:
    """The build's sources and (empty) extensions, the extensions newer."""
    package = tmp / "lbkit"
    for module in MODULES:
        src = _fastpath.source(package, module)
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("")
        os.utime(src, (1_000, 1_000))
        _fastpath.extension(package, module).write_bytes(b"")
    (package / _fastpath.MARKER).write_text("\n".join(MODULES))
    return package


def test_a_build_newer_than_its_sources_is_current(tmp_path):
    package = fake_package(tmp_path)
    assert _fastpath.built(package)
    assert _fastpath.stale(package) == []


def test_an_edited_source_or_a_missing_extension_makes_the_build_stale(tmp_path):
    package = fake_package(tmp_path)
    os.utime(_fastpath.source(package, "lbkit.l7.router"), None)  # edited now
    _fastpath.extension(package, "lbkit.l7.wire").unlink()
    assert _fastpath.stale(package) == ["lbkit/l7/wire.py", "lbkit/l7/router.py"]


def test_remove_takes_the_extensions_and_the_marker_and_leaves_the_sources(tmp_path):
    package = fake_package(tmp_path)
    gone = remove(package)
    assert len(gone) == len(MODULES) + 1
    assert not _fastpath.built(package)
    assert all(_fastpath.source(package, m).exists() for m in MODULES)
    assert not list(package.rglob(f"*{_fastpath.SUFFIX}"))


@pytest.fixture(scope="module")
def compiled_copy(tmp_path_factory) -> Path:
    """A copy of the project with the request path compiled (about 30 s)."""
    root = tmp_path_factory.mktemp("compiled")
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    for part in ("lbkit", "tests", "labs"):
        shutil.copytree(ROOT / part, root / part, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", root)
    (root / "lbkit" / _fastpath.MARKER).unlink(missing_ok=True)
    written = build(root / "lbkit", log=root / "compile.log")
    assert len(written) == len(MODULES) + 1  # one extension per module, and the shared library
    return root


def run(root: Path, argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """``argv`` in ``root`` (so ``lbkit`` is imported from there, not from the checkout)."""
    environment = {k: v for k, v in os.environ.items() if k != "LBKIT_PURE"}
    environment.update(PYTHONPATH=str(root), **env)
    return subprocess.run(
        argv, cwd=root, env=environment, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.timeout(900)
def test_the_l7_tests_pass_on_the_compiled_request_path(compiled_copy):
    assert run(compiled_copy, [sys.executable, "-c", ACTIVE]).returncode == 0, "not compiled"
    tests = sorted(f"tests/{p.name}" for p in (compiled_copy / "tests").glob("test_l7_*.py"))
    tests.append("tests/test_lab_l7.py")  # the lab's albs run the compiled router
    tests += ["tests/test_algorithms_common.py", "tests/test_algorithms_nginx.py"]  # _base
    done = run(
        compiled_copy,
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
    )
    tail = "\n".join(done.stdout.splitlines()[-15:])
    assert done.returncode == 0, f"L7 tests failed on the compiled build:\n{tail}\n{done.stderr}"
    assert " passed" in tail and "skipped" not in tail, tail


def test_pure_runs_the_python_modules(compiled_copy):
    done = run(compiled_copy, [sys.executable, "-c", ACTIVE], LBKIT_PURE="1")
    assert done.returncode == 3, done.stderr


def test_an_edited_source_runs_the_python_modules_and_says_so(compiled_copy, tmp_path):
    stale_copy = tmp_path / "stale"
    shutil.copytree(compiled_copy / "lbkit", stale_copy / "lbkit", copy_function=shutil.copy2)
    os.utime(stale_copy / "lbkit" / "l7" / "router.py", None)  # edited after the build
    done = run(stale_copy, [sys.executable, "-c", ACTIVE])
    assert done.returncode == 3
    assert "lbkit/l7/router.py changed after `make fast` compiled it" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
