"""Adapters between the operator and the outside world: RabbitMQ, MongoDB, the Kubernetes API."""
