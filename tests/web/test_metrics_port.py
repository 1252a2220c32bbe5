"""Prometheus metrics live on their own port, bound to the loopback unless told otherwise.

They name every evaluated flag key and variant, which the API only shows to a credential, so
the API port must not serve them.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from app.infra.broker import free_port
from app.web.metrics_site import MetricsSite
from tests.conftest import SDK_KEY, Worker, flag

TCP_LISTEN = "0A"  # the `st` column of /proc/net/tcp for a listening socket


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (read from /proc/net/tcp{,6})."""
    addresses = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, port_hex = local.partition(":")
            if state == TCP_LISTEN and int(port_hex, 16) == port:
                # The kernel prints each 32-bit word of the address in host (little-endian) order.
                raw = b"".join(
                    bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
                )
                addresses.add(socket.inet_ntop(family, raw))
    return addresses


def evaluate(worker: Worker, key: str) -> None:
    request = urllib.request.Request(
        f"{worker.url}/ofrep/v1/evaluate/flags/{key}",
        data=b'{"context": {"targetingKey": "metrics-port"}}',
        headers={"Authorization": f"Bearer {SDK_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_the_api_port_does_not_serve_metrics(worker: Worker) -> None:
    key = "metrics-secret-flag"
    worker.admin().put("development", key, flag())
    evaluate(worker, key)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(worker.url + "/metrics", timeout=10)
    assert refused.value.code == 404
    assert key not in refused.value.read().decode()


def test_the_metrics_port_serves_the_whole_registry(worker: Worker) -> None:
    key = "metrics-port-flag"
    worker.admin().put("development", key, flag())
    evaluate(worker, key)
    with urllib.request.urlopen(worker.metrics_url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    assert "flagstream_ready 1.0" in text  # a metric of app.infra.metrics
    assert f'flag="{key}"' in text  # the custom collector (app.evaluation.stats)


def test_the_metrics_port_listens_on_the_loopback_only_by_default(worker: Worker) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to see which address a socket is bound to")
    assert listening_addresses(worker.metrics_port) == {"127.0.0.1"}
    assert listening_addresses(worker.port) == {"127.0.0.1"}  # the API, for comparison


def test_the_metrics_host_setting_is_honoured_and_a_taken_port_is_named() -> None:
    """Compose binds 0.0.0.0 so Prometheus reaches the worker from its own container."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to see which address a socket is bound to")

    async def run() -> None:
        registry = CollectorRegistry()
        Counter("probe_total", "A metric only this registry has.", registry=registry).inc()
        site = MetricsSite("0.0.0.0", free_port(), registry)
        await site.start()
        try:
            assert listening_addresses(site.port) == {"0.0.0.0"}
            url = f"http://127.0.0.1:{site.port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            assert b"probe_total 1.0" in text
            taken = MetricsSite("0.0.0.0", site.port, registry)
            with pytest.raises(OSError, match=f"cannot serve metrics on 0.0.0.0:{site.port}"):
                await taken.start()
        finally:
            await site.stop()

    asyncio.run(run())
