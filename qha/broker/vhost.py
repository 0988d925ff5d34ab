"""
The virtual host: the exchanges, queues and bindings clients share, and the
operations AMQP methods map onto.

Every operation checks its arguments and raises an L{AMQPError} with the reply
code and text RabbitMQ would give, so that clients written against RabbitMQ see
the errors they expect.
"""

from __future__ import annotations

import base64
import datetime
import os
from typing import Any, Callable, Protocol, Sequence

from .errors import (
    AccessRefused,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from .exchange import Binding, Destination, Exchange, exchangeType
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock

from .message import Message, decodeAddressing
from .paging import Pager
from .policy import parsePolicy
from .queue import Entry, Queue, QueueFull

REPLICATE_ARGUMENT = "qpid.replicate"
REPLICATE_LEVELS = ("none", "configuration", "all")

# Arguments compared when a queue or exchange is declared again: those that
# change behaviour. Others (a client's own annotations) may differ, as in
# RabbitMQ.
_EQUIVALENCE_PREFIXES = ("x-", "qpid.", "alternate-exchange")


class PublishRefused(QueueFull):
    """
    A queue a message was routed to refused it (it is full, with overflow
    C{reject-publish}); the other queues it reached took it.

    @ivar queue: the queue that refused it (the last one, if several did).
    @ivar accepted: the queues that took it.
    """

    def __init__(self, full: QueueFull, accepted: list[Queue]) -> None:
        """
        @param full: the refusal (of the last queue that refused).
        @param accepted: the queues that took the message.
        """
        super().__init__(full.queue)
        self.accepted = accepted


class BrokerObserver(Protocol):
    """
    Sees every change to the broker's state, in order: the replication
    stream and the store are built on this.
    """

    def queueDeclared(self, queue: Queue) -> None: ...

    def queueDeleted(self, queue: Queue) -> None: ...

    def exchangeDeclared(self, exchange: Exchange) -> None: ...

    def exchangeDeleted(self, exchange: Exchange) -> None: ...

    def bound(self, binding: Binding) -> None: ...

    def unbound(self, binding: Binding) -> None: ...

    def enqueued(self, queue: Queue, entry: Entry) -> None: ...

    def acquired(self, queue: Queue, entries: Sequence[Entry]) -> None:
        """
        Consumers took C{entries} of C{queue}, in this order (told at once
        for the entries of one dispatch).
        """

    def released(self, queue: Queue, entry: Entry) -> None: ...

    def dequeued(self, queue: Queue, entries: Sequence[Entry]) -> None:
        """
        C{entries} of C{queue} are gone for good (acknowledged, dropped,
        expired), in this order: told at once for a run of them, such as
        one multiple acknowledgement.
        """

    def purged(self, queue: Queue, count: int) -> None: ...


class Resources:
    """
    Memory accounting, and the high watermark past which publishers are
    blocked. It counts everything a client makes the broker hold: queued
    messages, and (through L{hold} and L{release}) unfinished message
    bodies, uncommitted transactions and replication boxes not yet answered
    by a backup.

    @ivar used: estimated bytes held, in all.
    @ivar held: the part of L{used} held outside the queues.
    @ivar overhead: the estimated bytes each message costs beyond its body.
    @ivar pager: where queues page bodies out to, and the broker-wide
        budget (L{qha.broker.paging.Pager}); L{None}: nothing is paged.
        A paged body no longer counts towards L{used}.
    """

    overhead = 400

    def __init__(self, highWatermark: int = 0, pager: Pager | None = None) -> None:
        self.highWatermark = highWatermark
        self.pager = pager
        self.used = 0
        self.held = 0
        self.blocked = False
        self.listeners: list[Callable[[bool], None]] = []

    def hold(self, size: int) -> None:
        """
        C{size} bytes are held for a client outside the queues.
        """
        self.held += size
        self.used += size
        if not self.blocked and self.highWatermark and self.used > self.highWatermark:
            self._set(True)

    def release(self, size: int, check: bool = True) -> None:
        """
        C{size} bytes given to L{hold} are no longer held.

        @param check: whether to unblock now if use fell to the watermark;
            false when the bytes move to a queue at once (the caller calls
            L{check} after).
        """
        self.held -= size
        self.used -= size
        if check and self.blocked and self.used <= self.highWatermark:
            self._set(False)

    def check(self) -> None:
        """
        Block or unblock as use now stands against the watermark.
        """
        if self.blocked:
            if self.used <= self.highWatermark:
                self._set(False)
        elif self.highWatermark and self.used > self.highWatermark:
            self._set(True)

    def add(self, size: int) -> None:
        """
        A message of C{size} body bytes was enqueued.
        """
        self.used += size + self.overhead
        if not self.blocked and self.highWatermark and self.used > self.highWatermark:
            self._set(True)

    def remove(self, size: int, count: int = 1) -> None:
        """
        C{count} messages of C{size} body bytes in all left the broker.
        """
        self.used -= size + count * self.overhead
        if self.blocked and self.used <= self.highWatermark:
            self._set(False)

    def pagedOut(self, size: int) -> None:
        """
        C{size} body bytes of queued messages moved to disk.
        """
        self.used -= size
        if self.blocked and self.used <= self.highWatermark:
            self._set(False)

    def pagedIn(self, size: int) -> None:
        """
        C{size} body bytes of queued messages were read back into memory.
        """
        self.used += size
        if not self.blocked and self.highWatermark and self.used > self.highWatermark:
            self._set(True)

    def _set(self, blocked: bool) -> None:
        self.blocked = blocked
        for listener in list(self.listeners):
            listener(blocked)


def _describe(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return repr(value) if not isinstance(value, str) else f"'{value}'"


def _significant(arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in arguments.items()
        if key.startswith(_EQUIVALENCE_PREFIXES)
    }


def _deathCycle(queueName: str, deaths: list[Any]) -> bool:
    """
    Whether dead-lettering a message whose x-death is C{deaths} (newest
    first) to queue C{queueName} closes a cycle with no rejection in it:
    the message died in that queue before and nothing since was a client's
    rejection, as RabbitMQ's C{rabbit_dead_letter:is_cycle} decides.
    """
    for death in deaths:
        if not isinstance(death, dict) or death.get("reason") == "rejected":
            return False
        if death.get("queue") == queueName:
            return True
    return False


DIRECT_REPLY_PREFIX = "amq.rabbitmq.reply-to."
"""
How every direct reply-to address starts (L{qha.amqp.replyto}): a message
routed by the default exchange with such a key goes to the reply consumer
it names, never to a queue.
"""


class DirectReplyTarget(Protocol):
    """
    Hands messages to direct reply-to consumers (L{qha.amqp.replyto}'s
    C{DirectReplies}), for the model, which knows nothing of channels: a
    message dead-lettered to a reply address goes there, as a publish to it
    does.
    """

    def deliver(self, vhost: "VirtualHost", address: str, message: Message) -> bool:
        """
        Deliver C{message} to the live reply consumer that C{address} names
        in C{vhost}; return whether there is one (C{False}: unroutable).
        """


def serverQueueName() -> str:
    """
    A fresh name for a queue declared without one, as RabbitMQ makes them.

    @return: C{amq.gen-} and 22 random URL-safe characters.
    """
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode("ascii").rstrip("=")


def checkReplicate(arguments: dict[str, Any], kind: str, name: str) -> None:
    """
    Refuse a C{qpid.replicate} argument that is not a valid level.

    @raise PreconditionFailed: naming the valid values.
    """
    if REPLICATE_ARGUMENT not in arguments:
        return
    value = arguments[REPLICATE_ARGUMENT]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value not in REPLICATE_LEVELS:
        raise PreconditionFailed(
            f"invalid value {_describe(value)} for argument '{REPLICATE_ARGUMENT}'"
            f" of {kind} '{name}'; valid values are none, configuration, all"
        )


class VirtualHost:
    """
    One AMQP virtual host.

    @ivar observers: told of every change, in order.
    @ivar changes: how many changes the observers were told of (a cluster
        primary's position in its replication stream).
    @ivar repliesPublished: direct replies published in it that reached
        their reply consumer (L{qha.amqp.replyto}): publishes that enter no
        queue, counted here for its C{message_stats}.
    """

    def __init__(
        self,
        name: str = "/",
        resources: Resources | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param clock: the time source for message TTL and queue expiry; a
            L{Clock} that never moves by default, so a model used without
            one has no timers.
        """
        self.name = name
        self.clock: IReactorTime = clock if clock is not None else Clock()
        self._replica = False
        # The broker's virtual hosts this one is one of (a
        # qha.broker.vhosts.VirtualHosts), once there is one.
        self.registry: Any = None
        self.defaultReplicate = "none"
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.observers: list[BrokerObserver] = []
        # While not None, queues without a policy leave the messages they get
        # for their consumers, and add themselves here: whoever set it
        # dispatches them (a replicating primary, once it has sent the box
        # of a read; see AMQPServer.dataReceived).
        self.undispatched: set[Queue] | None = None
        self.changes = 0
        self.repliesPublished = 0
        self.resources = resources if resources is not None else Resources()
        for exchangeName, typeName in [
            ("", "direct"),
            ("amq.direct", "direct"),
            ("amq.fanout", "fanout"),
            ("amq.topic", "topic"),
            ("amq.headers", "headers"),
            ("amq.match", "headers"),
        ]:
            self.exchanges[exchangeName] = exchangeType(typeName)(
                exchangeName, durable=True
            )
        self.defaultExchange = self.exchanges[""]

    @property
    def replica(self) -> bool:
        """
        Whether this virtual host is a copy of a primary's (a backup's, or
        one being replayed from the store): its queues run no timers or
        policies of their own. The broker's other virtual hosts follow its
        default one.
        """
        registry = self.registry
        if registry is not None and registry.default is not self:
            return bool(registry.default._replica)
        return self._replica

    @replica.setter
    def replica(self, value: bool) -> None:
        self._replica = value

    def _where(self) -> str:
        return f"in vhost '{self.name}'"

    # Exchanges

    def declareExchange(
        self,
        name: str,
        type: str,
        passive: bool = False,
        durable: bool = False,
        autoDelete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> Exchange:
        """
        Declare an exchange, or check an existing one is equivalent.
        """
        arguments = arguments or {}
        if name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        existing = self.exchanges.get(name)
        if passive:
            if existing is None:
                raise NotFound(f"no exchange '{name}' {self._where()}")
            return existing
        cls = exchangeType(type)
        checkReplicate(arguments, "exchange", name)
        if existing is not None:
            self._checkFields(
                "exchange",
                name,
                [
                    ("type", type, existing.type),
                    ("durable", durable, existing.durable),
                    ("auto_delete", autoDelete, existing.autoDelete),
                    ("internal", internal, existing.internal),
                ],
            )
            self._checkArguments("exchange", name, existing.arguments, arguments)
            return existing
        if name.startswith("amq."):
            raise AccessRefused(
                f"exchange name '{name}' contains reserved prefix 'amq.*'"
            )
        exchange = cls(name, durable, autoDelete, internal, arguments)
        self.exchanges[name] = exchange
        self.changes += 1
        for observer in self.observers:
            observer.exchangeDeclared(exchange)
        return exchange

    def _checkFields(self, kind: str, name: str, fields: list[tuple[str, Any, Any]]) -> None:
        """
        Check that a redeclaration of the C{kind} C{name} asks for what it
        has: each of C{fields} is its name, the value received and the
        current one, checked in order.

        @raise PreconditionFailed: naming the first field that differs, as
            RabbitMQ says it.
        """
        for field, received, current in fields:
            if received != current:
                raise PreconditionFailed(
                    f"inequivalent arg '{field}' for {kind} '{name}'"
                    f" {self._where()}: received {_describe(received)} but"
                    f" current is {_describe(current)}"
                )

    def _checkArguments(
        self, kind: str, name: str, current: dict[str, Any], received: dict[str, Any]
    ) -> None:
        current, received = _significant(current), _significant(received)
        for key in sorted(set(current) | set(received)):
            if current.get(key) != received.get(key):
                raise PreconditionFailed(
                    f"inequivalent arg '{key}' for {kind} '{name}' {self._where()}:"
                    f" received {_describe(received.get(key, 'none'))} but current"
                    f" is {_describe(current.get(key, 'none'))}"
                )

    def exchange(self, name: str) -> Exchange:
        """
        The exchange called C{name}.

        @raise NotFound: if there is none.
        """
        try:
            return self.exchanges[name]
        except KeyError:
            raise NotFound(f"no exchange '{name}' {self._where()}") from None

    def deleteExchange(self, name: str, ifUnused: bool = False) -> None:
        """
        Delete an exchange and every binding to and from it. Deleting one
        that does not exist succeeds, as in RabbitMQ.
        """
        if name == "" or name.startswith("amq."):
            raise AccessRefused(
                f"cannot delete exchange '{name or 'amq.default'}': it is built in"
            )
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        # In use means bindings from it (AMQP: "queue bindings"; RabbitMQ
        # counts only bindings whose source it is).
        if ifUnused and exchange.bindings:
            raise PreconditionFailed(f"exchange '{name}' {self._where()} in use")
        for binding in list(exchange.bindings.values()):
            self._removeBinding(binding, autoDelete=False)
        for binding in list(exchange.inbound):
            self._removeBinding(binding)
        del self.exchanges[name]
        exchange.deleted = True
        self.changes += 1
        for observer in self.observers:
            observer.exchangeDeleted(exchange)

    # Queues

    def declareQueue(
        self,
        name: str,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        autoDelete: bool = False,
        arguments: dict[str, Any] | None = None,
        owner: object = None,
        replica: bool = False,
        uuid: str | None = None,
        generated: bool = False,
    ) -> Queue:
        """
        Declare a queue (server-named if C{name} is empty), or check an
        existing one is equivalent and accessible to C{owner}.

        @param generated: C{name} is one the caller made with
            L{serverQueueName} for a client that sent none (so that its
            permission could be checked first).
        @param replica: a backup copying the primary's queue, whose name
            may be one the server made (C{amq.gen-...}).
        @param uuid: the identity of a new queue (a backup's copy takes the
            primary's), set before the observers hear of it (the store
            writes it); a fresh one if L{None}.
        """
        arguments = arguments or {}
        if passive:
            if not name:
                raise NotFound("a passive declare needs a queue name")
            # Every queue.declare renews an x-expires lease, as in RabbitMQ.
            found = self.queue(name, owner)
            found.touch()
            return found
        serverNamed = generated or not name
        if not name:
            name = serverQueueName()
        # As in RabbitMQ (rabbit_channel): an exclusive queue lives only as
        # long as its connection, so it is never durable, whatever the
        # declaration says.
        durable = durable and not exclusive
        existing = self.queues.get(name)
        checkReplicate(arguments, "queue", name)
        if existing is not None:
            self._checkOwner(existing, owner)
            if exclusive != existing.exclusive:
                # RabbitMQ checks the exclusive flag as an access question
                # (check_exclusive_access, strict), before the other fields:
                # 405 with the text of another connection's exclusive queue,
                # which names this case too.
                raise ResourceLocked(self._lockedText(existing))
            self._checkFields(
                "queue",
                name,
                [("durable", durable, existing.durable), ("auto_delete", autoDelete, existing.autoDelete)],
            )
            self._checkArguments("queue", name, existing.arguments, arguments)
            existing.touch()
            return existing
        if name.startswith("amq.") and not serverNamed and not replica:
            raise AccessRefused(f"queue name '{name}' contains reserved prefix 'amq.*'")
        queue = Queue(
            self,
            name,
            durable=durable,
            exclusive=exclusive,
            autoDelete=autoDelete,
            arguments=arguments,
            owner=owner if exclusive else None,
            policy=parsePolicy(arguments, name),
        )
        if uuid is not None:
            queue.uuid = uuid
        self.queues[name] = queue
        self.changes += 1
        for observer in self.observers:
            observer.queueDeclared(queue)
        # Every queue is bound to the default exchange by its name.
        binding = Binding(self.defaultExchange, queue, name, {})
        self.defaultExchange.bind(binding)
        return queue

    def _lockedText(self, queue: Queue) -> str:
        """
        RabbitMQ's text for a queue that this declaration may not have:
        another connection's exclusive queue, or an exclusive flag that
        differs from the queue's.
        """
        return (
            f"cannot obtain exclusive access to locked queue '{queue.name}'"
            f" {self._where()}. It could be originally declared on another"
            " connection or the exclusive property value does not match that"
            " of the original declaration."
        )

    def _checkOwner(self, queue: Queue, owner: object) -> None:
        """
        Refuse C{owner} another connection's exclusive C{queue}.

        @raise ResourceLocked: if C{queue} is exclusive to someone else.
        """
        if queue.exclusive and queue.owner is not owner:
            raise ResourceLocked(self._lockedText(queue))

    def queue(self, name: str, owner: object = None) -> Queue:
        """
        The queue called C{name}, checking C{owner} may use it.

        @raise NotFound: if there is none.
        @raise ResourceLocked: if another connection holds it exclusively.
        """
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' {self._where()}")
        self._checkOwner(queue, owner)
        return queue

    def deleteQueue(
        self,
        name: str,
        ifUnused: bool = False,
        ifEmpty: bool = False,
        owner: object = None,
    ) -> int:
        """
        Delete a queue; return how many ready messages it held. Its consumers
        are cancelled. Deleting one that does not exist succeeds.
        """
        queue = self.queues.get(name)
        if queue is None:
            return 0
        self._checkOwner(queue, owner)
        if ifUnused and queue.consumers:
            raise PreconditionFailed(f"queue '{name}' {self._where()} in use")
        if ifEmpty and queue.messageCount:
            raise PreconditionFailed(f"queue '{name}' {self._where()} is not empty")
        del self.queues[name]
        queue.deleted_()
        for binding in list(queue.bindings):
            self._removeBinding(binding)
        self.defaultExchange.unbind(Binding(self.defaultExchange, queue, name, {}))
        removed = queue.clearReady()
        count = len(removed)
        if count:
            self.resources.remove(sum(entry.message.resident for entry in removed), count)
        for consumer in list(queue.consumers):
            queue.consumers.remove(consumer)
            consumer.target.consumerCancelled(consumer)
        self.changes += 1
        for observer in self.observers:
            observer.queueDeleted(queue)
        # With the paged segments it dropped unread.
        return count + queue.droppedPaged

    def purgeQueue(self, name: str, owner: object = None) -> int:
        """
        Drop the ready messages of a queue; return how many.
        """
        return self.queue(name, owner).purge()

    def connectionClosed(self, owner: object) -> None:
        """
        C{owner}'s connection went away: its exclusive queues go with it.
        """
        for queue in [q for q in self.queues.values() if q.owner is owner]:
            self.deleteQueue(queue.name, owner=owner)

    # Bindings

    def _checkBindable(self, exchange: Exchange) -> None:
        if exchange.name == "":
            raise AccessRefused(
                "operation not permitted on the default exchange"
            )

    def bindQueue(
        self,
        queueName: str,
        exchangeName: str,
        routingKey: str,
        arguments: dict[str, Any] | None = None,
        owner: object = None,
        replica: bool = False,
    ) -> Binding:
        """
        Bind a queue to an exchange.
        """
        queue = self.queue(queueName, owner)
        exchange = self.exchange(exchangeName)
        self._checkBindable(exchange)
        return self._addBinding(Binding(exchange, queue, routingKey, arguments or {}))

    def unbindQueue(
        self,
        queueName: str,
        exchangeName: str,
        routingKey: str,
        arguments: dict[str, Any] | None = None,
        owner: object = None,
        replica: bool = False,
    ) -> None:
        """
        Remove a queue's binding; removing one that does not exist succeeds.
        """
        queue = self.queue(queueName, owner)
        exchange = self.exchange(exchangeName)
        self._checkBindable(exchange)
        binding = exchange.bindings.get(
            Binding(exchange, queue, routingKey, arguments or {}).key
        )
        if binding is not None:
            self._removeBinding(binding)

    def bindExchange(
        self,
        destinationName: str,
        sourceName: str,
        routingKey: str,
        arguments: dict[str, Any] | None = None,
    ) -> Binding:
        """
        Bind an exchange to another (exchange-to-exchange binding).
        """
        destination = self.exchange(destinationName)
        source = self.exchange(sourceName)
        self._checkBindable(source)
        self._checkBindable(destination)
        return self._addBinding(
            Binding(source, destination, routingKey, arguments or {})
        )

    def unbindExchange(
        self,
        destinationName: str,
        sourceName: str,
        routingKey: str,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """
        Remove an exchange-to-exchange binding.
        """
        destination = self.exchange(destinationName)
        source = self.exchange(sourceName)
        self._checkBindable(source)
        self._checkBindable(destination)
        binding = source.bindings.get(
            Binding(source, destination, routingKey, arguments or {}).key
        )
        if binding is not None:
            self._removeBinding(binding)

    def _addBinding(self, binding: Binding) -> Binding:
        if binding.source.bind(binding):
            destination = binding.destination
            if isinstance(destination, Queue):
                destination.bindings.add(binding)
            else:
                destination.inbound.add(binding)
            self.changes += 1
            for observer in self.observers:
                observer.bound(binding)
            return binding
        return binding.source.bindings[binding.key]

    def _removeBinding(self, binding: Binding, autoDelete: bool = True) -> None:
        source = binding.source
        if source.unbind(binding) is None:
            return
        destination = binding.destination
        if isinstance(destination, Queue):
            destination.bindings.discard(binding)
        else:
            destination.inbound.discard(binding)
        self.changes += 1
        for observer in self.observers:
            observer.unbound(binding)
        if autoDelete and source.autoDelete and not source.bindings:
            self.deleteExchange(source.name)

    # Publishing

    def route(self, exchange: Exchange, routingKey: str, message: Message) -> list[Queue]:
        """
        The queues a message published to C{exchange} reaches, each once,
        following exchange-to-exchange bindings.
        """
        if exchange is self.defaultExchange:
            queue = self.queues.get(routingKey)
            return [queue] if queue is not None else []
        destinations = exchange.match(routingKey, message)
        if not exchange.hasExchangeDestinations:
            if destinations or exchange.alternate is None:
                return list(destinations)  # type: ignore[arg-type]
        queues: dict[Queue, None] = {}
        seen = {exchange}
        pending: list[Destination] = list(destinations)
        while pending:
            destination = pending.pop()
            if isinstance(destination, Queue):
                queues[destination] = None
            elif destination not in seen:
                seen.add(destination)
                pending.extend(destination.match(routingKey, message))
        if not queues:
            # Unroutable: follow alternate exchanges (each at most once).
            alternateName = exchange.alternate
            while alternateName is not None:
                alternate = self.exchanges.get(alternateName)
                if alternate is None or alternate in seen:
                    break
                seen.add(alternate)
                if alternate is self.defaultExchange:
                    return self.route(alternate, routingKey, message)
                for destination in alternate.match(routingKey, message):
                    if isinstance(destination, Queue):
                        queues[destination] = None
                    elif destination not in seen:
                        queues.update(
                            (queue, None)
                            for queue in self.route(destination, routingKey, message)
                        )
                if queues:
                    break
                alternateName = alternate.alternate
        return list(queues)

    def deadLetter(self, queue: Queue, messages: list[Message], reason: str) -> None:
        """
        Route C{messages} that left C{queue} for C{reason} (C{rejected},
        C{expired}, C{maxlen}) to its dead-letter exchange, with an
        C{x-death} header as RabbitMQ writes it. Without a dead-letter
        exchange (or if it is gone) they are dropped.
        """
        policy = queue.policy
        if policy.deadLetterExchange is None or not messages:
            return
        exchange = self.exchanges.get(policy.deadLetterExchange)
        if exchange is None:
            return
        now = datetime.datetime.fromtimestamp(
            int(self.clock.seconds()), datetime.timezone.utc
        )
        for message in messages:
            originalExchange, originalKey = decodeAddressing(message.addressing)
            routingKey = (
                policy.deadLetterRoutingKey
                if policy.deadLetterRoutingKey is not None
                else originalKey
            )
            headers = dict(message.headers)
            # A publisher may send any x-death: one that is not an array is
            # replaced, as RabbitMQ does.
            previous = headers.get("x-death")
            deaths = list(previous) if isinstance(previous, list) else []
            for index, death in enumerate(deaths):
                if (
                    isinstance(death, dict)
                    and death.get("queue") == queue.name
                    and death.get("reason") == reason
                ):
                    death = dict(death)
                    count = death.get("count")
                    if isinstance(count, bool) or not isinstance(count, int):
                        count = 1
                    death["count"] = count + 1
                    death["time"] = now
                    deaths.pop(index)
                    deaths.insert(0, death)
                    break
            else:
                death = {
                    "count": 1,
                    "reason": reason,
                    "queue": queue.name,
                    "time": now,
                    "exchange": originalExchange,
                    "routing-keys": [originalKey],
                }
                expiration = message.properties.expiration
                if expiration is not None:
                    death["original-expiration"] = expiration
                deaths.insert(0, death)
            headers["x-death"] = deaths
            if "x-first-death-reason" not in headers:
                headers["x-first-death-reason"] = reason
                headers["x-first-death-queue"] = queue.name
                headers["x-first-death-exchange"] = originalExchange
            deadLettered = message.rebuilt(
                exchange.name, routingKey, headers, dropExpiration=True
            )
            targets = self.route(exchange, routingKey, deadLettered)
            if (
                not targets
                and exchange is self.defaultExchange
                and routingKey.startswith(DIRECT_REPLY_PREFIX)
            ):
                # A reply address: to its consumer, as RabbitMQ's default
                # exchange hands every message routed to one.
                self._directReply(routingKey, deadLettered)
                continue
            for target in targets:
                if reason != "rejected" and _deathCycle(target.name, deaths):
                    # RabbitMQ drops a message that would cycle back to a
                    # queue without a rejection in the loop.
                    continue
                try:
                    target.enqueue(deadLettered)
                except QueueFull:
                    pass

    def _directReply(self, address: str, message: Message) -> bool:
        """
        Hand C{message} to the reply consumer C{address} names, through
        the broker's L{DirectReplyTarget} (none: nobody consumes replies).
        """
        registry = self.registry
        replies = registry.replies if registry is not None else None
        if replies is None:
            return False
        return bool(replies.deliver(self, address, message))

    def publishReply(self, address: str, message: Message) -> bool:
        """
        A publish to the default exchange with a direct reply-to address
        C{address} as its key, routed to no queue (a channel's, or the
        HTTP API's): hand it to the reply consumer, and count it as a
        publish of this virtual host if it got there. Return whether it
        did.
        """
        if not address.startswith(DIRECT_REPLY_PREFIX):
            return False
        if self._directReply(address, message):
            self.repliesPublished += 1
            return True
        return False

    def publishTarget(self, exchangeName: str) -> Exchange:
        """
        The exchange a client may publish to under C{exchangeName}.

        @raise NotFound: if there is none.
        @raise AccessRefused: if it is internal.
        """
        exchange = self.exchanges.get(exchangeName)
        if exchange is None:
            raise NotFound(f"no exchange '{exchangeName}' {self._where()}")
        if exchange.internal:
            raise AccessRefused(
                f"cannot publish to internal exchange '{exchangeName}'"
                f" {self._where()}"
            )
        return exchange

    def publish(self, exchangeName: str, routingKey: str, message: Message) -> list[Queue]:
        """
        L{publishTo} the exchange a client may publish to under
        C{exchangeName} (see L{publishTarget}).
        """
        return self.publishTo(self.publishTarget(exchangeName), routingKey, message)

    def publishTo(self, exchange: Exchange, routingKey: str, message: Message) -> list[Queue]:
        """
        Route C{message} and enqueue it on every queue it reaches that takes
        it: the one path of every publish (an AMQP channel's and the
        tests'). A queue that refuses it (overflow C{reject-publish}) does
        not stop the others.

        @return: the queues that took it (empty: unroutable).
        @raise PublishRefused: if a queue refused it, once the others took
            it; it names the queues that did.
        """
        if exchange is self.defaultExchange:
            # The hot path, without a call to route.
            queue = self.queues.get(routingKey)
            if queue is None:
                return []
            try:
                queue.enqueue(message)
            except QueueFull as full:
                raise PublishRefused(full, []) from None
            return [queue]
        queues = self.route(exchange, routingKey, message)
        refused: list[QueueFull] | None = None
        for queue in queues:
            try:
                queue.enqueue(message)
            except QueueFull as full:
                if refused is None:
                    refused = []
                refused.append(full)
        if refused is not None:
            refusers = {each.queue for each in refused}
            raise PublishRefused(
                refused[-1], [queue for queue in queues if queue not in refusers]
            )
        return queues
