"""
The wheel: built from the source tree, installed into a new virtual
environment, C{twistd qha} runs from it with no C{PYTHONPATH} (Twisted
finds the plugin, and writes its plugin cache), and C{--version} prints
qha's version.

Offline: the wheel is built without build isolation (the running Python's
setuptools and wheel), and the new environment takes the dependencies
already installed in the running one (a C{.pth} line naming its
site-packages), so nothing is downloaded. About 10-30 seconds.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from twisted.trial.unittest import SynchronousTestCase

import qha

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(qha.__file__)))
"""
The source tree the wheel is built from.
"""

SOURCES = ("qha", "qha_bench", "twisted", "contrib", "setup.cfg", "pyproject.toml", "README.md")
"""
What of the source tree a build reads.
"""

DEADLINE = 180
"""
Seconds any one step may take.
"""


def cannotBuild() -> str | None:
    """
    Why a wheel cannot be built offline here, or C{None}.
    """
    if not os.path.exists(os.path.join(CHECKOUT, "setup.cfg")):
        return f"no source tree at {CHECKOUT} (qha is installed, not checked out)"
    for module in ("setuptools", "wheel", "pip"):
        try:
            __import__(module)
        except ImportError:
            return (
                f"{module} is not installed in {sys.prefix}: the wheel is built offline, without"
                " build isolation (`pip install wheel`, or `make .venv/.qha-installed` which"
                " installs the test extra)"
            )
    return None


class WheelTests(SynchronousTestCase):
    """
    The wheel, installed into a new virtual environment.
    """

    def run_(self, *command: str, cwd: str) -> str:
        """
        Run C{command} in C{cwd} without C{PYTHONPATH}; its output.

        @raise AssertionError: with the output, if it fails.
        """
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        environment["PIP_NO_INDEX"] = "1"
        environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        done = subprocess.run(
            command,
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=DEADLINE,
        )
        if done.returncode != 0:
            self.fail(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}")
        return done.stdout

    def test_installsAndRuns(self) -> None:
        """
        The wheel is C{qha-broker}, holds the plugin, and once installed
        C{twistd qha --help} lists qha's options and C{--version} prints its
        version, run from elsewhere with no C{PYTHONPATH}; Twisted wrote
        the plugin cache beside the plugin; C{qha-admin} runs.
        """
        reason = cannotBuild()
        if reason is not None:
            raise self.skipTest(reason)
        work = os.path.abspath(self.mktemp())
        source, dist, venv = (os.path.join(work, name) for name in ("source", "dist", "venv"))
        os.makedirs(source)
        ignore = shutil.ignore_patterns("__pycache__", "_trial_temp*", "dropin.cache", "*.egg-info")
        for name in SOURCES:
            path = os.path.join(CHECKOUT, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(source, name), ignore=ignore)
            else:
                shutil.copy(path, source)
        self.run_(
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
            "-q", "-w", dist, source, cwd=work,
        )
        [wheel] = glob.glob(os.path.join(dist, "*.whl"))
        self.assertTrue(
            os.path.basename(wheel).startswith(f"qha_broker-{qha.__version__}-"), wheel
        )
        with zipfile.ZipFile(wheel) as archive:
            self.assertIn("twisted/plugins/qha_plugin.py", archive.namelist())

        base = getattr(sys, "_base_executable", sys.executable)
        self.run_(base, "-m", "venv", venv, cwd=work)
        python = os.path.join(venv, "bin", "python")
        self.run_(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=work)
        purelib = self.run_(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work
        ).strip()
        # The dependencies: those of the running environment, after the
        # new one's own (which holds qha and the plugin).
        with open(os.path.join(purelib, "qha-dependencies.pth"), "w") as file:
            file.write(sysconfig.get_paths()["purelib"] + "\n")

        where = self.run_(python, "-c", "import qha; print(qha.__file__)", cwd=work)
        self.assertTrue(where.strip().startswith(purelib), where)
        twistd = [python, "-c", "from twisted.scripts.twistd import run; run()"]
        helped = self.run_(*twistd, "qha", "--help", cwd=work)
        self.assertIn("--config=", helped)
        self.assertIn("--log-level=", helped)
        self.assertTrue(os.path.exists(os.path.join(purelib, "twisted", "plugins", "dropin.cache")))
        version = self.run_(*twistd, "qha", "--version", cwd=work)
        self.assertEqual(version.strip(), f"qha {qha.__version__}")
        admin = self.run_(os.path.join(venv, "bin", "qha-admin"), "--help", cwd=work)
        self.assertIn("promote", admin)
        shown = self.run_(python, "-m", "pip", "show", "qha-broker", cwd=work)
        self.assertIn(f"Version: {qha.__version__}", shown)
