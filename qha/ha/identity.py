"""
A broker's persistent identity and epoch, kept in C{--data-dir}: the one
fact of the cluster a broker must never forget, written durably before it is
acted on.
"""

from __future__ import annotations

import os
import uuid

from ..datadir import makeDirectory, openPrivate


class PersistentState:
    """
    The broker's identity and epoch, kept in C{--data-dir}.
    """

    def __init__(self, directory: str) -> None:
        """
        Read the identity and epoch from C{directory}, making a new identity
        on first start.

        @raise ValueError: if the epoch file holds no number.
        """
        self.directory = directory
        makeDirectory(directory)
        idPath = os.path.join(directory, "broker-id")
        if os.path.exists(idPath):
            with open(idPath) as f:
                self.brokerId = f.read().strip()
        else:
            self.brokerId = str(uuid.uuid4())
            self._write("broker-id", self.brokerId)
        epochPath = os.path.join(directory, "epoch")
        self.epoch = 0
        if os.path.exists(epochPath):
            with open(epochPath) as f:
                text = f.read().strip()
            try:
                self.epoch = int(text)
            except ValueError:
                raise ValueError(f"{epochPath}: {text!r} is not an epoch number") from None

    def _write(self, name: str, text: str) -> None:
        """
        Replace the file C{name} with C{text}, synced with its directory.
        """
        path = os.path.join(self.directory, name)
        temporary = path + ".tmp"
        with openPrivate(temporary, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def setEpoch(self, epoch: int) -> None:
        """
        Record C{epoch} durably before acting on it.
        """
        self._write("epoch", str(epoch))
        self.epoch = epoch


__all__ = ["PersistentState"]
