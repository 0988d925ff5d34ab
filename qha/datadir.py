"""
The broker's data directory (C{--data-dir}): private to the user the broker
runs as, and held by one broker at a time.

The journal in it holds message bodies, so the directory is created C{0700}
and every file the broker writes there C{0600} (L{openPrivate}). Two brokers
on one directory would both append to one journal and corrupt it, so a
broker takes an exclusive lock (L{claim}) before it reads anything there;
a second broker on the same directory stops with one line that names the
directory and the broker holding it.

The cluster secret the brokers of a cluster prove themselves to each other
with (and C{qha-admin} to them) lives in a file, by default
C{DATA-DIR/cluster-secret}: L{readOrCreateSecret} makes it on first start,
as RabbitMQ makes its Erlang cookie.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import Logger

__all__ = [
    "SECRET_NAME",
    "SecretFileError",
    "readOrCreateSecret",
    "readSecret",
    "DIRECTORY_MODE",
    "FILE_MODE",
    "DataDirectoryInUse",
    "DataDirectoryLock",
    "claim",
    "claimOrExit",
    "lock",
    "makeDirectory",
    "openPrivate",
]

DIRECTORY_MODE = 0o700
"""
The mode of a data directory the broker creates.
"""

FILE_MODE = 0o600
"""
The mode of every file the broker writes in its data directory.
"""

LOCK_NAME = "lock"
"""
The file in the data directory that the running broker holds locked, with
its process id in it.
"""

_FLAGS = {
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "r+b": os.O_RDWR,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}

log = Logger()


class DataDirectoryInUse(Exception):
    """
    Another broker (or another lock in this process) holds the data
    directory.

    @ivar directory: the data directory.
    @ivar pid: the process id the holder wrote into the lock file, or
        L{None} if it could not be read.
    """

    def __init__(self, directory: str, pid: int | None) -> None:
        """
        @param directory: the data directory.
        @param pid: the holder's process id, if known.
        """
        self.directory = directory
        self.pid = pid
        super().__init__(str(self))

    def __str__(self) -> str:
        """
        The one line a person reads: which directory, held by whom, and
        what to do.
        """
        holder = f"pid {self.pid}" if self.pid is not None else "pid unknown"
        return (
            f"{self.directory} is in use by another broker ({holder});"
            " each broker needs its own --data-dir"
        )


def makeDirectory(directory: str) -> None:
    """
    Create C{directory} (and its parents) with mode C{0700} if it does not
    exist; an existing one is left as it is, with a warning if its group or
    others may enter or read it.

    @param directory: the data directory.
    """
    try:
        os.makedirs(directory, mode=DIRECTORY_MODE)
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        if mode & 0o077:
            log.warn(
                "the data directory {directory} is open to other users"
                " (mode {mode:04o}); it holds message bodies: chmod 700 {directory}",
                directory=directory,
                mode=mode,
            )


def openPrivate(path: str, mode: str = "wb") -> IO[Any]:
    """
    Open a file of the data directory for writing, created with mode
    C{0600}; an existing file with a looser mode (written by an older qha)
    is made C{0600} too.

    @param path: the file.
    @param mode: C{"w"}, C{"wb"} (create or truncate), C{"ab"} (create or
        append) or C{"r+b"} (an existing file, read and written).
    @return: the open file object.
    """
    descriptor = os.open(path, _FLAGS[mode], FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(descriptor).st_mode) != FILE_MODE:
            os.fchmod(descriptor, FILE_MODE)
        return os.fdopen(descriptor, mode)
    except BaseException:
        os.close(descriptor)
        raise


class DataDirectoryLock(Service):
    """
    The exclusive lock on a data directory: an C{flock} on its C{lock} file,
    which holds this process's id.

    The lock is held until L{release} or the process exits; stopping the
    broker's services does not release it, since the store may still be
    flushing then.

    @ivar directory: the data directory.
    """

    def __init__(self, directory: str, descriptor: int) -> None:
        """
        @param directory: the data directory.
        @param descriptor: the open, locked lock file.
        """
        self.directory = directory
        self._descriptor: int | None = descriptor

    @property
    def held(self) -> bool:
        """
        Whether this lock is still held.
        """
        return self._descriptor is not None

    def release(self) -> None:
        """
        Release the lock (the lock file stays). Safe to call twice.
        """
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)


def _holder(descriptor: int) -> int | None:
    """
    The process id written in a lock file held by someone else.
    """
    try:
        text = os.pread(descriptor, 64, 0).decode("ascii", "replace").strip()
        return int(text)
    except (OSError, ValueError):
        return None


def lock(directory: str) -> DataDirectoryLock:
    """
    Take the exclusive lock on C{directory}, which must exist, and write
    this process's id into its lock file.

    The lock belongs to the open file, so a second L{lock} on the same
    directory fails even in the same process.

    @param directory: the data directory.
    @return: the held lock.
    @raise DataDirectoryInUse: if another holds it.
    """
    path = os.path.join(directory, LOCK_NAME)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DataDirectoryInUse(directory, _holder(descriptor)) from None
        if stat.S_IMODE(os.fstat(descriptor).st_mode) != FILE_MODE:
            os.fchmod(descriptor, FILE_MODE)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        os.close(descriptor)
        raise
    return DataDirectoryLock(directory, descriptor)


def claim(directory: str) -> DataDirectoryLock:
    """
    Create C{directory} if needed (L{makeDirectory}) and lock it (L{lock}).

    @param directory: the data directory.
    @return: the held lock.
    @raise DataDirectoryInUse: if another broker holds it.
    @raise OSError: if it cannot be created or locked.
    """
    makeDirectory(directory)
    return lock(directory)


def claimOrExit(directory: str) -> DataDirectoryLock:
    """
    L{claim} for C{twistd qha}: a directory in use, or one that cannot be
    created, ends the program with status 1 and one line on standard error.

    @param directory: the data directory.
    @return: the held lock, to be kept (as a service of the broker) for as
        long as the process runs.
    @raise SystemExit: if it cannot be claimed.
    """
    try:
        return claim(directory)
    except DataDirectoryInUse as inUse:
        sys.stderr.write(f"qha: {inUse}\n")
    except OSError as error:
        sys.stderr.write(f"qha: cannot use the data directory {directory}: {error}\n")
    raise SystemExit(1)


SECRET_NAME = "cluster-secret"
"""
The cluster secret's file in the data directory, unless
C{--ha-secret-file} names another.
"""

SECRET_BYTES = 32
"""
Random bytes in a new cluster secret (written as hex).
"""

MIN_SECRET = 16
"""
The fewest characters a cluster secret may have.
"""

MAX_SECRET = 4096
"""
The most bytes read from a secret file.
"""


class SecretFileError(Exception):
    """
    The cluster secret's file cannot be read or holds no usable secret;
    the message names the file and says why.
    """


def readSecret(path: str) -> bytes:
    """
    The secret in C{path}: its contents without surrounding white space,
    at least L{MIN_SECRET} characters. A file that others may read is used
    with a warning.

    @raise FileNotFoundError: if there is no such file.
    @raise SecretFileError: if it cannot be read or is too short.
    """
    try:
        with open(path, "rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            secret = file.read(MAX_SECRET + 1).strip()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise SecretFileError(f"cannot read the cluster secret {path}: {error.strerror}") from None
    if len(secret) > MAX_SECRET:
        raise SecretFileError(f"the cluster secret {path} is longer than {MAX_SECRET} bytes")
    if len(secret) < MIN_SECRET:
        raise SecretFileError(
            f"the cluster secret {path} has {len(secret)} characters; it needs at least"
            f" {MIN_SECRET} (delete it to have a new one made)"
        )
    if mode & 0o077:
        log.warn(
            "the cluster secret {path} may be read by other users (mode {mode:04o}):"
            " chmod 600 {path}",
            path=path,
            mode=mode,
        )
    return secret


def readOrCreateSecret(path: str) -> tuple[bytes, bool]:
    """
    The cluster secret in C{path}, made first if the file does not exist:
    L{SECRET_BYTES} random bytes in hex, mode C{0600}.

    The new secret is written to a file of its own and then linked to
    C{path} (C{os.link} fails if C{path} exists), so brokers started at
    once on one shared file agree: the first link wins and every broker
    reads the winner's secret.

    @return: the secret, and whether this call created the file.
    @raise SecretFileError: if it cannot be read or written.
    """
    try:
        return readSecret(path), False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path) or "."
    temporary = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}"
    )
    created = False
    try:
        with openPrivate(temporary, "wb") as file:
            file.write(os.urandom(SECRET_BYTES).hex().encode("ascii") + b"\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
            created = True
        except FileExistsError:
            pass
    except OSError as error:
        raise SecretFileError(f"cannot create the cluster secret {path}: {error.strerror}") from None
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass
    try:
        return readSecret(path), created
    except FileNotFoundError:
        raise SecretFileError(f"the cluster secret {path} went away as it was made") from None
