"""A real ``redis-server`` for tests and benchmarks: started on a free loopback port, no
persistence unless asked (``persist=True``: an append-only file fsynced at every write, so a
killed and restarted server keeps its data, as a production Redis holding jobs would), killed
at the end (``stop()`` then ``start()`` again is a Redis restart).

    with redis_server() as server:      # server.url = "redis://127.0.0.1:PORT/0"
        ...

Needs the ``redis-server`` binary (Debian: ``apt-get install -y redis-server``)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["RedisServer", "redis_available", "redis_server"]

REDIS = shutil.which("redis-server")


def redis_available() -> bool:
    return REDIS is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again on the same port (a restart)."""

    port: int
    workdir: str
    proc: subprocess.Popen[bytes] | None = None
    persist: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS is not None
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
             "--dir", self.workdir, "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # like a crash: no save, no goodbye
            self.proc.wait(timeout=10)
            self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), 1) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@contextlib.contextmanager
def redis_server(*, persist: bool = False) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="imagegate-redis-") as workdir:
        server = RedisServer(_free_port(), workdir, persist=persist)
        server.start()
        try:
            yield server
        finally:
            server.stop()
