"""The RabbitMQ adapter (pika): connections, topology, publishing. pika errors become `taskq.errors`."""
