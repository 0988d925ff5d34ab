"""
Tests for L{qha.amqp.users}: the user database, SASL PLAIN and AMQPLAIN, the
users file and the C{qha-users} command.

Users are written with a tiny scrypt N (it is stored in each line) so that
the tests run fast; only the tests of the default database and of the
command line pay for the real cost.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import stat
import sys
import threading
from typing import Any, Callable

from pamqp import encode
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qha.amqp import users
from qha.amqp.users import (
    AuthenticationFailed,
    FailedLogins,
    IPasswordVerifier,
    ScryptHash,
    SynchronousVerifier,
    ThreadPoolVerifier,
    UserDatabase,
    hashPassword,
    main,
)
from qha.testing import RecordingVerifier

FAST_N = 2**4
"""
A scrypt N that makes a password check take microseconds; fine for tests.
"""


def plain(user: str, password: str, authzid: str = "") -> bytes:
    """
    Build a SASL PLAIN response.

    @param user: the authcid.
    @param password: the password.
    @param authzid: the authzid, empty by default as clients send it.
    @return: C{authzid NUL user NUL password} in UTF-8.
    """
    return f"{authzid}\0{user}\0{password}".encode("utf-8")


def amqplain(table: dict[str, Any]) -> bytes:
    """
    Build an AMQPLAIN response the way pika and py-amqp do: an AMQP field
    table without its 4-byte length.

    @param table: the table, normally LOGIN and PASSWORD.
    @return: the response.
    """
    return encode.field_table(table)[4:]


def usersFileText(**passwords: str) -> str:
    """
    The text of a users file with fast hashes.

    @param passwords: the password of each user, by name.
    @return: the file's text.
    """
    return "".join(
        f"{name}:{hashPassword(password, n=FAST_N)}\n"
        for name, password in passwords.items()
    )


class _UsersFileMixin:
    """
    Helpers for tests that need a users file on disk.
    """

    mktemp: Callable[[], str]

    def writeUsersFile(self, text: str | bytes) -> str:
        """
        Write a users file in a fresh temporary path.

        @param text: its content; text is written as UTF-8.
        @return: the path.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        return path


class HashPasswordTests(SynchronousTestCase):
    """
    Tests for L{hashPassword} and L{ScryptHash}.
    """

    def test_format(self) -> None:
        """
        The hash is C{scrypt$N$r$p$SALT$HASH} with a 16-byte salt and a
        32-byte hash, and records the parameters it was made with.
        """
        text = hashPassword("secret", n=FAST_N, r=2, p=3)
        self.assertTrue(text.startswith(f"scrypt${FAST_N}$2$3$"))
        parsed = ScryptHash.fromString(text)
        self.assertEqual((parsed.n, parsed.r, parsed.p), (FAST_N, 2, 3))
        self.assertEqual(len(parsed.salt), 16)
        self.assertEqual(len(parsed.digest), 32)
        self.assertEqual(parsed.asString(), text)

    def test_verify(self) -> None:
        """
        A hash verifies its own password and no other.
        """
        parsed = ScryptHash.fromString(hashPassword("secret", n=FAST_N))
        self.assertTrue(parsed.verify("secret"))
        self.assertFalse(parsed.verify("Secret"))
        self.assertFalse(parsed.verify(""))

    def test_matchesHashlib(self) -> None:
        """
        The hash is plain scrypt of the UTF-8 password, so other tools can
        produce users files.
        """
        parsed = ScryptHash.fromString(hashPassword("pässword", n=FAST_N))
        expected = hashlib.scrypt(
            "pässword".encode("utf-8"),
            salt=parsed.salt,
            n=FAST_N,
            r=8,
            p=1,
            dklen=32,
        )
        self.assertEqual(parsed.digest, expected)

    def test_saltIsRandom(self) -> None:
        """
        Hashing the same password twice gives different salts and hashes.
        """
        self.assertNotEqual(
            hashPassword("secret", n=FAST_N), hashPassword("secret", n=FAST_N)
        )

    def test_defaultParameters(self) -> None:
        """
        Without parameters the hash uses N=2**14, r=8, p=1.
        """
        self.assertTrue(hashPassword("secret").startswith("scrypt$16384$8$1$"))

    def test_badN(self) -> None:
        """
        An N that is not a power of two is refused.
        """
        self.assertRaises(ValueError, hashPassword, "secret", n=1000)


class PlainTests(SynchronousTestCase):
    """
    Tests for L{UserDatabase.authenticate} with PLAIN.
    """

    def setUp(self) -> None:
        """
        Make a database with the users bob and alice.
        """
        self.database = UserDatabase(
            {
                "bob": ScryptHash.fromPassword("builder", n=FAST_N),
                "alice": ScryptHash.fromPassword("wonder land", n=FAST_N),
            }
        )

    def assertRefused(
        self, mechanism: str, response: bytes, peerIsLoopback: bool = True
    ) -> str:
        """
        Assert that a login is refused with a 403 whose text fits in a
        connection.close reply-text.

        @param mechanism: the mechanism.
        @param response: the response.
        @param peerIsLoopback: whether the client is on loopback.
        @return: the exception's text.
        """
        error = self.assertRaises(
            AuthenticationFailed,
            self.database.authenticate,
            mechanism,
            response,
            peerIsLoopback,
        )
        self.assertEqual(error.replyCode, 403)
        self.assertEqual(error.replyText, f"ACCESS_REFUSED - {error}")
        self.assertLessEqual(len(error.replyText.encode("utf-8")), 255)
        return str(error)

    def test_mechanisms(self) -> None:
        """
        PLAIN and AMQPLAIN are offered.
        """
        self.assertEqual(self.database.mechanisms(), ["PLAIN", "AMQPLAIN"])

    def test_ok(self) -> None:
        """
        The right password logs the user in, from anywhere, and the user
        name is returned.
        """
        self.assertEqual(
            self.database.authenticate("PLAIN", plain("bob", "builder"), False),
            "bob",
        )
        self.assertEqual(
            self.database.authenticate(
                "PLAIN", plain("alice", "wonder land"), True
            ),
            "alice",
        )

    def test_authzidSameAsUser(self) -> None:
        """
        An authzid equal to the user name is accepted.
        """
        self.assertEqual(
            self.database.authenticate(
                "PLAIN", plain("bob", "builder", authzid="bob"), True
            ),
            "bob",
        )

    def test_authzidOtherUser(self) -> None:
        """
        A user may not act as another one through the authzid.
        """
        text = self.assertRefused("PLAIN", plain("bob", "builder", authzid="alice"))
        self.assertIn("cannot act as another user", text)

    def test_badPassword(self) -> None:
        """
        A wrong password is refused with a message naming the user and the
        mechanism.
        """
        text = self.assertRefused("PLAIN", plain("bob", "nope"))
        self.assertEqual(
            text,
            "login refused for user 'bob' with mechanism PLAIN: "
            "bad username or password",
        )

    def test_unknownUser(self) -> None:
        """
        An unknown user gets the same message as a wrong password, so that
        clients cannot learn which users exist.
        """
        unknown = self.assertRefused("PLAIN", plain("carol", "builder"))
        wrong = self.assertRefused("PLAIN", plain("carol", "x"))
        self.assertEqual(unknown, wrong)
        self.assertEqual(
            unknown,
            "login refused for user 'carol' with mechanism PLAIN: "
            "bad username or password",
        )

    def test_empty(self) -> None:
        """
        An empty response is malformed.
        """
        text = self.assertRefused("PLAIN", b"")
        self.assertIn("malformed response: empty", text)

    def test_emptyUserName(self) -> None:
        """
        An empty user name is malformed.
        """
        text = self.assertRefused("PLAIN", plain("", "builder"))
        self.assertIn("malformed response: empty user name", text)

    def test_emptyPassword(self) -> None:
        """
        An empty password is simply wrong.
        """
        text = self.assertRefused("PLAIN", plain("bob", ""))
        self.assertIn("bad username or password", text)

    def test_noNul(self) -> None:
        """
        A response without NUL bytes is malformed.
        """
        text = self.assertRefused("PLAIN", b"bob builder")
        self.assertIn("malformed response: 0 NUL bytes instead of 2", text)

    def test_oneNul(self) -> None:
        """
        A response with a single NUL byte is malformed.
        """
        text = self.assertRefused("PLAIN", b"bob\0builder")
        self.assertIn("malformed response: 1 NUL bytes instead of 2", text)

    def test_tooManyParts(self) -> None:
        """
        A response with more than three parts is malformed (RFC 4616
        passwords cannot contain NUL).
        """
        text = self.assertRefused("PLAIN", b"\0bob\0build\0er")
        self.assertIn("malformed response: 3 NUL bytes instead of 2", text)

    def test_notUTF8(self) -> None:
        """
        A response that is not UTF-8 is malformed.
        """
        text = self.assertRefused("PLAIN", b"\0bob\0\xff\xfe")
        self.assertIn("malformed response: not valid UTF-8", text)

    def test_unknownMechanism(self) -> None:
        """
        An unknown mechanism is refused with the list of supported ones.
        """
        text = self.assertRefused("EXTERNAL", b"")
        self.assertEqual(
            text,
            "login refused: unknown authentication mechanism 'EXTERNAL'; "
            "supported: PLAIN AMQPLAIN",
        )

    def test_longNamesShortened(self) -> None:
        """
        A huge user name or mechanism is shortened in the error, which must
        fit in a reply-text of 255 bytes.
        """
        text = self.assertRefused("PLAIN", plain("ü" * 10000, "x"))
        self.assertIn("'" + "ü" * 32 + "'...", text)
        self.assertRefused("X" * 300, b"")

    def test_refusalLogged(self) -> None:
        """
        A refused login is logged (by L{FailedLogins}, with the client's
        address) with the detail the client is not told: whether the user
        exists.
        """
        events = EventLoggingObserver()
        self.patch(FailedLogins, "log", Logger(observer=ILogObserver(events)))
        failedLogins = FailedLogins(Clock())
        for source, response in [
            ("192.0.2.1", plain("carol", "x")),
            ("192.0.2.2", plain("bob", "x")),
        ]:
            error = self.assertRaises(
                AuthenticationFailed, self.database.authenticate, "PLAIN", response, True
            )
            failedLogins.failed(source, error)
        self.assertEqual(
            [(e["user"], e["reason"]) for e in events],
            [("carol", "unknown user"), ("bob", "wrong password")],
        )


class AMQPlainTests(SynchronousTestCase):
    """
    Tests for L{UserDatabase.authenticate} with AMQPLAIN.
    """

    def setUp(self) -> None:
        """
        Make a database with the user bob.
        """
        self.database = UserDatabase(
            {"bob": ScryptHash.fromPassword("builder", n=FAST_N)}
        )

    def assertMalformed(self, response: bytes) -> str:
        """
        Assert that an AMQPLAIN response is refused as malformed.

        @param response: the response.
        @return: the exception's text.
        """
        error = self.assertRaises(
            AuthenticationFailed,
            self.database.authenticate,
            "AMQPLAIN",
            response,
            True,
        )
        self.assertIn("with mechanism AMQPLAIN: malformed response", str(error))
        return str(error)

    def test_ok(self) -> None:
        """
        LOGIN and PASSWORD in a field table log the user in.
        """
        response = amqplain({"LOGIN": "bob", "PASSWORD": "builder"})
        self.assertEqual(
            self.database.authenticate("AMQPLAIN", response, False), "bob"
        )

    def test_badPassword(self) -> None:
        """
        A wrong password is refused like with PLAIN.
        """
        response = amqplain({"LOGIN": "bob", "PASSWORD": "x"})
        error = self.assertRaises(
            AuthenticationFailed,
            self.database.authenticate,
            "AMQPLAIN",
            response,
            True,
        )
        self.assertEqual(
            str(error),
            "login refused for user 'bob' with mechanism AMQPLAIN: "
            "bad username or password",
        )

    def test_empty(self) -> None:
        """
        An empty response is malformed.
        """
        self.assertIn("empty", self.assertMalformed(b""))

    def test_garbage(self) -> None:
        """
        Bytes that are not a field table are malformed.
        """
        self.assertIn("not a field table", self.assertMalformed(b"\x05LOGINZ"))
        self.assertIn(
            "not a field table", self.assertMalformed(b"\xff" + b"\x00" * 3)
        )

    def test_withLengthPrefix(self) -> None:
        """
        A complete field table, length included, is not what AMQPLAIN
        clients send and is refused, not misread.
        """
        self.assertMalformed(
            encode.field_table({"LOGIN": "bob", "PASSWORD": "builder"})
        )

    def test_deeplyNested(self) -> None:
        """
        A table nested deeper than Python can recurse is refused as
        malformed, not with RecursionError.
        """
        depth = sys.getrecursionlimit() + 100
        inner = b""
        for _ in range(depth):
            inner = b"\x01xF" + len(inner).to_bytes(4, "big") + inner
        self.assertMalformed(inner)

    def test_missingPassword(self) -> None:
        """
        A table without PASSWORD is malformed.
        """
        text = self.assertMalformed(amqplain({"LOGIN": "bob"}))
        self.assertIn("LOGIN and PASSWORD must be UTF-8 long strings", text)

    def test_notStrings(self) -> None:
        """
        LOGIN and PASSWORD that are not strings are malformed.
        """
        self.assertMalformed(amqplain({"LOGIN": 5, "PASSWORD": "builder"}))
        # A long string that is not UTF-8 (pamqp decodes it to bytes).
        self.assertMalformed(
            b"\x05LOGINS\x00\x00\x00\x03bob" + b"\x08PASSWORDS\x00\x00\x00\x01\xff"
        )

    def test_emptyLogin(self) -> None:
        """
        An empty LOGIN is malformed.
        """
        text = self.assertMalformed(amqplain({"LOGIN": "", "PASSWORD": "x"}))
        self.assertIn("empty user name", text)


class GuestTests(SynchronousTestCase, _UsersFileMixin):
    """
    Tests for the user guest, which may only log in from loopback.
    """

    def test_default(self) -> None:
        """
        The default database has the single user guest, password guest,
        which logs in from loopback.
        """
        database = UserDatabase.default()
        self.assertEqual(database.users(), ["guest"])
        self.assertEqual(
            database.authenticate("PLAIN", plain("guest", "guest"), True), "guest"
        )

    def test_defaultNotFromNetwork(self) -> None:
        """
        The default guest is refused from a non-loopback address, with a
        message that says why.
        """
        database = UserDatabase.default()
        error = self.assertRaises(
            AuthenticationFailed,
            database.authenticate,
            "PLAIN",
            plain("guest", "guest"),
            False,
        )
        self.assertEqual(
            error.replyText,
            "ACCESS_REFUSED - login refused for user 'guest' with mechanism "
            "PLAIN: user 'guest' may only connect from a loopback address; "
            "add another user with qha-users",
        )

    def test_fromFileNotFromNetwork(self) -> None:
        """
        A guest defined in a users file is also refused from a non-loopback
        address, with either mechanism, and allowed from loopback.
        """
        database = UserDatabase.fromFile(
            self.writeUsersFile(usersFileText(guest="s3cret"))
        )
        for mechanism, response in [
            ("PLAIN", plain("guest", "s3cret")),
            ("AMQPLAIN", amqplain({"LOGIN": "guest", "PASSWORD": "s3cret"})),
        ]:
            error = self.assertRaises(
                AuthenticationFailed,
                database.authenticate,
                mechanism,
                response,
                False,
            )
            self.assertIn("may only connect from a loopback address", str(error))
            self.assertEqual(
                database.authenticate(mechanism, response, True), "guest"
            )

    def test_guestPasswordNotProbedFromNetwork(self) -> None:
        """
        From the network, guest is refused before any password check, so
        neither its password nor its existence can be probed.
        """
        calls: list[object] = []
        self.patch(hashlib, "scrypt", lambda *a, **k: calls.append(a))
        database = UserDatabase({})
        self.assertRaises(
            AuthenticationFailed,
            database.authenticate,
            "PLAIN",
            plain("guest", "guest"),
            False,
        )
        self.assertEqual(calls, [])


class CacheTests(SynchronousTestCase, _UsersFileMixin):
    """
    Tests for remembering successful password checks.
    """

    def setUp(self) -> None:
        """
        Count scrypt computations.
        """
        self.scryptCalls = 0
        realScrypt = hashlib.scrypt

        def countingScrypt(*args: Any, **kwargs: Any) -> bytes:
            self.scryptCalls += 1
            return realScrypt(*args, **kwargs)

        self.patch(hashlib, "scrypt", countingScrypt)

    def test_successRemembered(self) -> None:
        """
        A second login with the same password costs no scrypt computation.
        """
        database = UserDatabase({"bob": ScryptHash.fromPassword("b", n=FAST_N)})
        self.scryptCalls = 0
        database.authenticate("PLAIN", plain("bob", "b"), True)
        database.authenticate("PLAIN", plain("bob", "b"), True)
        database.authenticate(
            "AMQPLAIN", amqplain({"LOGIN": "bob", "PASSWORD": "b"}), True
        )
        self.assertEqual(self.scryptCalls, 1)

    def test_failureNotRemembered(self) -> None:
        """
        A wrong password is checked every time, even after the right one
        succeeded.
        """
        database = UserDatabase({"bob": ScryptHash.fromPassword("b", n=FAST_N)})
        database.authenticate("PLAIN", plain("bob", "b"), True)
        self.scryptCalls = 0
        for _ in range(2):
            self.assertRaises(
                AuthenticationFailed,
                database.authenticate,
                "PLAIN",
                plain("bob", "x"),
                True,
            )
        self.assertEqual(self.scryptCalls, 2)

    def test_reloadForgets(self) -> None:
        """
        L{UserDatabase.reload} reads the file again and forgets remembered
        checks: a changed password is refused at once.
        """
        path = self.writeUsersFile(usersFileText(bob="old"))
        database = UserDatabase.fromFile(path)
        database.authenticate("PLAIN", plain("bob", "old"), True)
        with open(path, "w") as f:
            f.write(usersFileText(bob="new", alice="a"))
        database.reload()
        self.assertEqual(database.users(), ["alice", "bob"])
        self.assertRaises(
            AuthenticationFailed,
            database.authenticate,
            "PLAIN",
            plain("bob", "old"),
            True,
        )
        self.assertEqual(
            database.authenticate("PLAIN", plain("bob", "new"), True), "bob"
        )

    def test_reloadErrorKeepsUsers(self) -> None:
        """
        If the file has become malformed, L{UserDatabase.reload} raises
        L{ValueError} and the database keeps its users.
        """
        path = self.writeUsersFile(usersFileText(bob="b"))
        database = UserDatabase.fromFile(path)
        with open(path, "w") as f:
            f.write("nonsense\n")
        self.assertRaises(ValueError, database.reload)
        self.assertEqual(database.authenticate("PLAIN", plain("bob", "b"), True), "bob")

    def test_reloadWithoutFile(self) -> None:
        """
        A database not loaded from a file cannot be reloaded.
        """
        self.assertRaises(ValueError, UserDatabase({}).reload)


class UsersFileTests(SynchronousTestCase, _UsersFileMixin):
    """
    Tests for L{UserDatabase.fromFile}.
    """

    def assertFileError(self, text: str | bytes, message: str) -> None:
        """
        Assert that loading a users file fails with a one-line message
        naming the file.

        @param text: the file's content.
        @param message: the expected message after the file's name.
        """
        path = self.writeUsersFile(text)
        error = self.assertRaises(ValueError, UserDatabase.fromFile, path)
        self.assertEqual(str(error), f"users file {path!r}, {message}")
        self.assertNotIn("\n", str(error))

    def test_load(self) -> None:
        """
        Users are loaded; comments, blank lines, surrounding whitespace and
        CRLF line endings are fine.
        """
        entries = usersFileText(bob="b", ünïcode="u").splitlines()
        text = (
            "\ufeff# users\r\n\r\n   \n"
            f"  {entries[0]}  \r\n    # more\n{entries[1]}"
        )
        database = UserDatabase.fromFile(self.writeUsersFile(text))
        self.assertEqual(database.users(), ["bob", "ünïcode"])
        self.assertEqual(
            database.authenticate("PLAIN", plain("ünïcode", "u"), False), "ünïcode"
        )

    def test_empty(self) -> None:
        """
        An empty file is a database without users.
        """
        self.assertEqual(UserDatabase.fromFile(self.writeUsersFile("")).users(), [])

    def test_missing(self) -> None:
        """
        A missing file is an error naming it.
        """
        path = self.mktemp()
        error = self.assertRaises(ValueError, UserDatabase.fromFile, path)
        self.assertEqual(
            str(error), f"cannot read users file {path!r}: No such file or directory"
        )

    def test_noColon(self) -> None:
        """
        A line without ':' is an error naming its line.
        """
        self.assertFileError(
            "# comment\n\nbob\n",
            "line 3: expected NAME:scrypt$N$r$p$SALT$HASH, found no ':'",
        )

    def test_badName(self) -> None:
        """
        A user name with whitespace is an error naming the line.
        """
        self.assertFileError(
            "b ob:" + hashPassword("x", n=FAST_N) + "\n",
            "line 1: user name 'b ob' may not contain ':', whitespace or "
            "control characters",
        )

    def test_emptyName(self) -> None:
        """
        An empty user name is an error naming the line.
        """
        self.assertFileError(
            ":" + hashPassword("x", n=FAST_N), "line 1: user name is empty"
        )

    def test_duplicate(self) -> None:
        """
        A user defined twice is an error naming both lines.
        """
        self.assertFileError(
            usersFileText(bob="a") + "# again\n" + usersFileText(bob="b"),
            "line 3: user 'bob' is already defined on line 1",
        )

    def test_notUTF8(self) -> None:
        """
        A line that is not UTF-8 is an error naming it.
        """
        self.assertFileError(
            usersFileText(bob="a").encode("ascii") + b"\xff:x\n",
            "line 2: not valid UTF-8",
        )

    def test_notScrypt(self) -> None:
        """
        A hash that is not C{scrypt$N$r$p$SALT$HASH} is an error.
        """
        self.assertFileError(
            "bob:bcrypt$1$2$3$4$5\n",
            "line 1: the password hash is not scrypt$N$r$p$SALT$HASH",
        )
        self.assertFileError(
            "bob:plaintext\n",
            "line 1: the password hash is not scrypt$N$r$p$SALT$HASH",
        )

    def test_badParameters(self) -> None:
        """
        Bad scrypt parameters are errors: not numbers, N not a power of
        two, or more memory than a login may use.
        """
        good = hashPassword("x", n=FAST_N).split("$")
        for n, r, p, message in [
            ("x", "8", "1", "the scrypt N, r and p must be numbers"),
            ("1000", "8", "1", "the scrypt N must be a power of two greater than 1"),
            ("1", "8", "1", "the scrypt N must be a power of two greater than 1"),
            ("16", "0", "1", "the scrypt r must be at least 1 and p between 1 and 16"),
            ("16", "8", "0", "the scrypt r must be at least 1 and p between 1 and 16"),
            (
                str(2**20),
                "8",
                "1",
                "the scrypt N and r need more than 256 MiB per login",
            ),
        ]:
            line = "$".join(["scrypt", n, r, p, good[4], good[5]])
            self.assertFileError(f"bob:{line}\n", f"line 1: {message}")

    def test_badBase64(self) -> None:
        """
        A salt or hash that is not base64 is an error.
        """
        good = hashPassword("x", n=FAST_N).split("$")
        self.assertFileError(
            "bob:" + "$".join(good[:4] + ["!!!", good[5]]),
            "line 1: the salt is not valid base64",
        )
        self.assertFileError(
            "bob:" + "$".join(good[:5] + ["é"]),
            "line 1: the hash is not valid base64",
        )
        self.assertFileError(
            "bob:" + "$".join(good[:5] + [""]),
            "line 1: the hash is empty",
        )
        self.assertFileError(
            "bob:" + "$".join(good[:5] + ["AAAA"]),
            "line 1: the hash is shorter than 16 bytes",
        )


class CommandLineTests(SynchronousTestCase, _UsersFileMixin):
    """
    Tests for L{main}, the C{qha-users} command.
    """

    def setUp(self) -> None:
        """
        Capture standard output and error, and give no standard input.
        """
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.patch(sys, "stdin", io.StringIO(""))

    def runCommand(self, *argv: str, stdin: str | None = None) -> int:
        """
        Run C{qha-users}.

        @param argv: its arguments.
        @param stdin: its standard input, if any.
        @return: its exit status.
        """
        if stdin is not None:
            self.patch(sys, "stdin", io.StringIO(stdin))
        return main(list(argv))

    def assertFails(self, message: str, *argv: str, stdin: str | None = None) -> None:
        """
        Assert that C{qha-users} exits with 1 after one line of error.

        @param message: the expected error line, without the
            C{qha-users: error: } prefix and the newline.
        @param argv: its arguments.
        @param stdin: its standard input, if any.
        """
        self.assertEqual(self.runCommand(*argv, stdin=stdin), 1)
        self.assertEqual(self.stderr.getvalue(), f"qha-users: error: {message}\n")

    def test_roundTrip(self) -> None:
        """
        A user added with C{--password-stdin} is in a new file of mode 0600
        that the broker loads and that lets the user log in.
        """
        path = self.mktemp()
        self.assertEqual(
            self.runCommand(path, "add", "bob", "--password-stdin", stdin="b s\n"),
            0,
        )
        self.assertEqual(self.stdout.getvalue(), f"added user 'bob' to {path}\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        database = UserDatabase.fromFile(path)
        self.assertEqual(database.users(), ["bob"])
        self.assertEqual(
            database.authenticate("PLAIN", plain("bob", "b s"), False), "bob"
        )
        # No temporary file is left behind.
        self.assertEqual(
            os.listdir(os.path.dirname(os.path.abspath(path))),
            [os.path.basename(path)],
        )

    def test_addReplaces(self) -> None:
        """
        Adding an existing user changes its password in place and keeps the
        other lines and the file's mode.
        """
        path = self.writeUsersFile("# keep me\n" + usersFileText(bob="old", alice="a"))
        os.chmod(path, 0o640)
        self.assertEqual(
            self.runCommand(path, "add", "--password-stdin", "bob", stdin="new\r\n"),
            0,
        )
        self.assertEqual(
            self.stdout.getvalue(), f"changed the password of user 'bob' in {path}\n"
        )
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "# keep me")
        self.assertEqual([line.split(":")[0] for line in lines[1:]], ["bob", "alice"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        database = UserDatabase.fromFile(path)
        self.assertEqual(
            database.authenticate("PLAIN", plain("bob", "new"), True), "bob"
        )
        self.assertRaises(
            AuthenticationFailed,
            database.authenticate,
            "PLAIN",
            plain("bob", "old"),
            True,
        )

    def test_addWithPrompt(self) -> None:
        """
        Without C{--password-stdin} the password is asked for twice.
        """
        prompts: list[str] = []

        def fakeGetpass(prompt: str) -> str:
            prompts.append(prompt)
            return "typed"

        self.patch(users, "getpass", fakeGetpass)
        path = self.mktemp()
        self.assertEqual(self.runCommand(path, "add", "bob"), 0)
        self.assertEqual(prompts, ["Password for 'bob': ", "Password again: "])
        self.assertEqual(
            UserDatabase.fromFile(path).authenticate(
                "PLAIN", plain("bob", "typed"), True
            ),
            "bob",
        )

    def test_promptMismatch(self) -> None:
        """
        Two different passwords at the prompt are an error, and no file is
        written.
        """
        answers = iter(["one", "two"])
        self.patch(users, "getpass", lambda prompt: next(answers))
        path = self.mktemp()
        self.assertFails("the passwords do not match", path, "add", "bob")
        self.assertFalse(os.path.exists(path))

    def test_emptyPassword(self) -> None:
        """
        An empty password or no standard input at all is an error.
        """
        path = self.mktemp()
        self.assertFails(
            "the password is empty",
            path,
            "add",
            "bob",
            "--password-stdin",
            stdin="\n",
        )
        self.stderr.truncate(0)
        self.stderr.seek(0)
        self.assertFails(
            "no password on standard input", path, "add", "bob", "--password-stdin"
        )
        self.assertFalse(os.path.exists(path))

    def test_badName(self) -> None:
        """
        A user name the file cannot hold is an error.
        """
        self.assertFails(
            "user name 'a:b' may not contain ':', whitespace or control characters",
            self.mktemp(),
            "add",
            "a:b",
            "--password-stdin",
            stdin="x\n",
        )

    def test_addToMalformedFile(self) -> None:
        """
        A malformed file is not edited; the error names its line.
        """
        path = self.writeUsersFile("bob\n")
        self.assertFails(
            f"users file {path!r}, line 1: expected NAME:scrypt$N$r$p$SALT$HASH, "
            "found no ':'",
            path,
            "add",
            "alice",
            "--password-stdin",
            stdin="x\n",
        )
        with open(path) as f:
            self.assertEqual(f.read(), "bob\n")

    def test_remove(self) -> None:
        """
        C{remove} takes a user out of the file and keeps the rest.
        """
        path = self.writeUsersFile("# c\n" + usersFileText(bob="b", alice="a"))
        self.assertEqual(self.runCommand(path, "remove", "bob"), 0)
        self.assertEqual(self.stdout.getvalue(), f"removed user 'bob' from {path}\n")
        self.assertEqual(UserDatabase.fromFile(path).users(), ["alice"])
        with open(path) as f:
            self.assertEqual(f.readline(), "# c\n")

    def test_removeUnknown(self) -> None:
        """
        Removing a user that is not there is an error.
        """
        path = self.writeUsersFile(usersFileText(bob="b"))
        self.assertFails(
            f"there is no user 'carol' in {path!r}", path, "remove", "carol"
        )

    def test_removeMissingFile(self) -> None:
        """
        Removing from a file that does not exist is an error naming it.
        """
        path = self.mktemp()
        self.assertFails(
            f"cannot read users file {path!r}: No such file or directory",
            path,
            "remove",
            "bob",
        )

    def test_list(self) -> None:
        """
        C{list} prints the users one per line, in file order.
        """
        path = self.writeUsersFile(usersFileText(bob="b", alice="a") + "# c\n")
        self.assertEqual(self.runCommand(path, "list"), 0)
        self.assertEqual(self.stdout.getvalue(), "bob\nalice\n")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_usageError(self) -> None:
        """
        A wrong command line is one line of error and exit status 1.
        """
        self.assertEqual(self.runCommand("file", "frobnicate"), 1)
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("qha-users: error: "))
        self.assertIn("see qha-users --help", lines[0])

    def test_help(self) -> None:
        """
        C{--help} prints the usage and exits with 0.
        """
        self.assertEqual(self.runCommand("--help"), 0)
        self.assertIn("usage: qha-users", self.stdout.getvalue())


class LoginTests(SynchronousTestCase):
    """
    Tests for L{UserDatabase.login}: the password check goes through an
    L{IPasswordVerifier}, everything else happens at once.
    """

    def setUp(self) -> None:
        """
        A database with bob, and a verifier that waits for the test.
        """
        self.bob = ScryptHash.fromPassword("builder", n=FAST_N)
        self.database = UserDatabase({"bob": self.bob})
        self.verifier = RecordingVerifier()

    def test_verifiers(self) -> None:
        """
        Both verifiers provide L{IPasswordVerifier}.
        """
        self.assertTrue(verifyObject(IPasswordVerifier, SynchronousVerifier()))
        self.assertTrue(verifyObject(IPasswordVerifier, ThreadPoolVerifier(Clock())))
        self.assertTrue(verifyObject(IPasswordVerifier, RecordingVerifier()))

    def test_passwordCheckedByVerifier(self) -> None:
        """
        The user's hash and the password go to the verifier, and the login
        succeeds once it says they match.
        """
        self.patch(ScryptHash, "verify", lambda *args: self.fail("hashed on this thread"))
        results: list[Any] = []
        self.database.login(
            "PLAIN", plain("bob", "builder"), True, self.verifier
        ).addBoth(results.append)
        self.assertEqual(results, [])
        [(passwordHash, password, d)] = self.verifier.calls
        self.assertEqual((passwordHash, password), (self.bob, "builder"))
        d.callback(True)
        self.assertEqual(results, ["bob"])

    def test_wrongPassword(self) -> None:
        """
        A password the verifier says does not match is refused.
        """
        d = self.database.login("PLAIN", plain("bob", "x"), True, self.verifier)
        self.verifier.calls[0][2].callback(False)
        error = self.failureResultOf(d, AuthenticationFailed).value
        self.assertEqual(error.logReason, "wrong password")

    def test_unknownUserCostsACheck(self) -> None:
        """
        An unknown user is checked against a stand-in hash too (the time
        must not tell whether a user exists), then refused.
        """
        d = self.database.login("PLAIN", plain("carol", "x"), True, self.verifier)
        [(passwordHash, _, check)] = self.verifier.calls
        self.assertIsNot(passwordHash, self.bob)
        check.callback(True)
        error = self.failureResultOf(d, AuthenticationFailed).value
        self.assertEqual((error.user, error.logReason), ("carol", "unknown user"))

    def test_refusedWithoutCheck(self) -> None:
        """
        A malformed response, an unknown mechanism and guest from the
        network are refused at once, with no password check.
        """
        for mechanism, response, loopback in [
            ("PLAIN", b"garbage", True),
            ("EXTERNAL", b"", True),
            ("PLAIN", plain("guest", "guest"), False),
        ]:
            d = self.database.login(mechanism, response, loopback, self.verifier)
            self.failureResultOf(d, AuthenticationFailed)
        self.assertEqual(self.verifier.calls, [])

    def test_rememberedSuccess(self) -> None:
        """
        A login that succeeded before needs no second check.
        """
        self.database.login("PLAIN", plain("bob", "builder"), True, self.verifier)
        self.verifier.calls[0][2].callback(True)
        d = self.database.login("PLAIN", plain("bob", "builder"), True, self.verifier)
        self.assertEqual(self.successResultOf(d), "bob")
        self.assertEqual(len(self.verifier.calls), 1)


class ThreadPoolVerifierTests(SynchronousTestCase):
    """
    Tests for L{ThreadPoolVerifier}.
    """

    def test_offTheReactorThread(self) -> None:
        """
        The password is hashed in a thread of the pool, not in the thread
        that asked (the reactor's), and the answer comes back through the
        reactor's C{callFromThread}.
        """
        answers: queue.Queue[Any] = queue.Queue()

        class Reactor:
            """
            The part of a reactor that L{deferToThreadPool} uses.
            """

            def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
                """
                Hand the call to the test's thread.
                """
                answers.put((f, args))

        threads: list[int] = []
        original = ScryptHash.verify

        def recordingVerify(passwordHash: ScryptHash, password: str) -> bool:
            threads.append(threading.get_ident())
            return original(passwordHash, password)

        self.patch(ScryptHash, "verify", recordingVerify)
        verifier = ThreadPoolVerifier(Reactor(), threads=2)
        verifier.startService()
        self.addCleanup(verifier.stopService)
        d = verifier.verify(ScryptHash.fromPassword("p", n=FAST_N), "p")
        f, args = answers.get(timeout=30)
        f(*args)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.get_ident())


class FailedLoginsTests(SynchronousTestCase):
    """
    Tests for L{FailedLogins}: delays that grow per source, bounded, and
    one log line per source and interval.
    """

    def setUp(self) -> None:
        """
        A L{FailedLogins} on a clock, logging to C{self.events}; no timer
        may be left at the end.
        """
        self.clock = Clock()
        self.events = EventLoggingObserver()
        self.patch(FailedLogins, "log", Logger(observer=ILogObserver(self.events)))
        self.failedLogins = FailedLogins(
            self.clock, firstDelay=0.1, maxDelay=2.0, interval=10.0, forgetAfter=60.0
        )
        self.failure = AuthenticationFailed(
            "login refused", user="bob", mechanism="PLAIN", logReason="wrong password"
        )
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def test_delayGrowsPerSourceBounded(self) -> None:
        """
        The delay doubles with each failure from one address up to the
        bound; another address starts from the first delay; an address
        quiet for C{forgetAfter} starts again.
        """
        delays = [self.failedLogins.failed("192.0.2.1", self.failure) for _ in range(7)]
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
        self.assertEqual(self.failedLogins.failed("192.0.2.2", self.failure), 0.1)
        self.clock.advance(60)
        self.assertEqual(self.failedLogins.failed("192.0.2.1", self.failure), 0.1)
        self.clock.advance(60)

    def test_oneLinePerInterval(self) -> None:
        """
        The first failure from an address is logged at once; a flood after
        it is one line with its count at the end of the interval; the
        next interval gets one line again.
        """
        for _ in range(100):
            self.failedLogins.failed("192.0.2.1", self.failure)
        self.assertEqual(len(self.events), 1)
        self.assertEqual(
            (self.events[0]["source"], self.events[0]["user"], self.events[0]["reason"]),
            ("192.0.2.1", "bob", "wrong password"),
        )
        self.clock.advance(10)
        self.assertEqual(len(self.events), 2)
        self.assertEqual((self.events[1]["count"], self.events[1]["source"]), (99, "192.0.2.1"))
        for _ in range(50):
            self.clock.advance(0.1)
            self.failedLogins.failed("192.0.2.1", self.failure)
        self.clock.advance(10)
        self.assertEqual([event.get("count") for event in self.events], [None, 99, 50])

    def test_sourcesLoggedApart(self) -> None:
        """
        Each address gets its own lines.
        """
        for _ in range(3):
            self.failedLogins.failed("192.0.2.1", self.failure)
            self.failedLogins.failed("192.0.2.2", self.failure)
        self.clock.advance(10)
        self.assertEqual(
            sorted((event["source"], event.get("count", 1)) for event in self.events),
            [("192.0.2.1", 1), ("192.0.2.1", 2), ("192.0.2.2", 1), ("192.0.2.2", 2)],
        )

    def test_stopLogsTheRest(self) -> None:
        """
        Stopping logs the counts not logged yet and leaves no timer.
        """
        self.failedLogins.startService()
        for _ in range(5):
            self.failedLogins.failed("192.0.2.1", self.failure)
        self.failedLogins.stopService()
        self.assertEqual([event.get("count") for event in self.events], [None, 4])

    def test_boundedSources(self) -> None:
        """
        At most C{maxSources} addresses are remembered; the least recent is
        forgotten (its count logged) first.
        """
        self.failedLogins.maxSources = 3
        for index in range(5):
            self.failedLogins.failed(f"192.0.2.{index}", self.failure)
            self.failedLogins.failed(f"192.0.2.{index}", self.failure)
        self.assertEqual(len(self.failedLogins._sources), 3)
        self.assertEqual(
            [(event["source"], event.get("count")) for event in self.events if "count" in event],
            [("192.0.2.0", 1), ("192.0.2.1", 1)],
        )
        self.clock.advance(10)
