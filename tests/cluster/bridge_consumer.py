"""A stand-in worker for the bridge test: consumes the queue TASKQ_QUEUE with prefetch 1 and holds
(never acks) what it gets, so a killed process hands its message back to the broker.

Started by the worker bridge as a pod's command (`python bridge_consumer.py`), with the pod's
environment: TASKQ_AMQP_URL from a Secret, TASKQ_QUEUE from a ConfigMap, POD_NAME and NODE_NAME from
the downward API.
"""

from __future__ import annotations

import os
from typing import Any

import pika


def main() -> None:
    queue = os.environ["TASKQ_QUEUE"]
    pod = os.environ["POD_NAME"]
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["TASKQ_AMQP_URL"]))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    channel.queue_declare(queue, passive=True)
    print(f"consuming {queue} as {pod} on {os.environ['NODE_NAME']}", flush=True)

    def hold(_channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        print(f"holding {body.decode()}", flush=True)

    channel.basic_consume(queue, hold, consumer_tag=pod)
    channel.start_consuming()


if __name__ == "__main__":
    main()
