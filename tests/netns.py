"""Hosts of their own on one machine: Linux network namespaces joined by veth pairs to a bridge.

Each host gets one address in a private /24 that nothing on the machine uses (checked against
every address and route first) and no default route, so what runs on it can reach the other
hosts and nothing else. The root namespace gets the bridge's address in the same /24, so the
test process can watch the hosts (count rows, describe topics) by their addresses too.

``NetworkLab.remove()`` kills what still runs inside the namespaces it made, then deletes the
namespaces (which deletes their veth ends and so the pairs) and the bridge; it is safe to call
after a partial setup.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

#: Candidate /24s: 10.213.0.0/16 is no common default (Docker, libvirt, VPNs use others).
CANDIDATE_NETWORKS = tuple(ipaddress.ip_network(f"10.213.{n}.0/24") for n in range(10, 250))


class NetnsError(RuntimeError):
    """An ``ip`` command failed while building or removing the lab."""


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the machine has an address in or a route to, in any routing table."""
    found: list[ipaddress.IPv4Network] = []
    for entry in json.loads(ip("-j", "-4", "addr", "show") or "[]"):
        for info in entry.get("addr_info", []):
            found.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst == "default":
            continue  # covers everything; only specific routes can clash
        try:
            found.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
        except ValueError:
            continue
    return found


def free_network(candidates: Iterable[ipaddress.IPv4Network] = CANDIDATE_NETWORKS) -> ipaddress.IPv4Network:
    used = used_networks()
    for network in candidates:
        if not any(network.overlaps(other) for other in used):
            return network
    raise NetnsError("no unused /24 in 10.213.0.0/16 on this machine")


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    veth: str  # the root-namespace end, on the bridge: setting it down cuts the host's link

    def argv(self, *command: str) -> list[str]:
        """``command`` run on this host."""
        return ["ip", "netns", "exec", self.namespace, *command]


@dataclass
class NetworkLab:
    """A bridge in the root namespace and one namespace per host, all named with one random
    prefix so that parallel runs and leftovers of other runs are never touched."""

    network: ipaddress.IPv4Network = field(default_factory=free_network)
    prefix: str = field(default_factory=lambda: "va" + secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge_up: bool = False

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (where the test process watches from)."""
        return str(self.network.network_address + 1)

    def create_bridge(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self.bridge_up = True
        ip("addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        """A namespace with loopback up and one veth end with the next address, linked to the bridge."""
        if not self.bridge_up:
            self.create_bridge()
        host = Host(name, f"{self.prefix}-{name}", str(self.network.network_address + 10 + len(self.hosts)),
                    f"{self.prefix}{name}"[:15])
        ip("netns", "add", host.namespace)
        self.hosts[name] = host
        ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        ip("link", "set", host.veth, "master", self.bridge, "up")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/{self.network.prefixlen}", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def cut(self, name: str) -> None:
        """Take the host's link down, as a pulled cable or a dead host: nothing leaves it, no
        connection is closed cleanly."""
        ip("link", "set", self.hosts[name].veth, "down")

    def pids(self, name: str) -> list[int]:
        """Processes running in the host's namespace now."""
        return [int(p) for p in ip("netns", "pids", self.hosts[name].namespace, check=False).split()]

    def all_pids(self) -> list[int]:
        return [pid for name in self.hosts for pid in self.pids(name)]

    def remove(self) -> list[str]:
        """Kill what runs in our namespaces, delete them and the bridge; return what failed."""
        problems: list[str] = []
        # Every host at once: brokers shutting down one after the other took 15 s.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.all_pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while self.all_pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        for name, host in list(self.hosts.items()):
            try:
                ip("netns", "del", host.namespace)  # takes its veth end, and so the pair, with it
                del self.hosts[name]
            except NetnsError as err:
                problems.append(str(err))
            ip("link", "del", host.veth, check=False)  # already gone with the namespace, normally
        if self.bridge_up:
            try:
                ip("link", "del", self.bridge)
                self.bridge_up = False
            except NetnsError as err:
                problems.append(str(err))
        return problems

    def leftovers(self) -> list[str]:
        """Namespaces and links of this lab that still exist (empty after ``remove``)."""
        names = ip("netns", "list", check=False).split()
        links = [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").splitlines()]
        return sorted(n for n in names + links if n.startswith(self.prefix))


def run_on(host: Host, command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(host.argv(*command), **kwargs)
