"""An opt-in compiled build of the L7 request path (mypyc), and what keeps it honest.

The course reads and runs lbkit's Python modules. The same modules of the
request path (:data:`MODULES`: the proxy, the router, the header plan, the
pool, the balancer lbkit's nginx configs use by default) can also be compiled
by mypyc, mypy's compiler for annotated Python, into C extensions placed
beside their sources: ``make fast`` (``python -m lbkit.compiled build``).
``make pure`` (``python -m lbkit.compiled remove``) takes them away again.
Nothing else changes: the same source, the same tests (``tests/test_compiled.py``
runs the L7 tests on a compiled copy), about a third less time per request in
process and a fifth to a quarter less CPU per request under wrk, which meets
issue 5's speed targets (docs/benchmarks.md).

Python imports an extension before a ``.py`` of the same name, so a compiled
module would hide later edits to its source: :func:`lbkit._fastpath.guard`
(run by ``lbkit/__init__.py`` while a build is present) imports the Python
modules instead when any source is newer than its extension, or when
``LBKIT_PURE=1`` is set, and says so on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._fastpath import (
    GROUP,
    MARKER,
    MODULES,
    PACKAGE,
    SUFFIX,
    built,
    extension,
    guard,
    source,
    stale,
)

__all__ = ["MODULES", "CompileError", "active", "build", "built", "guard", "remove", "stale"]

_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
paths = sys.argv[1:]
sys.argv[1:] = ["build_ext", "--inplace"]
setup(name="lbkit-compiled", ext_modules=mypycify(
    ["--ignore-missing-imports", "--follow-imports=silent", *paths],
    group_name=%r, opt_level="3"))
"""


class CompileError(RuntimeError):
    """The build failed; the message ends with the compiler's last lines."""


def active() -> bool:
    """Whether the request path now imported is the compiled one."""
    import lbkit.l7.proxy

    return not str(lbkit.l7.proxy.__file__).endswith(".py")


def build(package: Path = PACKAGE, log: Path | None = None) -> list[Path]:
    """Compile :data:`MODULES` of ``package`` and put the extensions beside their sources.

    The compiler runs in a temporary copy (so no ``build/`` folder and no
    pyproject is involved); its output goes to ``log`` (or is kept only on
    failure, in :class:`CompileError`). Needs mypy (mypyc) and a C compiler.
    Returns the files written.
    """
    if importlib.util.find_spec("mypyc") is None:
        raise CompileError("mypyc is not installed: pip install mypy (the 'dev' extra has it)")
    with tempfile.TemporaryDirectory(prefix="lbkit-mypyc-") as tmp:
        work = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", MARKER)
        shutil.copytree(package, work / "lbkit", ignore=ignore)
        (work / "setup_compiled.py").write_text(_SETUP % GROUP)
        paths = [str(source(work / "lbkit", m).relative_to(work)) for m in MODULES]
        done = subprocess.run(
            [sys.executable, "setup_compiled.py", *paths],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if log is not None:
            log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise CompileError(f"mypyc failed (exit {done.returncode}):\n{tail}")
        remove(package)
        written = []
        for made in sorted((work / "lbkit").rglob(f"*{SUFFIX}")):
            target = package / made.relative_to(work / "lbkit")
            shutil.copy2(made, target)
            written.append(target)
    (package / MARKER).write_text("\n".join(MODULES) + "\n")
    return written


def remove(package: Path = PACKAGE) -> list[Path]:
    """Delete the build's extensions and marker; returns what was deleted."""
    gone = []
    group = package / (GROUP.split(".", 1)[1] + "__mypyc" + SUFFIX)
    for path in [*(extension(package, m) for m in MODULES), group, package / MARKER]:
        if path.exists():
            path.unlink()
            gone.append(path)
    return gone


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lbkit.compiled",
        description="Compile lbkit's L7 request path with mypyc (opt-in), or remove the build.",
    )
    ap.add_argument("action", choices=["build", "remove", "status"])
    ap.add_argument("--log", type=Path, help="write the compiler's output here (build)")
    args = ap.parse_args(argv)
    if args.action == "build":
        print(f"compiling {len(MODULES)} modules with mypyc (about 30 s)...", flush=True)
        try:
            written = build(PACKAGE, args.log)
        except CompileError as e:
            print(f"lbkit.compiled: {e}", file=sys.stderr)
            return 1
        print(f"compiled: {len(written)} extensions beside their sources in {PACKAGE}")
        print("the L7 proxy now runs compiled; `make pure` (or LBKIT_PURE=1) runs the Python")
        return 0
    if args.action == "remove":
        gone = remove(PACKAGE)
        print(f"removed {len(gone)} files: the Python modules run" if gone else "no build here")
        return 0
    if not built():
        print("pure Python (no compiled build; `make fast` makes one)")
    elif stale():
        print(f"compiled build present but stale ({', '.join(stale())}): the Python modules run")
    else:
        print(f"compiled build present and current: {len(MODULES)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
