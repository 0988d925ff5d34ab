"""
Tests for L{qha.config} and C{twistd qha --config FILE}: the file's keys are
the options, the command line wins, a bad key or value stops the start with
a line naming the key and the file, and C{doc/configuration.md} lists every
key.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

import qha
from qha.config import ConfigError, markdownTable, optionSpecs, readConfig
from qha.tap import Options

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(qha.__file__)))
"""
The source tree (the docs and C{contrib/} are not in the wheel).
"""


class ReadConfigTests(SynchronousTestCase):
    """
    L{readConfig} over the options of C{twistd qha}.
    """

    def setUp(self) -> None:
        """
        The keys of L{Options}.
        """
        self.specs = optionSpecs(Options)

    def write(self, text: str) -> str:
        """
        A file holding C{text}; its path.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        return path

    def read(self, text: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
        """
        L{readConfig} of a file holding C{text}.
        """
        return readConfig(self.write(text), self.specs, environ or {})

    def assertRefused(self, text: str, *parts: str, environ: dict[str, str] | None = None) -> str:
        """
        C{text} is refused with a message holding the file's path and each
        of C{parts}; the message.
        """
        path = self.write(text)
        error = self.assertRaises(ConfigError, readConfig, path, self.specs, environ or {})
        message = str(error)
        self.assertIn(path, message)
        for part in parts:
            self.assertIn(part, message)
        return message

    def test_types(self) -> None:
        """
        Strings, whole numbers, numbers and flags, each as its option's
        default; a whole number given to a number is a float, a boolean
        given to a yes/no option is yes or no.
        """
        values = self.read(
            'port = "tcp:5673"\nheartbeat = 30\nha-backup-timeout = 2\n'
            "store-recover = true\nha-cluster = true\nha-queue-replication = \"no\"\n"
        )
        self.assertEqual(
            values,
            {
                "port": "tcp:5673",
                "heartbeat": 30,
                "ha-backup-timeout": 2.0,
                "store-recover": True,
                "ha-cluster": "yes",
                "ha-queue-replication": "no",
            },
        )
        self.assertIsInstance(values["ha-backup-timeout"], float)

    def test_everyOptionIsAKey(self) -> None:
        """
        Every long option of C{twistd qha} but C{--config} (and twistd's
        C{--help}, C{--version}) is a key.
        """
        options = Options()
        names = {name.rstrip("=") for name in options.longOpt} - {"help", "version", "config"}
        self.assertEqual(set(self.specs), names)

    def test_unknownKey(self) -> None:
        """
        A key that is no option names itself, the file, and a close option.
        """
        message = self.assertRefused('hearbeat = 3\n', "unknown key 'hearbeat'")
        self.assertIn("did you mean 'heartbeat'", message)
        self.assertRefused('config = "other.toml"\n', "unknown key 'config'")

    def test_wrongType(self) -> None:
        """
        A value of the wrong type names the key, the type it takes and the
        file.
        """
        self.assertRefused('heartbeat = "30"\n', "heartbeat must be an integer", "'30'")
        self.assertRefused("port = 5672\n", "port must be a string")
        self.assertRefused("store-recover = 1\n", "store-recover must be a boolean")
        self.assertRefused("heartbeat = true\n", "heartbeat must be an integer")
        self.assertRefused("[port]\nx = 1\n", "port must be a string, not a table")
        self.assertRefused("ha-cluster = 1\n", 'ha-cluster must be a "yes"/"no" or boolean')

    def test_badFile(self) -> None:
        """
        A file that is not TOML, or cannot be read, is refused with its path.
        """
        self.assertRefused('port = "tcp:5672\n', "not valid TOML")
        missing = self.mktemp()
        error = self.assertRaises(ConfigError, readConfig, missing, self.specs, {})
        self.assertIn(missing, str(error))
        self.assertIn("cannot read the config file", str(error))

    def test_fromFile(self) -> None:
        """
        C{KEY-file} takes the first line of the file, without its line end.
        """
        secret = self.write("s3cret\nsecond line\n")
        values = self.read(f'ha-username = "replicator"\nha-password-file = "{secret}"\nusers-file = "{secret}"\n')
        # ha-password-file is an option of its own (the broker reads it).
        self.assertEqual(values, {"ha-username": "replicator", "ha-password-file": secret, "users": "s3cret"})
        self.assertRefused(f'port-file = "{self.mktemp()}"\n', "port-file: cannot read")

    def test_fromEnvironment(self) -> None:
        """
        C{KEY-env} takes the environment variable it names; one that is not
        set is refused.
        """
        values = self.read('ha-password-env = "PASSWORD"\n', {"PASSWORD": "pw"})
        self.assertEqual(values, {"ha-password": "pw"})
        self.assertRefused('ha-password-env = "NOPE"\n', "ha-password-env", "NOPE is not set")

    def test_indirectOnlyForText(self) -> None:
        """
        Only an option whose value is text comes from a file or the
        environment, and C{KEY-file}/C{KEY-env} are strings.
        """
        self.assertRefused('heartbeat-env = "X"\n', "heartbeat-env: only options whose value is text", environ={"X": "3"})
        self.assertRefused("port-env = 3\n", "port-env must be a string")

    def test_givenTwice(self) -> None:
        """
        A key and its C{-env} form together are refused.
        """
        self.assertRefused(
            'ha-password = "a"\nha-password-env = "P"\n', "ha-password and ha-password-env", environ={"P": "b"}
        )

    def test_noExpansion(self) -> None:
        """
        C{${NAME}} in a value is kept as written (one rule: C{KEY-env}).
        """
        self.assertEqual(self.read('ha-cluster-name = "${HOME}"\n'), {"ha-cluster-name": "${HOME}"})


class OptionsConfigTests(SynchronousTestCase):
    """
    C{--config FILE} of L{Options}.
    """

    def write(self, text: str) -> str:
        """
        A config file holding C{text}; its path.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        return path

    def parse(self, *argv: str, environ: dict[str, str] | None = None) -> Options:
        """
        Options parsed from C{argv}, raising L{usage.UsageError}.
        """
        options = Options()
        options.exitOnError = False
        options.environ = environ or {}
        options.parseOptions(["--data-dir", self.mktemp(), *argv])
        return options

    def test_fileGivesDefaults(self) -> None:
        """
        The file's values are the options' values, through the same checks
        as the command line (a size, a range).
        """
        path = self.write(
            'port = "tcp:0:interface=127.0.0.1"\nheartbeat = 7\nmemory-high-watermark = "64MiB"\n'
            'http-port = "none"\nstore = "memory"\nstore-recover = true\nha-lease-ttl = 3\n'
        )
        options = self.parse("--config", path)
        self.assertEqual(options["port"], "tcp:0:interface=127.0.0.1")
        self.assertEqual(options["heartbeat"], 7)
        self.assertEqual(options["memory-high-watermark"], 64 * 1024**2)
        self.assertEqual(options["http-port"], "none")
        self.assertEqual(options["store"], "memory")
        self.assertEqual(options["store-recover"], 1)
        self.assertEqual(options["ha-lease-ttl"], 3)
        self.assertEqual(options["config"], path)

    def test_commandLineWins(self) -> None:
        """
        An option on the command line overrides the file's, before or after
        C{--config}, abbreviated or with C{=}.
        """
        path = self.write('heartbeat = 7\nstore = "memory"\n')
        self.assertEqual(self.parse("--heartbeat", "9", "--config", path)["heartbeat"], 9)
        self.assertEqual(self.parse("--config", path, "--heartbeat", "9")["heartbeat"], 9)
        options = self.parse(f"--config={path}", "--store", "journal")
        self.assertEqual((options["heartbeat"], options["store"]), (7, "journal"))
        self.assertEqual(self.parse("--conf", path)["heartbeat"], 7)

    def test_rangeNamesFileAndKey(self) -> None:
        """
        A value out of its option's range names the file and the key.
        """
        path = self.write("heartbeat = 70000\n")
        error = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertIn(f"config file {path}: heartbeat: --heartbeat must be between 0 and 65535", str(error))

    def test_checksAfterMerge(self) -> None:
        """
        The checks of options that go together see the file and the command
        line together.
        """
        path = self.write('ha-cluster = "yes"\n')
        self.assertRaises(usage.UsageError, self.parse, "--config", path)
        options = self.parse("--config", path, "--ha-brokers", "a:5673,b:5673")
        self.assertEqual(options["ha-cluster"], "yes")

    def test_secretFromEnvironment(self) -> None:
        """
        C{ha-password-env} gives C{--ha-username} its password.
        """
        path = self.write('ha-username = "replicator"\nha-password-env = "QHA_PW"\n')
        options = self.parse("--config", path, environ={"QHA_PW": "pw"})
        self.assertEqual(options["ha-password"], "pw")

    def test_refusedAtStart(self) -> None:
        """
        A bad file ends C{twistd qha} with one line naming the key and the
        file, and status 1.
        """
        import contextlib
        import io

        path = self.write("prot = 1\n")
        options = Options()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            exit = self.assertRaises(SystemExit, options.parseOptions, ["--config", path])
        self.assertEqual(exit.code, 1)
        self.assertIn(f"config file {path}: unknown key 'prot' (did you mean 'port'?)", err.getvalue())
        self.assertEqual(len(err.getvalue().splitlines()), 1)

    def test_example(self) -> None:
        """
        C{contrib/qha.toml} loads, and says what it says.
        """
        path = os.path.join(CHECKOUT, "contrib", "qha.toml")
        if not os.path.exists(path):
            raise self.skipTest(f"{path} is not here (an installed package has no contrib/)")
        values = readConfig(path, optionSpecs(Options), {})
        self.assertEqual(values["ha-cluster"], "yes")
        self.assertEqual(values["ha-brokers"], "node1:5673,node2:5673,node3:5673")
        options = self.parse("--config", path, "--data-dir", self.mktemp())
        self.assertEqual(options["log-format"], "json")
        self.assertEqual(options["ha-secret-file"], "/etc/qha/cluster-secret")
        self.assertEqual(len(options["brokers"]), 3)


class DocumentationTests(SynchronousTestCase):
    """
    C{doc/configuration.md} lists every key, so the doc cannot drift from
    L{Options}.
    """

    def test_everyKeyDocumented(self) -> None:
        """
        Each option is a row of the table of keys, and each row an option; a
        failure prints the rows to add (L{markdownTable}).
        """
        path = os.path.join(CHECKOUT, "doc", "configuration.md")
        if not os.path.exists(path):
            raise self.skipTest(f"{path} is not here (an installed package has no doc/)")
        with open(path, encoding="utf-8") as file:
            text = file.read()
        documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, re.MULTILINE))
        specs = optionSpecs(Options)
        missing = [name for name in specs if name not in documented]
        rows = [line for line in markdownTable(specs).splitlines() if any(f"`{m}`" in line.split("|")[1] for m in missing)]
        self.assertEqual(missing, [], "add these rows to doc/configuration.md:\n" + "\n".join(rows))
        self.assertEqual(sorted(documented - set(specs)), [], "doc/configuration.md lists keys that are no option")
