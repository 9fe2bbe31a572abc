"""The test services (RabbitMQ, the store) as pods on real nodes reach them.

The services listen on loopback. `for_pods` exposes their ports at the node network's gateway
(`taskq_dev.realnodes.expose`) and rewrites their URLs to that address. RabbitMQ's `guest` may log
in from loopback only, and connections from pods arrive from a node's address, so a dedicated user
(administrator tag, all permissions on the vhost) is created through the management API. The same
URLs work from this host (the operator as a local process), since the gateway address is local.

Called by the `pod_services` fixture (tests/cluster/conftest.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from taskq_dev import realnodes

POD_USER = "taskq-pods"


class PodServiceError(RuntimeError):
    """The broker user could not be created; the message has the management API's answer."""


@dataclass(frozen=True)
class PodServiceUrls:
    """URLs of the test services as seen from pods (and from this host)."""

    amqp_url: str
    management_url: str
    mongodb_uri: str


def _moved(url: str, key: str, user: tuple[str, str] | None = None) -> str:
    """`url` with its host:port replaced by the exposed gateway address (and optionally its credentials)."""
    parts = urlsplit(url)
    if parts.port is None:
        raise PodServiceError(f"{parts.scheme} URL without a port cannot be exposed")
    address = realnodes.expose(parts.port, key)
    if user is not None:
        credentials = f"{quote(user[0], safe='')}:{quote(user[1], safe='')}@"
    else:
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{credentials}{address}", parts.path, parts.query, parts.fragment))


def ensure_broker_user(management_base: str, auth: tuple[str, str], vhost: str, password: str) -> None:
    """Create (or reset) `POD_USER` with `password` and full permissions on `vhost`."""
    with httpx.Client(base_url=management_base, auth=auth, timeout=10.0) as http:
        answers = [
            http.put(f"/api/users/{POD_USER}", json={"password": password, "tags": "administrator"}),
            http.put(f"/api/permissions/{quote(vhost, safe='')}/{POD_USER}",
                     json={"configure": ".*", "write": ".*", "read": ".*"}),
        ]
    for answer in answers:
        if answer.status_code not in (201, 204):
            raise PodServiceError(f"RabbitMQ management API: HTTP {answer.status_code} {answer.text[:300]}")


def for_pods(amqp_url: str, management_url: str, management_base: str, management_auth: tuple[str, str],
             vhost: str, mongodb_uri: str, key: str) -> PodServiceUrls:
    """Expose the services for the cluster `key` and return their pod-side URLs."""
    password = secrets.token_urlsafe(16)
    ensure_broker_user(management_base, management_auth, vhost, password)
    user = (POD_USER, password)
    return PodServiceUrls(
        amqp_url=_moved(amqp_url, key, user),
        management_url=_moved(management_url, key, user),
        mongodb_uri=_moved(mongodb_uri, key),
    )
