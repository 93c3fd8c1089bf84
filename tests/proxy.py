"""A TCP proxy for the tests that makes a real Redis slow or stalled.

:class:`DelayingProxy` listens on a free loopback port and forwards every connection to
``target``. Client -> server bytes go through at once; each server -> client chunk is
delivered ``delay`` seconds after the proxy received it (replies are late, but
pipelined replies are not delayed one after another). With ``stalled`` set, server ->
client bytes are held back until it is cleared (a Redis that accepts connections and
never answers). :meth:`DelayingProxy.cut` is a network partition: every connection is
closed and new ones are closed at once (the worker sees resets, not timeouts) until
:meth:`DelayingProxy.heal`. Threads are fine here: this runs in the test process, never
in a worker.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from types import TracebackType


class DelayingProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self._stalled = threading.Event()
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def stalled(self) -> bool:
        return self._stalled.is_set()

    @stalled.setter
    def stalled(self, value: bool) -> None:
        if value:
            self._stalled.set()
        else:
            self._stalled.clear()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, delayed: bool) -> None:
        if not delayed:
            self._copy(source, sink)
            return
        queue: list[tuple[float, int, bytes]] = []  # (due, order, chunk)
        ready = threading.Condition()
        order = itertools.count()
        done = threading.Event()

        def deliver() -> None:
            while True:
                with ready:
                    while not queue and not done.is_set():
                        ready.wait(0.05)
                    if not queue and done.is_set():
                        break
                    due, _, chunk = queue[0]
                    wait = due - time.monotonic()
                    if wait > 0 or self._stalled.is_set():
                        ready.wait(min(max(wait, 0.0), 0.02) or 0.02)
                        continue
                    heapq.heappop(queue)
                try:
                    sink.sendall(chunk)
                except OSError:
                    break
            self._shut(sink)

        sender = threading.Thread(target=deliver, daemon=True)
        sender.start()
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            with ready:
                heapq.heappush(queue, (time.monotonic() + self.delay, next(order), chunk))
                ready.notify()
        done.set()
        sender.join(60)

    def _copy(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                chunk = source.recv(65536)
                if not chunk:
                    break
                sink.sendall(chunk)
            except OSError:
                break
        self._shut(sink)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    def drop_connections(self) -> None:
        """Close every proxied connection (clients see the server go away)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it; close alone may not
            with contextlib.suppress(OSError):
                sock.close()

    def cut(self) -> None:
        """Partition: close every connection and refuse new ones until :meth:`heal`."""
        self._cut.set()
        self.drop_connections()

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop_connections()

    def __enter__(self) -> DelayingProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
