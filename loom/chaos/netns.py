"""Each node in its own network namespace: the partition network when the machine allows it.

Layout of one run (every name starts with the run's prefix `lc<pid hex>_<seq>`, so runs of
concurrent harnesses never meet and a dead harness's leftovers are recognisable):
- a bridge `<prefix>br` in the host namespace holding `10.201.X.254/24` (X: a /24 no interface
  of this machine uses yet); clients reach the nodes through it (the host side of each veth);
- per node `nid`: a namespace `<prefix>-<nid>` with `lo` and `eth0` = `10.201.X.<i>`, the peer
  end of a veth pair whose host end `<prefix>h<i>` is enslaved to the bridge; the node's
  process runs in it through `ip netns exec` (which execs: the pid is loomd's own);
- on every `eth0`, an egress htb qdisc: class 1:1 (the default: every packet) and class 1:2,
  whose leaf is a pfifo of limit 0, so a packet classified there is dropped silently.

A partition between a and b is two u32 filters (a's egress to b's address, b's to a's) sending
packets to 1:2: both directions drop on the wire, as on a real partition, while both nodes stay
reachable from the host (the clients). Healing deletes the filters. Delay and loss are a netem
qdisc on class 1:1 when the kernel has sch_netem (probed at set-up; `shapes` says what this
network can do, and the partition nemesis picks only those).

Ownership rule: `close()` deletes every veth pair, namespace and the bridge this network
created, is idempotent, ignores what is already gone, and is called
from the cluster's shielded `aclose()`, on failure and Ctrl-C too. A harness killed by SIGKILL
leaves its prefix behind: `clean_stale()` at the start of every run kills the processes left
in the namespaces of every prefix whose pid is no longer alive, then deletes those namespaces,
veths and bridges. (SIGTERM and Ctrl-C of the harness end its runs through their `finally`.)
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CMD_TIMEOUT_S = 10.0
SUBNET_BASE = "10.201"
HOST_OCTET = 254
_STALE = re.compile(r"^lc([0-9a-f]+)_(\d+)")
_seq = itertools.count(1)


class NetnsError(Exception):
    pass


def _run(argv: Sequence[str], *, check: bool = True, stdin: str | None = None) -> str:
    p = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                       timeout=CMD_TIMEOUT_S, check=False)
    if check and p.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {p.stderr.strip() or p.returncode}")
    return p.stdout


def available() -> str | None:
    """None when namespaces can be used here, else why not (for the run summary)."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "no ip/tc (iproute2) on PATH"
    probe = f"lc{os.getpid():x}_0probe"
    try:
        _run(["ip", "netns", "add", probe])
    except (NetnsError, OSError, subprocess.TimeoutExpired) as e:
        return f"ip netns add failed: {e}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Delete the namespaces and links of prefixes whose harness process is dead; their names."""
    gone: list[str] = []
    names = [ln.split()[0] for ln in _run(["ip", "netns", "list"], check=False).splitlines()
             if ln.strip()]
    links = [ln.split(":")[1].strip().split("@")[0] for ln in
             _run(["ip", "-o", "link", "show"], check=False).splitlines() if ln.count(":") >= 2]
    for kind, items in (("netns", names), ("link", links)):
        for name in items:
            m = _STALE.match(name)
            if m is None or _pid_alive(int(m.group(1), 16)):
                continue
            if kind == "netns":  # its processes (loomd orphaned by the harness) first
                for pid in _run(["ip", "netns", "pids", name], check=False).split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                _run(["ip", "netns", "del", name], check=False)
            else:
                _run(["ip", "link", "del", name], check=False)
            gone.append(name)
    return gone


def _free_subnet() -> str:
    used = _run(["ip", "-4", "-o", "addr", "show"], check=False)
    for x in range(256):
        net = f"{SUBNET_BASE}.{(os.getpid() + x) % 256}"
        if f" {net}." not in used:
            return net
    raise NetnsError(f"every {SUBNET_BASE}.X.0/24 is in use")


@dataclass
class NetnsNetwork:
    ids: Sequence[str]
    kind: str = "netns"
    prefix: str = ""
    subnet: str = ""
    shapes: frozenset[str] = frozenset({"cut"})
    hosts: dict[str, str] = field(default_factory=dict)
    cuts: set[tuple[str, str]] = field(default_factory=set)  # directed: src drops to dst
    delay_s: float = 0.0
    loss: float = 0.0
    _created: list[str] = field(default_factory=list)  # namespaces, then the bridge
    _stale: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = self.prefix or f"lc{os.getpid():x}_{next(_seq)}"
        self._stale = clean_stale()
        self.subnet = self.subnet or _free_subnet()
        for i, nid in enumerate(self.ids, start=1):
            self.hosts[nid] = f"{self.subnet}.{i}"

    def ns(self, nid: str) -> str:
        return f"{self.prefix}-{nid}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def host(self, nid: str) -> str:
        return self.hosts[nid]

    def peer_addr(self, src: str, dst: str, port: int) -> str:
        del src  # one address per node: partitions are filters, not addresses
        return f"{self.hosts[dst]}:{port}"

    def wrap(self, nid: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(nid), *argv]

    # -- life cycle -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Bridge, namespaces, veths, addresses, qdiscs (close() undoes a partial set-up)."""
        br = self.bridge
        self._created.append(br)
        _run(["ip", "link", "add", br, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.subnet}.{HOST_OCTET}/24", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        for i, nid in enumerate(self.ids, start=1):
            ns, veth = self.ns(nid), f"{self.prefix}h{i}"
            self._created.insert(0, ns)
            _run(["ip", "netns", "add", ns])
            self._created.insert(0, veth)
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "link", "set", veth, "master", br, "up"])
            _run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join((
                "link set lo up", f"addr add {self.hosts[nid]}/24 dev eth0",
                "link set eth0 up")) + "\n")
            _run(["tc", "-n", ns, "-batch", "-"], stdin="\n".join((
                "qdisc add dev eth0 root handle 1: htb default 1",
                "class add dev eth0 parent 1: classid 1:1 htb rate 10gbit quantum 60000",
                "class add dev eth0 parent 1: classid 1:2 htb rate 10gbit quantum 60000",
                "qdisc add dev eth0 parent 1:2 handle 20: pfifo limit 0")) + "\n")
            if i == 1 and self._tc(nid, "qdisc add dev eth0 parent 1:1 handle 10: netem "
                                        "delay 0ms", check=False):
                self.shapes = frozenset({"cut", "delay", "loss"})
            elif "delay" in self.shapes:
                self._tc(nid, "qdisc add dev eth0 parent 1:1 handle 10: netem delay 0ms")

    def close(self) -> None:
        for name in self._created:  # host veths (each takes its peer along), namespaces, bridge
            if name.startswith(f"{self.prefix}-"):
                _run(["ip", "netns", "del", name], check=False)
            else:
                _run(["ip", "link", "del", name], check=False)
        self._created.clear()

    def leftovers(self) -> list[str]:
        """Namespaces and links of this prefix that still exist (none after close())."""
        names = _run(["ip", "netns", "list"], check=False) + \
            _run(["ip", "-o", "link", "show"], check=False)
        return sorted(set(re.findall(re.escape(self.prefix) + r"[\w-]*", names)))

    # -- faults ---------------------------------------------------------------------------------
    def _tc(self, nid: str, cmd: str, *, check: bool = True) -> bool:
        try:
            _run(["tc", "-n", self.ns(nid), *cmd.split()])
        except NetnsError:
            if check:
                raise
            return False
        return True

    def _pref(self, dst: str) -> int:
        return 100 + list(self.ids).index(dst)

    def cut(self, a: str, b: str) -> None:
        for src, dst in ((a, b), (b, a)):
            if (src, dst) not in self.cuts:
                self._tc(src, f"filter add dev eth0 parent 1: protocol ip pref {self._pref(dst)} "
                              f"u32 match ip dst {self.hosts[dst]}/32 flowid 1:2")
                self.cuts.add((src, dst))

    def set_delay(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._netem()

    def set_loss(self, loss: float) -> None:
        self.loss = loss
        self._netem()

    def _netem(self) -> None:
        if "delay" not in self.shapes:
            raise NetnsError("this kernel has no sch_netem: no delay or loss")
        for nid in self.ids:
            self._tc(nid, f"qdisc change dev eth0 parent 1:1 handle 10: netem "
                          f"delay {round(self.delay_s * 1000)}ms loss {self.loss * 100:.2f}%")

    def heal(self) -> None:
        for src, dst in sorted(self.cuts):
            self._tc(src, f"filter del dev eth0 parent 1: pref {self._pref(dst)}", check=False)
        self.cuts.clear()
        if self.delay_s or self.loss:
            self.delay_s = self.loss = 0.0
            self._netem()

    def describe(self) -> str:
        extra = "" if "delay" in self.shapes else \
            "; delay/loss off (this kernel has no sch_netem)"
        stale = f"; removed stale {', '.join(self._stale)}" if self._stale else ""
        return f"netns ({self.subnet}.0/24, tc drop filters{extra}{stale})"

    def diagnose(self) -> dict[str, Any]:
        return {"network": self.describe(), "cuts": sorted(f"{a}->{b}" for a, b in self.cuts),
                "delay_s": self.delay_s, "loss": self.loss}
