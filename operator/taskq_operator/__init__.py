"""taskq's Kubernetes operator: watches TaskQueue objects, owns their worker Deployments, scales on backlog.

`core` is pure (spec parsing, scaling policy, Deployment builder, conditions); `adapters` talk to
RabbitMQ, MongoDB and Kubernetes; `handlers` wires them into kopf; `main` is `taskq-operator`.
"""
