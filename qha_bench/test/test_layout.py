"""
Tests for the direction of imports between qha_bench and qha: the load
generator stands alone, and the broker never depends on its tools.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import qha
import qha_bench.bench


def importedModules(path: str) -> set[str]:
    """
    The absolute names of the modules a source file imports anywhere in it
    (module level or inside functions), relative imports resolved against
    its package.

    @param path: a Python source file inside a package.
    @return: the imported module names (for C{from a import b}, C{a}).
    """
    with open(path) as source:
        tree = ast.parse(source.read(), path)
    package = packageOf(path).split(".")
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def packageOf(path: str) -> str:
    """
    The dotted name of the package a source file belongs to, found by walking
    up the directories that hold an C{__init__.py}.

    @param path: a Python source file.
    @return: e.g. C{"qha.test"} for C{.../qha/test/test_x.py}.
    """
    parts: list[str] = []
    directory = os.path.dirname(os.path.abspath(path))
    while os.path.exists(os.path.join(directory, "__init__.py")):
        parts.insert(0, os.path.basename(directory))
        directory = os.path.dirname(directory)
    return ".".join(parts)


def isUnder(name: str, package: str) -> bool:
    """
    @return: whether module C{name} is C{package} or inside it.
    """
    return name == package or name.startswith(package + ".")


class ImportDirectionTests(SynchronousTestCase):
    """
    qha_bench may import qha; qha never imports qha_bench; and
    L{qha_bench.bench} imports nothing of qha, so it measures any broker.
    """

    def test_benchImportsNothingOfQha(self) -> None:
        """
        L{qha_bench.bench} imports no qha module and no other qha_bench
        module (which could import qha in turn).
        """
        path = qha_bench.bench.__file__
        assert path is not None
        imported = importedModules(path)
        self.assertEqual(
            sorted(
                name for name in imported
                if isUnder(name, "qha")
                or (isUnder(name, "qha_bench") and name != "qha_bench.bench")
            ),
            [],
        )

    def test_qhaImportsNothingOfQhaBench(self) -> None:
        """
        No source file of the qha package, tests included, imports
        qha_bench.
        """
        assert qha.__file__ is not None
        root = os.path.dirname(qha.__file__)
        offenders = []
        for directory, _, files in os.walk(root):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    if any(isUnder(m, "qha_bench") for m in importedModules(path)):
                        offenders.append(os.path.relpath(path, root))
        self.assertEqual(sorted(offenders), [])


class DistributionTests(SynchronousTestCase):
    """
    The distribution ships every package of the checkout.
    """

    def test_everyPackageListed(self) -> None:
        """
        setup.cfg's C{packages} names every directory with an
        C{__init__.py} under qha and qha_bench: a package left out is
        missing from the wheel, and C{twistd qha} from it fails on import.
        """
        import configparser

        root = os.path.dirname(os.path.dirname(qha.__file__))
        config = configparser.ConfigParser()
        config.read(os.path.join(root, "setup.cfg"))
        listed = set(config["options"]["packages"].split())
        found = set()
        for top in ("qha", "qha_bench"):
            for directory, _, files in os.walk(os.path.join(root, top)):
                if "__init__.py" in files:
                    found.add(os.path.relpath(directory, root).replace(os.sep, "."))
        self.assertEqual(found - listed, set())
