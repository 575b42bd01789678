"""Which L7 request path runs: the compiled build of ``make fast``, or the Python modules.

:mod:`lbkit.compiled` makes and removes the build; this module holds what
``lbkit/__init__.py`` needs at every import while a build is present (kept
apart so that ``python -m lbkit.compiled`` is not imported twice). Python
imports an extension before a ``.py`` of the same name, so a compiled module
would hide later edits to its source: :func:`guard` imports every module of
the build from its ``.py`` instead when any source is newer than its
extension, or when ``LBKIT_PURE=1`` is set, saying why on stderr. A mixed set
is never used: the modules of one build call each other directly, not
through the import system.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: The modules a proxied request runs through, compiled together (one mypyc group).
MODULES = (
    "lbkit.l7.proxy",
    "lbkit.l7.exchange",
    "lbkit.l7.wire",
    "lbkit.l7.upstream",
    "lbkit.l7.router",
    "lbkit.l7.headerplan",
    "lbkit.l7.headers",
    "lbkit.l7.pools",
    "lbkit.l7.retry",
    "lbkit.algorithms._base",
    "lbkit.algorithms._smooth",
    "lbkit.algorithms.weighted_round_robin",
    "lbkit.health.passive",
)
GROUP = "lbkit._compiled"  # the shared library: lbkit/_compiled__mypyc.<suffix>
MARKER = "_compiled.txt"  # in the package: the build is there (its modules, one a line)
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def source(package: Path, module: str) -> Path:
    """``lbkit.l7.proxy`` -> ``<package>/l7/proxy.py``."""
    return package.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension(package: Path, module: str) -> Path:
    """``lbkit.l7.proxy`` -> ``<package>/l7/proxy<EXT_SUFFIX>``."""
    path = source(package, module)
    return path.with_name(path.stem + SUFFIX)


def built(package: Path = PACKAGE) -> bool:
    """Whether a compiled build is in ``package`` (its marker file is)."""
    return (package / MARKER).exists()


def stale(package: Path = PACKAGE) -> list[str]:
    """The sources of the build newer than their extension, or whose extension is missing."""
    out = []
    for module in MODULES:
        ext = extension(package, module)
        if not ext.exists() or source(package, module).stat().st_mtime > ext.stat().st_mtime:
            out.append(str(source(package, module).relative_to(package.parent)))
    return out


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports the build's modules from their ``.py`` files (a stale or refused build)."""

    def __init__(self, package: Path) -> None:
        self.package = package

    def find_spec(self, name, path=None, target=None):  # importlib.abc.MetaPathFinder
        if name not in MODULES:
            return None
        file = source(self.package, name)
        return importlib.util.spec_from_file_location(
            name, file, loader=importlib.machinery.SourceFileLoader(name, str(file))
        )


def guard(package: Path = PACKAGE) -> None:
    """Use the Python sources instead of a build that is stale or refused (``LBKIT_PURE=1``),
    saying so on stderr. Called by ``lbkit/__init__.py`` when :func:`built`."""
    if os.environ.get("LBKIT_PURE") == "1":
        sys.meta_path.insert(0, _FromSource(package))
        return
    old = stale(package)
    if old:
        more = f" (and {len(old) - 1} more)" if len(old) > 1 else ""
        print(
            f"lbkit: {old[0]}{more} changed after `make fast` compiled it: running the Python "
            "modules (make fast to compile again, make pure to remove the build)",
            file=sys.stderr,
        )
        sys.meta_path.insert(0, _FromSource(package))
