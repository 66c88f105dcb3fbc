"""A small network of namespaces for the firewall's tests; nothing leaves them.

- `srv`: the host under test. The firewall's nft runs here. It has the outside link `s0`
  (192.0.2.1/24, 2001:db8::1/64, documentation ranges) and a Docker-like bridge `br-<tag>`
  (10.99.0.1/24, the services network's address for the test) with a "container" behind it,
  and forwards between them; a DNAT rule of its own (as Docker's) publishes the container's
  port 22 on the host's port 2222.
- `cli`: the outside world: 192.0.2.2 and 192.0.2.3 (two sources), 2001:db8::2, and a
  "private" address 10.50.0.2 reached through `srv`.
- `ctr`: an app container, 10.99.0.2 on the bridge, routed through `srv`.

`listen(ns, ports)` starts TCP listeners (IPv4 and IPv6) in a namespace; `probe()` says what a
client saw: "open" (connected), "refused" (an RST) or "dropped" (no answer in time).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Net", "network", "probe"]

PUBLISHED = 2222  # srv's port DNATed to the container's 22

_LISTEN = """
import socket, sys, threading
socks = []
for port in map(int, sys.argv[1:]):
    for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(128)
        socks.append(s)

def serve(s):
    while True:
        c, _ = s.accept()
        c.close()

for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

_PROBE = """
import socket, sys
host, port, source, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam)
s.settimeout(wait)
if source != "-":
    s.bind((source, 0))
try:
    s.connect((host, port))
    print("open")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("dropped")
except OSError as e:
    print("error", e)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _in(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Net:
    srv: str
    cli: str
    ctr: str
    bridge: str

    @property
    def nft(self) -> str:
        """HP_FIREWALL_NFT for a service applying inside `srv`."""
        return f"ip,netns,exec,{self.srv},nft"


@contextmanager
def network() -> Iterator[Net]:
    tag = uuid.uuid4().hex[:6]
    net = Net(f"fws{tag}", f"fwc{tag}", f"fwa{tag}", f"br-fw{tag}")
    for ns in (net.srv, net.cli, net.ctr):
        _ip("netns", "add", ns)
    try:
        _setup(net, tag)
        yield net
    finally:
        for ns in (net.srv, net.cli, net.ctr):
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)


def _setup(net: Net, tag: str) -> None:
    s, c, a = net.srv, net.cli, net.ctr
    for ns in (s, c, a):
        _in(ns, "ip", "link", "set", "lo", "up")
    # the outside link
    _ip("link", "add", f"s{tag}", "netns", s, "type", "veth", "peer", f"c{tag}", "netns", c)
    _in(s, "ip", "link", "set", f"s{tag}", "name", "s0")
    _in(c, "ip", "link", "set", f"c{tag}", "name", "c0")
    _in(s, "ip", "addr", "add", "192.0.2.1/24", "dev", "s0")
    _in(s, "ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "s0", "nodad")
    for addr in ("192.0.2.2/24", "192.0.2.3/24", "10.50.0.2/24"):
        _in(c, "ip", "addr", "add", addr, "dev", "c0")
    _in(c, "ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "c0", "nodad")
    _in(s, "ip", "link", "set", "s0", "up")
    _in(c, "ip", "link", "set", "c0", "up")
    _in(c, "ip", "route", "add", "10.99.0.0/24", "via", "192.0.2.1")
    _in(s, "ip", "route", "add", "10.50.0.0/24", "via", "192.0.2.2")
    # the app network: a bridge named as Docker names them, the container behind it
    _in(s, "ip", "link", "add", net.bridge, "type", "bridge")
    _in(s, "ip", "addr", "add", "10.99.0.1/24", "dev", net.bridge)
    _ip("link", "add", f"b{tag}", "netns", s, "type", "veth", "peer", f"e{tag}", "netns", a)
    _in(s, "ip", "link", "set", f"b{tag}", "master", net.bridge)
    _in(a, "ip", "link", "set", f"e{tag}", "name", "eth0")
    _in(a, "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
    for ns, dev in ((s, f"b{tag}"), (s, net.bridge), (a, "eth0")):
        _in(ns, "ip", "link", "set", dev, "up")
    _in(a, "ip", "route", "add", "default", "via", "10.99.0.1")
    _in(s, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    # Docker's part, done by hand: the container's 22 published on the host's 2222
    nat = (
        "table ip fwtestnat {\n chain pre {\n  type nat hook prerouting priority dstnat;\n"
        f"  tcp dport {PUBLISHED} dnat to 10.99.0.2:22\n }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", s, "nft", "-f", "-"], input=nat, text=True, check=True)


@contextmanager
def listen(ns: str, ports: Iterable[int]) -> Iterator[None]:
    with subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _LISTEN, *map(str, ports)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield
        finally:
            proc.kill()
            proc.wait()


def probe(ns: str, host: str, port: int, source: str = "-", wait: float = 0.3) -> str:
    """What a TCP client in `ns` sees connecting to host:port (from `source`): a SYN not
    answered within `wait` s is dropped (veth pairs answer within a millisecond; the kernel
    does, however loaded the machine; a late wake-up of the client still finds the answer)."""
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-c",
            _PROBE,
            host,
            str(port),
            source,
            str(wait),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()
