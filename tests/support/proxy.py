"""A TCP proxy on 127.0.0.1 in front of a test's Redis that can make one process's
connections go silent: what a half-open TCP connection looks like from that process (its
requests vanish, no reply and no reset ever comes), while every other process's traffic
through the same proxy flows on.

``cut(pid)`` silences that process's open connections and every one it opens later (the
proxy finds a connection's owner from its client port with psutil). Bounded: it serves
only while the test runs, and only loopback addresses.
"""

from __future__ import annotations

import socket
import threading

import psutil


class Proxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_pids: set[int] = set()
        self.conns: list[dict] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    # ---------------------------------------------------------------- control
    def cut(self, pid: int) -> int:
        """Silence ``pid``'s connections, now and later; returns how many were open."""
        with self.lock:
            self.cut_pids.add(pid)
            n = 0
            for conn in self.conns:
                if not conn["cut"] and self._owned_by(conn["port"], pid):
                    conn["cut"] = True
                    n += 1
            return n

    def close(self) -> None:
        self.closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            for conn in self.conns:
                for s in (conn["client"], conn["upstream"]):
                    try:
                        s.close()
                    except OSError:
                        pass

    # ---------------------------------------------------------------- plumbing
    @staticmethod
    def _owned_by(port: int, pid: int) -> bool:
        try:
            return any(
                c.laddr and c.laddr.port == port for c in psutil.Process(pid).net_connections(kind="tcp")
            )
        except psutil.Error:
            return False

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, (_, port) = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            conn = {"client": client, "upstream": upstream, "port": port, "cut": False}
            with self.lock:
                conn["cut"] = any(self._owned_by(port, pid) for pid in self.cut_pids)
                self.conns.append(conn)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(conn, src, dst), daemon=True).start()

    def _pump(self, conn: dict, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if conn["cut"]:
                continue  # swallowed: no reply, no reset, the connection stays open
            try:
                dst.sendall(data)
            except OSError:
                return
