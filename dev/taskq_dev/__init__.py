"""Developer harness for taskq: local services, tool builds, the local control plane.

Used by the tests, the benchmarks, `make demo` and the `taskq-dev` CLI; never by production code.
"""
