"""`taskq_dev.keda.replaces_of`: the wrapper module that builds KEDA must carry every `replace` of
KEDA's go.mod (block and single-line forms, with or without a version on the left), or the build
resolves other versions than KEDA's own."""

from __future__ import annotations

from taskq_dev.keda import replaces_of

GOMOD = """module github.com/kedacore/keda/v2

go 1.26.0

replace github.com/nexus-rpc/nexus-proto-annotations v0.1.0 => github.com/nexus-rpc/nexus-proto-annotations v0.1.1-0.2026

replace (
\t// pin k8s.io to v0.35.5
\tk8s.io/api => k8s.io/api v0.35.5
\tk8s.io/client-go => k8s.io/client-go v0.35.5 // trailing note
)

require (
\tk8s.io/api v0.36.0
\tgithub.com/rabbitmq/amqp091-go v1.15.0
)
"""


def test_replaces_of_reads_block_and_single_line_forms_and_nothing_else() -> None:
    assert replaces_of(GOMOD) == {
        "github.com/nexus-rpc/nexus-proto-annotations v0.1.0": "github.com/nexus-rpc/nexus-proto-annotations v0.1.1-0.2026",
        "k8s.io/api": "k8s.io/api v0.35.5",
        "k8s.io/client-go": "k8s.io/client-go v0.35.5",
    }


def test_replaces_of_a_gomod_without_replaces_is_empty() -> None:
    assert replaces_of("module x\n\ngo 1.26.0\n\nrequire k8s.io/api v0.36.0\n") == {}
