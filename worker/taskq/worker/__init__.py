"""`taskq-worker`: consumes a taskq queue, runs registered tasks, records outcomes in the store.

Threads: the connection thread owns the pika connection (`consumer`), executor threads run tasks
(`executor`), the committer groups store writes and acks (`committer`), plus heartbeat and health.
"""
