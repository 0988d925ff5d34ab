"""
AMQP errors raised by the broker model, each with its reply code.

A L{ChannelError} closes the channel it happened on; a L{ConnectionError}
closes the whole connection, as the AMQP 0-9-1 specification says.
"""

from __future__ import annotations


class AMQPError(Exception):
    """
    An error with an AMQP reply code and a text a person can act on.

    @ivar replyCode: the AMQP reply code.
    @ivar replyText: the explanation sent to the client.
    """

    replyCode: int = 541
    replyName: str = "INTERNAL_ERROR"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.replyText = f"{self.replyName} - {text}"


class ChannelError(AMQPError):
    """
    A soft error: the channel is closed, the connection carries on.
    """


class ConnectionError(AMQPError):
    """
    A hard error: the whole connection is closed.
    """


class AccessRefused(ChannelError):
    replyCode = 403
    replyName = "ACCESS_REFUSED"


class NotFound(ChannelError):
    replyCode = 404
    replyName = "NOT_FOUND"


class ResourceLocked(ChannelError):
    replyCode = 405
    replyName = "RESOURCE_LOCKED"


class PreconditionFailed(ChannelError):
    replyCode = 406
    replyName = "PRECONDITION_FAILED"


class ConnectionForced(ConnectionError):
    replyCode = 320
    replyName = "CONNECTION_FORCED"


class InvalidPath(ConnectionError):
    replyCode = 402
    replyName = "INVALID_PATH"


class ConnectionAccessRefused(ConnectionError):
    replyCode = 403
    replyName = "ACCESS_REFUSED"


class FrameError(ConnectionError):
    replyCode = 501
    replyName = "FRAME_ERROR"


class SyntaxError(ConnectionError):
    replyCode = 502
    replyName = "SYNTAX_ERROR"


class CommandInvalid(ConnectionError):
    replyCode = 503
    replyName = "COMMAND_INVALID"


class ChannelStateError(ConnectionError):
    """
    504 CHANNEL_ERROR: a method on a channel that is not open, or the like.
    """

    replyCode = 504
    replyName = "CHANNEL_ERROR"


class UnexpectedFrame(ConnectionError):
    replyCode = 505
    replyName = "UNEXPECTED_FRAME"


class ResourceError(ConnectionError):
    replyCode = 506
    replyName = "RESOURCE_ERROR"


class NotAllowed(ConnectionError):
    replyCode = 530
    replyName = "NOT_ALLOWED"


class NotImplemented_(ConnectionError):
    replyCode = 540
    replyName = "NOT_IMPLEMENTED"


class InternalError(ConnectionError):
    replyCode = 541
    replyName = "INTERNAL_ERROR"
