"""Network namespaces joined to the root namespace by veth pairs, for partition tests.

Each ``Link`` is a namespace with one veth pair: the host side (root namespace) has
``10.213.N.1/24``, the namespace side ``10.213.N.2/24``. A process started with
``ip netns exec NS ...`` reaches the host only through its link, so ``ip link set
<host side> down`` cuts exactly that process off, without touching anything else.

Traffic stays on addresses this module creates; everything is deleted by ``cleanup()``,
also after a failure. Creating a namespace needs root and iproute2: if that fails, the
caller gets ``NetnsUnavailable`` with the command's error, and the test must fail with it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass


class NetnsUnavailable(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    binary = shutil.which("ip")
    if not binary:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsUnavailable(
            f"`ip {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


@dataclass
class Link:
    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def down(self) -> None:
        ip("link", "set", self.host_if, "down")

    def up(self) -> None:
        ip("link", "set", self.host_if, "up")

    def exec_argv(self, argv: list[str]) -> list[str]:
        return [shutil.which("ip") or "ip", "netns", "exec", self.ns, *argv]


class NetLab:
    """Namespaces + veth pairs with names unique to this process; ``cleanup()`` removes them."""

    def __init__(self, tag: str = "sb"):
        self.tag = f"{tag}{os.getpid() % 100000}"
        self.links: list[Link] = []
        used = ip("-4", "addr", check=False).stdout
        free = [n for n in range(10, 250) if f"10.213.{n}." not in used]
        random.shuffle(free)
        self._subnets = free

    def add(self, name: str) -> Link:
        if not self._subnets:
            raise NetnsUnavailable("no free 10.213.N.0/24 subnet left")
        n = self._subnets.pop()
        ns = f"{self.tag}{name}"
        host_if, ns_if = f"{self.tag}{name}h"[:15], f"{self.tag}{name}n"[:15]
        link = Link(ns, host_if, ns_if, f"10.213.{n}.1", f"10.213.{n}.2")
        self.links.append(link)  # registered first: cleanup() removes whatever got created
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{link.host_ip}/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{link.ns_ip}/24", "dev", ns_if)
        ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return link

    def cleanup(self) -> list[str]:
        """Delete every veth pair and namespace made here; returns what could not be deleted."""
        problems = []
        for link in self.links:
            if ip("link", "show", link.host_if, check=False).returncode == 0:
                proc = ip("link", "del", link.host_if, check=False)  # deletes both ends
                if proc.returncode != 0:
                    problems.append(f"{link.host_if}: {proc.stderr.strip()}")
            if link.ns in ip("netns", "list", check=False).stdout.split():
                proc = ip("netns", "del", link.ns, check=False)
                if proc.returncode != 0:
                    problems.append(f"{link.ns}: {proc.stderr.strip()}")
        self.links.clear()
        return problems
