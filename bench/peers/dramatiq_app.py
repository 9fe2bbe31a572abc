"""Dramatiq no-op app for the worker benchmark (`bench/worker.py` starts `dramatiq bench.peers.dramatiq_app`).

RabbitMQ broker, no results middleware; the actor's queue comes from `BENCH_QUEUE`.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

broker = RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name=os.environ.get("BENCH_QUEUE", "dramatiq-bench"), max_retries=0)
def noop(index: int = 0) -> None:
    """Do nothing."""
    return None
