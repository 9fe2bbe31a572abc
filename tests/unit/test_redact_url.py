"""`redact_url` masks every secret in every URI form pymongo and pika accept, and never raises."""

from __future__ import annotations

import pytest

from taskq.errors import redact_url

SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp://guest:***@127.0.0.1:5672/%2F"),
        ("amqp://127.0.0.1:5672/", "amqp://127.0.0.1:5672/"),
        ("mongodb://u:p@h1:27017,h2:27017/?replicaSet=rs0", "mongodb://u:***@h1:27017,h2:27017/?replicaSet=rs0"),
        ("mongodb://h1,h2,h3/db?replicaSet=rs0&w=majority", "mongodb://h1,h2,h3/db?replicaSet=rs0&w=majority"),
        ("mongodb://u:p@[::1]:27017/", "mongodb://u:***@[::1]:27017/"),
        ("mongodb://user@h/?authMechanism=MONGODB-X509", "mongodb://user@h/?authMechanism=MONGODB-X509"),
    ],
)
def test_forms_are_redacted_and_kept_readable(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        f"mongodb://admin:{SECRET}@h1:27017,h2:27017,h3:27017/taskq?replicaSet=rs0&authSource=admin",
        f"mongodb+srv://admin:{SECRET}@cluster0.example.net/taskq?retryWrites=true",
        f"mongodb://h/?tls=true&tlsCertificateKeyFilePassword={SECRET}",
        f"mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:{SECRET}",
        f"mongodb://u:{SECRET}@h/?tlsCertificateKeyFilePassword={SECRET}&sslClientCertificateKeyPassword={SECRET}",
        f"amqps://u:{SECRET}@broker.example:5671/vhost?heartbeat=30&ssl_options=%7B%27password%27%3A+%27{SECRET}%27%7D",
        f"amqp://u:{SECRET}@h/?password={SECRET}",
        f"amqp://u:p%40{SECRET}@h/",  # an encoded '@' inside the password
        f"amqp://u:p@{SECRET}@h/",  # an unencoded '@' inside the password
        f"mongodb://u:{SECRET}@h1:notaport,h2/",  # invalid port: still no secret, no exception
        f"mongodb://:{SECRET}@h/",  # empty user name
        f"http://u:{SECRET}@mgmt:15672/api?token={SECRET}#frag",
    ],
)
def test_no_secret_survives_and_nothing_raises(url: str) -> None:
    redacted = redact_url(url)
    assert SECRET not in redacted
    assert "***" in redacted


def test_garbage_never_raises() -> None:
    for value in ["", "not a url", "://", "mongodb://", "\udcff://x:y@z", "a" * 10_000]:
        assert isinstance(redact_url(value), str)
