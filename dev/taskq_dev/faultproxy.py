"""A fault proxy on loopback (toxiproxy) and a small client for its HTTP API: cut, delay, blackhole.

`FaultProxy.start()` runs `toxiproxy-server` (built by `taskq_dev.tools.toxiproxy_binaries`) on a
free loopback port; `proxy(name, upstream_port)` puts a listener in front of a server, and the
returned `Proxy` can `cut()` it (disable: every open connection is closed and new ones are refused),
`delay(ms)` it (a latency toxic on both directions), or `blackhole()` it (a timeout toxic with
timeout 0: bytes are dropped, connections stay open, until `clear()`). `restore()` undoes all of that.
`url_through(url, proxy)` rewrites an AMQP or MongoDB URL to go through a proxy.

Used by the chaos run (`taskq_dev.chaos`) and by the `fault_proxy` fixture in tests/chaos/conftest.py.
Every HTTP call is bounded by a timeout; the server is always stopped by `close()`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from taskq_dev import ports, tools
from taskq_dev.processes import BackgroundProcess
from taskq_dev.service_base import ServiceError

API_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 15.0


class FaultProxyError(ServiceError):
    """toxiproxy could not be started or refused a request (the message says which)."""


@dataclass
class Proxy:
    """One toxiproxy listener (`listen_port` on loopback) in front of `upstream_port`."""

    api: httpx.Client
    name: str
    listen_port: int
    upstream_port: int

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.api.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise FaultProxyError(f"toxiproxy {method} {path}: {type(exc).__name__}") from exc
        if response.status_code >= 400 and not (method == "DELETE" and response.status_code == 404):
            raise FaultProxyError(f"toxiproxy {method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response.json() if response.content else None

    def _toxic(self, name: str, type_: str, attributes: dict[str, Any], stream: str) -> str:
        self._call(
            "POST",
            f"/proxies/{self.name}/toxics",
            {"name": name, "type": type_, "stream": stream, "toxicity": 1.0, "attributes": attributes},
        )
        return name

    def cut(self) -> None:
        """Disable the proxy: open connections are closed at once, new ones are refused."""
        self._call("POST", f"/proxies/{self.name}", {"enabled": False})

    def delay(self, latency_ms: int, jitter_ms: int = 0) -> None:
        """Add `latency_ms` (± `jitter_ms`) to every chunk, in both directions."""
        for stream in ("upstream", "downstream"):
            self._toxic(f"latency_{stream}", "latency", {"latency": latency_ms, "jitter": jitter_ms}, stream)

    def blackhole(self) -> None:
        """Drop every byte in both directions while keeping connections open (until `clear`/`restore`)."""
        for stream in ("upstream", "downstream"):
            self._toxic(f"blackhole_{stream}", "timeout", {"timeout": 0}, stream)

    def toxics(self) -> list[str]:
        """Names of the toxics now on this proxy."""
        return [toxic["name"] for toxic in self._call("GET", f"/proxies/{self.name}/toxics") or []]

    def clear(self) -> None:
        """Remove every toxic (delay, blackhole)."""
        for name in self.toxics():
            self._call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def restore(self) -> None:
        """No toxics and enabled again."""
        self.clear()
        self._call("POST", f"/proxies/{self.name}", {"enabled": True})

    def enabled(self) -> bool:
        return bool(self._call("GET", f"/proxies/{self.name}")["enabled"])

    @contextmanager
    def cut_for_a_while(self) -> Any:
        """`with proxy.cut_for_a_while():` cut inside the block, restored after it (even on errors)."""
        self.cut()
        try:
            yield self
        finally:
            self.restore()


class FaultProxy:
    """A `toxiproxy-server` this process started on loopback, and the proxies made through it."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.port = ports.free_port()
        binary = tools.toxiproxy_binaries()["toxiproxy-server"]
        self.process = BackgroundProcess(
            argv=[str(binary), "-host", ports.LOOPBACK, "-port", str(self.port)],
            log_path=base_dir / "toxiproxy.log",
        )
        self.api = httpx.Client(base_url=f"http://{ports.LOOPBACK}:{self.port}", timeout=API_TIMEOUT_S)
        self.proxies: dict[str, Proxy] = {}

    def start(self) -> FaultProxy:
        self.process.start()
        try:
            ports.wait_until(
                self._answers,
                timeout=STARTUP_TIMEOUT_S,
                what=f"toxiproxy on port {self.port}",
                interval=0.05,
                give_up=lambda: None if self.process.alive() else f"it exited: {self.process.log_tail()}",
            )
        except ports.WaitTimeout as exc:
            self.close()
            raise FaultProxyError(str(exc)) from exc
        return self

    def _answers(self) -> bool:
        try:
            return self.api.get("/version").status_code == 200
        except httpx.HTTPError:
            return False

    def proxy(self, name: str, upstream_port: int, listen_port: int | None = None) -> Proxy:
        """A new proxy `name` listening on loopback (a free port unless given) in front of `upstream_port`."""
        port = listen_port or ports.free_port()
        made = Proxy(self.api, name, port, upstream_port)
        made._call(
            "POST",
            "/proxies",
            {
                "name": name,
                "listen": f"{ports.LOOPBACK}:{port}",
                "upstream": f"{ports.LOOPBACK}:{upstream_port}",
                "enabled": True,
            },
        )
        ports.wait_until(lambda: ports.port_accepts(port), timeout=5, what=f"proxy {name} to listen", interval=0.05)
        self.proxies[name] = made
        return made

    def reset(self) -> None:
        """Every proxy enabled again and without toxics (toxiproxy's `/reset`)."""
        try:
            self.api.post("/reset").raise_for_status()
        except httpx.HTTPError as exc:
            raise FaultProxyError(f"toxiproxy reset: {type(exc).__name__}") from exc

    def close(self) -> None:
        self.api.close()
        self.process.terminate(5.0)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


def url_port(url: str) -> int:
    """The port of an `amqp://` or `mongodb://` URL (with the scheme's default when absent)."""
    parts = urlsplit(url)
    if parts.port is not None:
        return parts.port
    return {"amqp": 5672, "amqps": 5671, "mongodb": 27017}[parts.scheme]


def url_through(url: str, proxy: Proxy) -> str:
    """`url` with its host and port replaced by the proxy's listener (credentials, path and query kept)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@" if credentials else ""
    return urlunsplit(parts._replace(netloc=f"{netloc}{ports.LOOPBACK}:{proxy.listen_port}"))
