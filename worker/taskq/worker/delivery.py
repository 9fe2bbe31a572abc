"""`Delivery`: one message as delivered on one channel, the single handle every stage passes along.

Created by the connection stage (`taskq.worker.consumer`) for each delivery; the pool gets it back
as the `key` of its events, the committer records its outcome, and the connection stage acks it.
`generation` names the channel: a delivery of a channel that is gone can no longer be acked.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import pika

from taskq.core.limits import AttemptLimits
from taskq.core.message import TaskMessage


@dataclass(eq=False)
class Delivery:
    """A delivery; hashed by identity (two deliveries of one message are two handles)."""

    tag: int
    generation: int
    body: bytes
    properties: pika.BasicProperties
    redelivered: bool
    message: TaskMessage | None = None
    limits: AttemptLimits | None = None
    broker_deliveries: int | None = None  # earlier deliveries counted by the broker (quorum queues)
    checked_at: float | None = None  # monotonic time of the committer's redelivery check (None: never checked)
    epoch: int = 1  # which delivery of its attempt this is (set by the committer's redelivery check): fences its writes
    received_at: float = field(default_factory=time.monotonic)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:16])  # names this delivery in outcome claims

    def __hash__(self) -> int:
        return id(self)
