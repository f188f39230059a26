"""What was sent to a queue, read as a worker reads it: through the broker's consumer."""
from __future__ import annotations

import dramatiq


def taken(broker: dramatiq.Broker, queue_name: str) -> list[dramatiq.MessageProxy]:
    """Every message waiting in ``queue_name`` now, taken off the queue and acknowledged, as a
    worker would take them (StubBroker and RedisBroker alike): ``.actor_name``, ``.args``,
    ``.options``…"""
    consumer = broker.consume(queue_name, prefetch=1, timeout=100)
    messages = []
    try:
        while (message := next(consumer)) is not None:
            consumer.ack(message)
            messages.append(message)
    finally:
        consumer.close()
    return messages
