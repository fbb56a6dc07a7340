"""Inventory, in Python: a participant in choreo's order saga written with nothing but the
official CloudEvents SDK and a stock broker client.

It takes the place of the Rust inventory service of `cargo run --example order_saga`: it
reserves stock for every `payments.CreditReserved.v1` and emits `inventory.StockReserved.v1`,
or rejects the saga when the item is out of stock, and gives the stock back when the saga
aborts. It follows the rules of "Taking part from another language" in docs/wire-format.md,
numbered here as they are there.

    pip install cloudevents==2.2.0 aio-pika confluent-kafka
    CHOREO_URL=amqp://guest:guest@localhost:5672/%2f python3 examples/polyglot/inventory.py
    CHOREO_URL=kafka://localhost:9092 python3 examples/polyglot/inventory.py

Its state (stock, sagas, handled event ids) lives in memory, like a choreo service on the
`memory://` store: a real service keeps it in its database, in the same transaction.
"""

import asyncio
import datetime
import json
import os
import secrets
import sys
import time
import urllib.parse
import uuid

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

SERVICE = "inventory"
TOPIC = "orders.saga"
DEAD_LETTERS = TOPIC + ".dlq"
# On RabbitMQ an event is routed by `<topic>.<type>`; this service's queue takes the types it
# acts on (its step's input, aborts, the saga's terminal event) and the bare topic.
ACTS_ON = ["payments.CreditReserved.v1", "choreo.SagaAborted.v1", "orders.OrderConfirmed.v1"]
EXCHANGE = "choreo.events"
STOCK = {"book": 3, "vinyl": 0, "espresso-machine": 1}
SLOW_SUPPLIER = "espresso-machine"
# How long past the deadline this service waits before it aborts a saga itself: the
# initiator normally does it first (rule 7).
DEADLINE_GRACE = 1.0
FORMAT = JSONFormat()


def log(message):
    print(f"{SERVICE}: {message}", file=sys.stderr, flush=True)


def uuid7():
    """A time-ordered UUID, as choreo's event ids are (Python 3.14 has uuid.uuid7)."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def instant(text):
    """An RFC 3339 instant, nanoseconds and all, as seconds since the epoch."""
    date, _, rest = text.rstrip("Z").partition(".")
    seconds = datetime.datetime.fromisoformat(date).replace(tzinfo=datetime.timezone.utc)
    return seconds.timestamp() + float("0." + (rest or "0"))


class Saga:
    def __init__(self, deadline):
        self.deadline = deadline  # as received: copied to every event this service emits
        self.status = "active"  # active, completed or aborted
        self.steps = []  # (type, data) of each step done here, oldest first
        self.acknowledged = False  # whether its abort was compensated and acknowledged
        self.timer = None


class Inventory:
    """choreo's saga rules for one participant, whatever the broker."""

    def __init__(self, publish):
        self.publish = publish  # async (CloudEvent) -> None, returns once the broker has it
        self.stock = dict(STOCK)
        self.sagas = {}
        self.handled = set()

    def emit(self, cause, event_type, kind, data, caused=True):
        """An event caused by `cause` (or, not `caused`, by a timer after it), carrying its
        saga's attributes (rule 1)."""
        attributes = {
            "id": uuid7(),
            "source": SERVICE,
            "type": event_type,
            "time": datetime.datetime.now(datetime.timezone.utc),
            "datacontenttype": "application/json",
            "sagaid": cause.get_extension("sagaid"),
            "sagadeadline": cause.get_extension("sagadeadline"),
            "sagakind": kind,
        }
        if caused:
            attributes["causationid"] = cause.get_id()
        parent = cause.get_extension("traceparent")
        if parent:
            # The same trace, with a span of this service's own as the parent.
            version, trace_id, _, flags = parent.split("-")
            attributes["traceparent"] = f"{version}-{trace_id}-{secrets.token_hex(8)}-{flags}"
            if cause.get_extension("tracestate"):
                attributes["tracestate"] = cause.get_extension("tracestate")
        return CloudEvent(attributes, data)

    async def handle(self, event):
        # Rule 2: every event is delivered at least once; its id says if it was handled.
        if event.get_id() in self.handled:
            return
        kind, saga_id = event.get_extension("sagakind"), event.get_extension("sagaid")
        if kind == "abort":
            await self.on_abort(saga_id, event)
        elif kind == "complete":
            self.on_complete(saga_id)
        elif event.get_type() == "payments.CreditReserved.v1":
            await self.reserve_stock(saga_id, event)
        # Rule 6: events of other types, and this service's own, are acknowledged and ignored.
        self.handled.add(event.get_id())

    async def reserve_stock(self, saga_id, event):
        saga = self.sagas.setdefault(saga_id, Saga(event.get_extension("sagadeadline")))
        # Rule 3: no step for an aborted saga, nor past its deadline.
        if saga.status != "active" or time.time() >= instant(saga.deadline):
            log(f"saga {saga_id}: {saga.status}, or past its deadline: step skipped")
            return
        sku = event.get_data()["sku"]
        if sku == SLOW_SUPPLIER:
            log(f"saga {saga_id}: asking the supplier about {sku}")
            await asyncio.sleep(3)
        if self.stock.get(sku, 0) == 0:
            # Rule 4: a business failure aborts the saga.
            saga.status = "aborted"
            await self.publish(self.emit(event, "choreo.SagaAborted.v1", "abort", {
                "reason": "rejected", "detail": f"{sku} is out of stock", "service": SERVICE,
            }))
            return
        self.stock[sku] -= 1
        data = {"order_id": event.get_data()["order_id"], "sku": sku}
        saga.steps.append(("inventory.StockReserved.v1", data))
        self.arm_deadline(saga_id, saga, event)
        if time.time() >= instant(saga.deadline):
            # Rule 3: a step that outran the deadline keeps its effect, to be compensated
            # by the abort that is coming, but its event is not published.
            log(f"saga {saga_id}: the deadline passed during the step: its event is withheld")
            return
        await self.publish(self.emit(event, "inventory.StockReserved.v1", "step", data))

    def arm_deadline(self, saga_id, saga, cause):
        """Rule 7: whoever holds work to undo aborts the saga once its deadline passed."""

        async def fire():
            await asyncio.sleep(max(0.0, instant(saga.deadline) - time.time()) + DEADLINE_GRACE)
            if saga.status == "active":
                await self.publish(self.emit(cause, "choreo.SagaAborted.v1", "abort", {
                    "reason": "timed_out", "detail": f"deadline {saga.deadline} passed",
                    "service": SERVICE,
                }, caused=False))

        if saga.timer is None:
            saga.timer = asyncio.get_running_loop().create_task(fire())

    async def on_abort(self, saga_id, abort):
        saga = self.sagas.setdefault(saga_id, Saga(abort.get_extension("sagadeadline")))
        if saga.acknowledged:
            return  # rule 5 holds once per saga: a second abort finds nothing to undo
        saga.status = "aborted"  # rule 3: a step event arriving later is skipped
        if saga.timer:
            saga.timer.cancel()
        undone = []
        # Rule 5: undo this service's steps, newest first, then say so.
        while saga.steps:
            event_type, data = saga.steps.pop()
            self.stock[data["sku"]] += 1
            undone.append(event_type)
        saga.acknowledged = True
        await self.publish(self.emit(abort, "choreo.SagaCompensated.v1", "compensated", {
            "service": SERVICE, "compensated": undone, "failed": [],
        }))
        log(f"saga {saga_id}: aborted ({abort.get_data()['reason']}), undid {undone or 'nothing'}")

    def on_complete(self, saga_id):
        saga = self.sagas.get(saga_id)
        if saga and saga.status == "active":
            saga.status = "completed"
            if saga.timer:
                saga.timer.cancel()


# ----- delivery ------------------------------------------------------------------------------

class Sagas:
    """Handles the events of one saga one at a time, in order, and different sagas at once:
    a slow step of one saga holds no other."""

    def __init__(self):
        self.last = {}  # saga id -> the task handling its latest event

    def handle(self, saga_id, handling):
        previous = self.last.get(saga_id)

        async def in_turn():
            if previous is not None:
                await asyncio.wait([previous])
            await handling

        task = asyncio.get_running_loop().create_task(in_turn())
        self.last[saga_id] = task
        task.add_done_callback(lambda done: self.last.get(saga_id) is done
                               and self.last.pop(saga_id))


def dead_letter(error):
    """The headers choreo puts on a dead letter: why, and where it came from."""
    return {"choreo-dead-letter-reason": f"not a CloudEvent: {error}",
            "choreo-dead-letter-topic": TOPIC}


# ----- RabbitMQ, with aio-pika ---------------------------------------------------------------

async def run_rabbitmq(url):
    import aio_pika
    from cloudevents.core.bindings import rabbitmq

    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=64)
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)

    async def publish(event):
        message = rabbitmq.to_binary(event, FORMAT)
        await exchange.publish(
            aio_pika.Message(
                message.body, headers=message.headers, content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=f"{TOPIC}.{event.get_type()}",
        )

    inventory, sagas = Inventory(publish), Sagas()

    async def handle(event, message):
        await inventory.handle(event)
        await message.ack()  # only once what the handling emitted is published

    # One durable queue for this service, bound to the types it acts on, declared as choreo
    # declares its own.
    queue = await channel.declare_queue(f"{SERVICE}:{TOPIC}", durable=True, arguments={
        "x-dead-letter-exchange": EXCHANGE, "x-dead-letter-routing-key": DEAD_LETTERS,
    })
    for routing_key in [TOPIC] + [f"{TOPIC}.{event_type}" for event_type in ACTS_ON]:
        await queue.bind(exchange, routing_key=routing_key)
    log("is running on RabbitMQ")
    async with queue.iterator() as messages:
        async for message in messages:
            headers = {key: str(value) for key, value in (message.headers or {}).items()}
            try:
                event = rabbitmq.from_binary(
                    rabbitmq.RabbitMQMessage(headers, message.content_type, message.body),
                    FORMAT,
                )
            except Exception as error:  # rule 6: what does not parse is dead-lettered
                await exchange.publish(
                    aio_pika.Message(message.body, headers={**headers, **dead_letter(error)},
                                     content_type=message.content_type),
                    routing_key=DEAD_LETTERS,
                )
                await message.ack()
                continue
            sagas.handle(event.get_extension("sagaid"), handle(event, message))


# ----- Kafka, with confluent-kafka -----------------------------------------------------------

class Offsets:
    """What may be committed: per partition, the offset after the last of the messages
    handled with none before it still in hand."""

    def __init__(self):
        self.in_hand = {}  # partition -> offsets received and not yet handled
        self.handled = {}  # partition -> offsets handled after one still in hand
        self.ready = {}  # partition -> the offset to commit

    def received(self, partition, offset):
        self.in_hand.setdefault(partition, set()).add(offset)

    def done(self, partition, offset):
        self.in_hand[partition].discard(offset)
        self.handled.setdefault(partition, set()).add(offset)
        first_in_hand = min(self.in_hand[partition], default=None)
        committable = [o for o in self.handled[partition]
                       if first_in_hand is None or o < first_in_hand]
        if committable:
            self.ready[partition] = max(committable) + 1
            self.handled[partition] -= set(committable)

    def take(self):
        ready, self.ready = self.ready, {}
        return ready


async def run_kafka(url):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from cloudevents.core.bindings import kafka

    servers = urllib.parse.urlsplit(url).netloc
    producer = Producer({"bootstrap.servers": servers, "acks": "all", "linger.ms": 0})
    consumer = Consumer({
        "bootstrap.servers": servers, "group.id": SERVICE, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
        # A broker that answers a fetch only when this wait is over (as some do) would
        # otherwise hold every event half a second.
        "fetch.wait.max.ms": 50,
    })
    assigned = []
    consumer.subscribe([TOPIC], on_assign=lambda _, partitions: assigned.extend(partitions))
    loop = asyncio.get_running_loop()

    def produce(topic, value, key, headers):
        """Sends a message and returns a future that is done once the broker has it."""
        delivered = loop.create_future()

        def report(error, _message):
            loop.call_soon_threadsafe(
                delivered.set_exception if error else delivered.set_result,
                Exception(str(error)) if error else None,
            )

        producer.produce(topic, value, key, headers=headers, on_delivery=report)
        return delivered

    async def publish(event):
        # The saga id is the key: all events of a saga keep their order on one partition.
        message = kafka.to_binary(event, FORMAT, lambda e: e.get_extension("sagaid"))
        delivered = produce(TOPIC, message.value, message.key, list(message.headers.items()))
        await asyncio.to_thread(producer.flush)
        await delivered

    inventory, sagas, offsets = Inventory(publish), Sagas(), Offsets()

    async def handle(event, partition, offset):
        await inventory.handle(event)
        offsets.done(partition, offset)  # committed once nothing before it is in hand

    running = False
    while True:
        message = await asyncio.to_thread(consumer.poll, 0.1)
        commits = [TopicPartition(TOPIC, partition, offset)
                   for partition, offset in offsets.take().items()]
        if commits:
            consumer.commit(offsets=commits, asynchronous=True)
        if assigned and not running:
            log("is running on Kafka")  # once the group gave it the topic's partitions
            running = True
        if message is None:
            continue
        if message.error():
            log(f"consumer: {message.error()}")
            continue
        headers = {key: value for key, value in message.headers() or []}
        offsets.received(message.partition(), message.offset())
        try:
            event = kafka.from_binary(
                kafka.KafkaMessage(headers, message.key(), message.value()), FORMAT,
            )
        except Exception as error:  # rule 6: what does not parse is dead-lettered
            reasons = [(key, value.encode()) for key, value in dead_letter(error).items()]
            delivered = produce(DEAD_LETTERS, message.value(), message.key(),
                                list(headers.items()) + reasons)
            await asyncio.to_thread(producer.flush)
            await delivered
            offsets.done(message.partition(), message.offset())
            continue
        sagas.handle(event.get_extension("sagaid"),
                     handle(event, message.partition(), message.offset()))


def main():
    url = os.environ.get("CHOREO_URL", "amqp://guest:guest@localhost:5672/%2f")
    if url.startswith(("amqp://", "amqps://")):
        run = run_rabbitmq
    elif url.startswith("kafka://"):
        run = run_kafka
    else:
        sys.exit(f"CHOREO_URL must be an amqp:// or kafka:// URL, not {url.split('://')[0]}://")
    try:
        asyncio.run(run(url))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
