"""Reads every event of a saga topic with the official CloudEvents SDK, as a participant in
another language would, and checks each one against choreo's protocol (docs/wire-format.md):

- it parses with the SDK's binding for the broker (the first one that does not fails the run);
- its attributes match docs/schemas/choreo-event.json, and the data of the runtime's own
  events its JSON Schema in docs/schemas/;
- every event of a saga carries the trace id of the saga's start;
- a service's description (`choreo.ServiceDescribed.v1`, in a saga of its own, with no cause)
  is checked like any event but not counted among the sagas' events.

    CHOREO_URL=amqp://... python3 tests/polyglot/read_events.py --expect 16

Prints "ready" once it listens, then one JSON line: the events read, by saga, in order.
Exits non-zero on the first event that breaks a rule, or when fewer than --expect arrive.
With --dump, writes every message as received (headers, content type, body) to stderr.
"""

import argparse
import asyncio
import json
import os
import pathlib
import sys
import urllib.parse

import jsonschema
from cloudevents.core.formats.json import JSONFormat

TOPIC = "orders.saga"
EXCHANGE = "choreo.events"
SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "schemas"
FORMAT = JSONFormat()


def schema(name):
    return json.loads((SCHEMAS / f"{name}.json").read_text())


ATTRIBUTES = jsonschema.Draft202012Validator(schema("choreo-event"))
DATA = {
    name: jsonschema.Draft202012Validator(schema(name))
    for name in ("choreo.SagaAborted.v1", "choreo.SagaCompensated.v1",
                 "choreo.ServiceDescribed.v1", "choreo.RedriveRequested.v1",
                 "choreo.CompensationRetryRequested.v1")
}
# A service's description, in a saga of its own, is no saga's event: checked, not counted.
DESCRIBED = "choreo.ServiceDescribed.v1"


class Checker:
    def __init__(self, dump):
        self.sagas = {}  # saga id -> [(type, source, sagakind, trace id)]
        self.count = 0
        self.described = 0
        self.dump = dump

    def received(self, headers, content_type, body):
        if self.dump:
            print(json.dumps({"headers": headers, "content_type": content_type,
                              "body": body.decode()}), file=sys.stderr)

    def check(self, event):
        attributes = {
            name: value.isoformat().replace("+00:00", "Z") if name == "time" else value
            for name, value in event.get_attributes().items()
        }
        ATTRIBUTES.validate(attributes)
        if event.get_type() in DATA:
            DATA[event.get_type()].validate(event.get_data())
        if event.get_type() == DESCRIBED:
            if "causationid" in attributes:
                raise ValueError(f"{DESCRIBED} from {attributes['source']} has a cause")
            self.described += 1
            return
        kind = attributes["sagakind"]
        # Only a start, and an abort its deadline caused rather than an event, have no cause.
        timed_out = kind == "abort" and event.get_data()["reason"] == "timed_out"
        if kind != "start" and not timed_out and "causationid" not in attributes:
            raise ValueError(f"{event.get_type()} ({kind}) has no causationid")
        trace = attributes.get("traceparent", "").split("-")[1:2]
        events = self.sagas.setdefault(attributes["sagaid"], [])
        if events and trace != events[0][3]:
            raise ValueError(
                f"{event.get_type()} from {attributes['source']} is in trace {trace}, "
                f"not in its saga's, {events[0][3]}"
            )
        events.append((event.get_type(), attributes["source"], kind, trace))
        self.count += 1

    def summary(self):
        return {
            "events": self.count,
            "sagas": {
                saga: [f"{source} {kind} {event_type}" for event_type, source, kind, _ in events]
                for saga, events in self.sagas.items()
            },
        }


async def read_rabbitmq(url, checker, expect, timeout):
    import aio_pika
    from cloudevents.core.bindings import rabbitmq

    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("polyglot-reader", exclusive=True)
    # choreo routes each event by `<topic>.<type>`: every type of the topic, and the bare
    # topic that other publishers may use. The topic's dead letters (`<topic>.dlq`) match
    # too and are skipped.
    await queue.bind(exchange, routing_key=TOPIC + ".#")
    dead_letters = TOPIC + ".dlq"
    print("ready", flush=True)
    async with queue.iterator() as messages:
        async with asyncio.timeout(timeout):
            async for message in messages:
                if message.routing_key == dead_letters:
                    await message.ack()
                    continue
                headers = {key: str(value) for key, value in (message.headers or {}).items()}
                checker.received(headers, message.content_type, message.body)
                checker.check(rabbitmq.from_binary(
                    rabbitmq.RabbitMQMessage(headers, message.content_type, message.body),
                    FORMAT,
                ))
                await message.ack()
                if checker.count >= expect:
                    return


async def read_kafka(url, checker, expect, timeout):
    from confluent_kafka import Consumer
    from cloudevents.core.bindings import kafka

    consumer = Consumer({
        "bootstrap.servers": urllib.parse.urlsplit(url).netloc, "group.id": "polyglot-reader",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "fetch.wait.max.ms": 50,
    })
    consumer.subscribe([TOPIC])
    print("ready", flush=True)
    async with asyncio.timeout(timeout):
        while checker.count < expect:
            message = await asyncio.to_thread(consumer.poll, 0.5)
            if message is None or message.error():
                continue
            checker.received({key: value.decode() for key, value in message.headers() or []},
                             None, message.value())
            checker.check(kafka.from_binary(
                kafka.KafkaMessage(dict(message.headers() or []), message.key(), message.value()),
                FORMAT,
            ))
    consumer.close()


def main():
    arguments = argparse.ArgumentParser()
    arguments.add_argument("--expect", type=int, required=True)
    arguments.add_argument("--timeout", type=float, default=60)
    arguments.add_argument("--dump", action="store_true")
    options = arguments.parse_args()
    url = os.environ["CHOREO_URL"]
    read = read_kafka if url.startswith("kafka://") else read_rabbitmq
    checker = Checker(options.dump)
    try:
        asyncio.run(read(url, checker, options.expect, options.timeout))
    except TimeoutError:
        print(json.dumps(checker.summary()))
        sys.exit(f"only {checker.count} of {options.expect} events arrived")
    except Exception as error:
        print(json.dumps(checker.summary()))
        sys.exit(f"event {checker.count + 1} breaks the protocol: {error!r}")
    print(json.dumps(checker.summary()))


if __name__ == "__main__":
    main()
