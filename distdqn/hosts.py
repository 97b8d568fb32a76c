"""A cluster of separate hosts on one machine: network namespaces on a private bridge, each with its
own loopback, hostname, ``/dev/shm`` and Ray temp dir, a Ray node in each (token authentication on).

For tests, benchmarks and users who want to try a cluster before they rent one (docs/hosts.md).
Linux only, and root (it makes namespaces, links and mounts)::

    python -m distdqn.hosts up 3 --cpus-per-host 2      # h0 (the Ray head), h1, h2
    python -m distdqn.hosts run -- distdqn train cartpole-apex --set apex.num_actors=4
    python -m distdqn.hosts limit h1 10mbit             # or: cut h1 / heal h1 / kill h1
    python -m distdqn.hosts status
    python -m distdqn.hosts down

The Python API (what tests, benchmarks and fault drills build on)::

    from distdqn.hosts import HostCluster
    with HostCluster("t1").up(2, cpus_per_host=3) as cluster:   # down on leaving, also on an error
        cluster.run("h0", ["distdqn", "train", "cartpole-apex"], cwd=REPO, timeout=600)
        ...

    HostCluster(name="local", guard=True)          attaches to a cluster of that name if one is up
      .up(n, cpus_per_host=1, head_cpus=None, ray=True, object_store_mb=512, shm_mb=None, dead_after_s=None,
          timeout_s=120) -> self                   n hosts h0..h{n-1}; Ray head in h0 (head_cpus 0:
                                                   a head that runs no roles); ray_times says how long
      .down()                                      everything removed (also by __exit__, by the guard)
      .hosts -> [Host(index, name, address, netns, mount_ns, uts_ns)]   .address -> "10.213.7.1:6379"
      .host(h) -> Host                             h: a Host, its index or its name ("h1")
      .env(base=None) -> dict                      RAY_ADDRESS, RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH
      .run(h, argv, cwd=None, env=None, timeout=None, capture_output=True, text=True, **popen)
          -> CompletedProcess                      to its end; on timeout its session killed, raises
      .popen(h, argv, cwd=None, env=None, **popen) -> Popen      in a session of its own
      .command(h, argv, cwd=None) -> [nsenter ..., *argv]        to start it yourself
      .pids(h) -> [pid]                            every process of the host (machine pids)
      .limit(h, "10mbit" | bits/s | None)          tc tbf both ways on h's link; None lifts it
      .cut(h) / .heal(h)                           h's bridge port down / up (a partition)
      .kill_host(h) -> [pid]                       SIGKILL every process of h at once
      .rejoin(h, timeout_s=120)                    a fresh Ray node in h (not h0), joined and alive
      .wait_for_nodes(count, timeout_s=120, host=None) -> [address]   once >= count alive (host's among)
      .alive_nodes() -> [address]                  the nodes the head counts alive now
      .connect(src, address, port=9, timeout_s=2.0) -> "connected" | "refused" | "timeout" | "unreachable"
      .throughput(src, dst, seconds=2.0) -> bits/s        one TCP stream
      .round_trip(src, dst, count=2000) -> seconds        median, 64-byte messages
      .status() -> dict                            per host: address, link up / cut, limit, processes
    leftovers(name) -> [str]      what is left of a cluster (empty after down)
    sweep(name), sweep_stale()    remove a cluster / every cluster whose maker died
    support_problem() -> str | None, require_support()    why hosts cannot be made here
    parse_rate("10mbit") -> 10_000_000;  HostsError: a UserError, one line

Every wait has a timeout; a failure of the machine's tools is a HostsError naming the command.
Commands in a host see its interfaces, /dev/shm and /tmp/ray; files elsewhere (a run directory,
the working tree) are the machine's, shared by every host.

What one host is::

     netns distdqn-hosts-NAME-br          (no address, no route: a switch and nothing else)
     +-----------------------------------------------+
     | br0 -- h0 -- h1 -- h2     (bridge ports)      |
     +---------|-----|-----|-------------------------+
               |     |     |   veth pairs: created inside the namespaces, never in the root one
     netns distdqn-hosts-NAME-h0, -h1, -h2: eth0 10.213.7.1, .2, .3/24, lo; no default route
     + a mount namespace: tmpfs on /dev/shm and /tmp/ray, its own /etc/hosts (h0, h1, ... resolve
       to the hosts' addresses, as on a real cluster, so that gloo finds the right interface)
     + a UTS namespace: hostname h0, h1, ...

A command runs in a host through ``nsenter --net --mount --uts`` (``HostCluster.run`` / ``popen``
/ ``command``): it sees that host's interfaces, shared memory and Ray temp dir, and the rest of
the machine's files as they are (the working tree, the run directory). The namespaces live on
after the command that made them (bind-mounted files: ``ip netns`` for the network ones, the
state directory for the others), so a cluster outlives its ``up``.

Cleaning up: everything is named after the cluster (``distdqn-hosts-NAME-*``, state in
``/run/distdqn-hosts/NAME``); ``down`` (and the next ``up`` of the same name) kills every process
in the cluster's namespaces, unmounts its namespace files (their tmpfs go with the last
reference) and deletes its network namespaces (their veth pairs and bridge go with them). A
cluster made through the Python API is also watched by a guard process (``_guard``): if the
process that made it dies, SIGKILL included, the guard takes it down within a second; the next
``up`` of any name also sweeps clusters whose owner is dead. ``leftovers(name)`` lists what
remains (tests assert it is empty).

The only addresses ever used are the hosts' own (10.213.7.0/24 by default, inside the
namespaces): the root namespace has no link into them and they have no route out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from distdqn.errors import UserError

PREFIX = "distdqn-hosts"
"""Every namespace, mount and tmpfs a cluster makes is named ``{PREFIX}-{cluster}-...``."""
STATE_ROOT = Path("/run") / PREFIX
"""Per cluster, ``STATE_ROOT/NAME``: state.json, the auth token, the mount / UTS namespace files."""
SUBNET = "10.213.7"
"""The hosts' /24 (RFC 1918): host i is ``SUBNET.(i+1)``. Every cluster uses it: each one's
bridge lives in a namespace of its own, so two clusters never meet."""
HEAD_PORT = 6379
"""The Ray head's GCS port, inside host 0 (no other Ray on the machine can see it)."""
MAX_HOSTS = 64

ConnectOutcome = Literal["connected", "refused", "timeout", "unreachable"]


class HostsError(UserError):
    """The hosts cannot be made, reached or changed as asked (one line, no traceback)."""


@dataclass(frozen=True)
class Host:
    """One host of a cluster: its network namespace and the files holding its other namespaces."""

    index: int
    name: str          # "h0", "h1", ...: its hostname, and its port's name on the bridge
    address: str       # its eth0 address
    netns: str         # the `ip netns` name
    mount_ns: Path     # its mount namespace (bind-mounted nsfs file)
    uts_ns: Path       # its UTS namespace (hostname)


@dataclass
class RayTimes:
    """Seconds each step of forming the Ray cluster took (``HostCluster.up``)."""

    head_s: float = 0.0      # `ray start --head` in host 0
    workers_s: float = 0.0   # `ray start --address` in the other hosts, all at once
    formed_s: float = 0.0    # until the head counted every node alive
    total_s: float = 0.0     # the whole `up`: namespaces, links, mounts and Ray


# ---------------------------------------------------------------------------------------------
# running things


def _sh(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a command of the machine (ip, tc, unshare, ...); a failure is a HostsError naming it."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise HostsError(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from None
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise HostsError(f"`{' '.join(argv)}` failed: {last[0]}")
    return proc


def require_support() -> None:
    """Raise HostsError unless this is Linux, as root, with iproute2 and util-linux's namespace tools."""
    if sys.platform != "linux":
        raise HostsError(f"hosts need Linux network and mount namespaces; this is {sys.platform}")
    if os.geteuid() != 0:
        raise HostsError("hosts need root (they make network namespaces, links and mounts)")
    missing = [tool for tool in ("ip", "tc", "unshare", "nsenter", "findmnt") if shutil.which(tool) is None]
    if missing:
        raise HostsError(f"hosts need {', '.join(missing)} (iproute2, util-linux)")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise HostsError(f"`ip netns` does not work here: {probe.stderr.strip()}")


def support_problem() -> str | None:
    """Why hosts cannot be made here (None: they can); for tests to skip with a clear reason."""
    try:
        require_support()
    except HostsError as exc:
        return str(exc)
    return None


def _own_env(base: os._Environ | dict[str, str]) -> dict[str, str]:
    """``base`` with this package first on PYTHONPATH: the module's own helpers (the guard, the
    probes) import this distdqn whatever the directory they start in."""
    env = dict(base)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


# ---------------------------------------------------------------------------------------------
# names, state and what is left of a cluster


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{1,16}", name):
        raise HostsError(f"cluster name {name!r}: use 1-16 lowercase letters and digits")
    return name


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _cluster_netns(name: str) -> list[str]:
    return [ns for ns in _netns_names() if ns.startswith(f"{PREFIX}-{name}-")]


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(path) or point.startswith(f"{path}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _ns_inode(path: Path | str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _pids_in(inodes: dict[str, set[int]]) -> list[int]:
    """Processes whose namespace of a kind ("net", "mnt", "uts") has one of the given inodes."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        for kind, wanted in inodes.items():
            try:
                link = os.readlink(f"/proc/{entry.name}/ns/{kind}")
            except OSError:
                continue
            if int(link[link.index("[") + 1:-1]) in wanted:
                found.append(int(entry.name))
                break
    return sorted(found)


def _process_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _alive(owner: dict | None) -> bool:
    return owner is not None and _process_start(owner["pid"]) == owner["start"]


def _owner_of(pid: int) -> dict:
    return {"pid": pid, "start": _process_start(pid)}


def _read_state(name: str) -> dict | None:
    try:
        return json.loads((STATE_ROOT / name / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _new_state_dir(name: str) -> Path:
    """Where a cluster's state is written before it is renamed into place (``HostCluster._make``)."""
    return STATE_ROOT / f".{name}.new"


def cluster_names() -> list[str]:
    """The clusters with anything left on this machine: a state directory or a namespace."""
    names = ({p.name for p in STATE_ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
             if STATE_ROOT.is_dir() else set())
    for ns in _netns_names():
        if ns.startswith(f"{PREFIX}-"):
            names.add(ns[len(PREFIX) + 1:].rsplit("-", 1)[0])
    return sorted(names)


def _namespace_inodes(name: str) -> dict[str, set[int]]:
    inodes: dict[str, set[int]] = {"net": set(), "mnt": set(), "uts": set()}
    for ns in _cluster_netns(name):
        if (ino := _ns_inode(f"/run/netns/{ns}")) is not None:
            inodes["net"].add(ino)
    state_dir = STATE_ROOT / name
    for point in _mounts_under(state_dir):
        kind = {".mnt": "mnt", ".uts": "uts"}.get(Path(point).suffix)
        if kind and (ino := _ns_inode(point)) is not None:
            inodes[kind].add(ino)
    return inodes


def leftovers(name: str) -> list[str]:
    """What is left of cluster ``name`` on this machine, one line each (empty: nothing)."""
    left = [f"network namespace {ns}" for ns in _cluster_netns(name)]
    left += [f"process {pid}" for pid in _pids_in(_namespace_inodes(name))]
    left += [f"mount {point}" for point in _mounts_under(STATE_ROOT / name)]
    left += [f"mount {point}" for point in _mounts_under(Path("/run/netns"))
             if Path(point).name.startswith(f"{PREFIX}-{name}-")]
    if (STATE_ROOT / name).exists():
        left.append(f"state directory {STATE_ROOT / name}")
    state = _read_state(name)
    if state and state.get("guard") and _alive(state["guard"]):
        left.append(f"guard process {state['guard']['pid']}")
    return left


def _kill_all(inodes: dict[str, set[int]], timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every process in those namespaces, until none is left; returns the pids killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while pids := [p for p in _pids_in(inodes) if p != os.getpid()]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(pids)
        if time.monotonic() > deadline:
            raise HostsError(f"processes {pids} would not die")
        time.sleep(0.05)
    return sorted(killed)


def sweep(name: str) -> None:
    """Remove everything of cluster ``name``: its guard, every process in its namespaces, its
    mounts (the tmpfs go with the namespaces), its network namespaces (links and bridge go with
    them) and its state directory. Safe to call on a cluster half made, or already gone."""
    _check_name(name)
    state = _read_state(name)
    guard = (state or {}).get("guard")
    if guard and guard["pid"] != os.getpid() and _alive(guard):
        with contextlib.suppress(ProcessLookupError):
            os.kill(guard["pid"], signal.SIGKILL)
    _kill_all(_namespace_inodes(name))
    state_dir = STATE_ROOT / name
    for point in _mounts_under(state_dir):
        _sh("umount", "-l", point, check=False)
    for ns in _cluster_netns(name):
        _sh("ip", "netns", "delete", ns, check=False)
    shutil.rmtree(state_dir, ignore_errors=True)
    shutil.rmtree(_new_state_dir(name), ignore_errors=True)
    if state and state.get("made_tmp_ray"):
        with contextlib.suppress(OSError):
            Path("/tmp/ray").rmdir()   # only if empty: some other Ray may have used it since
    _release_state_root()


def _hold_state_root() -> None:
    """STATE_ROOT as a private mount of its own (as `ip netns` does for /run/netns): namespace
    files can be bind-mounted there whatever the propagation of the mount holding /run."""
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    if str(STATE_ROOT) not in _mounts_under(STATE_ROOT):
        _sh("mount", "--bind", str(STATE_ROOT), str(STATE_ROOT))
    _sh("mount", "--make-private", str(STATE_ROOT))


def _release_state_root() -> None:
    """Unmount and remove STATE_ROOT once no cluster is left in it."""
    if not STATE_ROOT.is_dir() or any(STATE_ROOT.iterdir()):
        return
    if _mounts_under(STATE_ROOT) == [str(STATE_ROOT)]:
        _sh("umount", str(STATE_ROOT), check=False)
    with contextlib.suppress(OSError):
        STATE_ROOT.rmdir()


def sweep_stale(keep: str | None = None) -> list[str]:
    """Sweep every cluster made by a process that is gone (a killed test, a crashed benchmark)
    and every namespace of ours with no state at all; never a cluster brought up from the
    command line (no owner: it lives until `down`). Returns the names swept."""
    swept = []
    for name in cluster_names():
        if name == keep:
            continue
        state = _read_state(name)
        if state is None or (state.get("owner") is not None and not _alive(state["owner"])):
            sweep(name)
            swept.append(name)
    return swept


# ---------------------------------------------------------------------------------------------
# rates


_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


def parse_rate(rate: str | float) -> int:
    """Bits per second from ``10mbit``, ``1gbit``, ``500kbit`` (tc's decimal units) or a number."""
    if isinstance(rate, int | float):
        bits = int(rate)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", rate.lower())
        if not match or match.group(2) not in ("", *_RATE_UNITS):
            raise HostsError(f"rate {rate!r}: expected a number of bits per second, or e.g. 10mbit, 1gbit")
        bits = int(float(match.group(1)) * _RATE_UNITS.get(match.group(2) or "bit", 1))
    if bits < 8000:
        raise HostsError(f"rate {rate!r}: at least 8kbit")
    return bits


# ---------------------------------------------------------------------------------------------
# the cluster



def health_checks(dead_after_s: float) -> dict[str, int]:
    """The head's health-check settings (Ray's system config) under which a node that stops
    answering is declared dead after about ``dead_after_s``: 3 failed checks, each timing out
    after a quarter of it (a cut link never refuses, it times out), a twelfth apart."""
    if not 2.0 <= dead_after_s <= 600.0:
        raise HostsError(f"hosts: dead_after_s {dead_after_s:g}: expected 2 to 600 seconds")
    ms = dead_after_s * 1000
    return {"health_check_failure_threshold": 3, "health_check_timeout_ms": int(ms / 4),
            "health_check_period_ms": int(ms / 12), "health_check_initial_delay_ms": 1000}


class HostCluster:
    """N hosts on this machine, each its own network, mount and UTS namespace, and a Ray node in
    each; host 0 runs the Ray head. A context manager: ``with HostCluster("t1").up(2) as c: ...``
    takes the cluster down on leaving, also on an error.

    ``guard`` (default on): a process of its own watches the one that made the cluster and takes
    the cluster down if it dies first (SIGKILL included). ``python -m distdqn.hosts up`` makes
    one without a guard: it lives until ``down``."""

    def __init__(self, name: str = "local", guard: bool = True):
        self.name = _check_name(name)
        self.guard = guard
        self.hosts: list[Host] = []
        self.ray = False
        self.ray_times = RayTimes()
        self.state_dir = STATE_ROOT / name
        self.token_path = self.state_dir / "auth_token"
        self._state_extra: dict[str, Any] = {}   # made_tmp_ray, guard (for sweep); node (rejoin)
        if (state := _read_state(name)) is not None:   # a cluster already up: attach to it
            self._load(state)

    # ---- bringing it up and down ----
    def up(self, n: int, cpus_per_host: float = 1, head_cpus: float | None = None, ray: bool = True,
           object_store_mb: int = 512, shm_mb: int | None = None, timeout_s: float = 120.0,
           dead_after_s: float | None = None) -> HostCluster:
        """Make ``n`` hosts (leftovers of this name, and of dead owners, swept first) and, with
        ``ray``, a Ray cluster on them: the head in host 0 with ``head_cpus`` CPUs (default
        ``cpus_per_host``; 0: a head that runs no roles), a node with ``cpus_per_host`` in each
        other host. ``object_store_mb`` per node; ``shm_mb`` sizes each host's /dev/shm (default:
        the kernel's, half of memory; a tmpfs takes memory only as it fills). ``dead_after_s``: how
        long the head's health checks take to declare a node that stopped answering dead (default
        Ray's: about 15 s for a killed host, 65 s for a cut one; ``health_checks``)."""
        require_support()
        if not 1 <= n <= MAX_HOSTS:
            raise HostsError(f"hosts: {n}: expected 1 to {MAX_HOSTS}")
        if cpus_per_host < 0 or (head_cpus is not None and head_cpus < 0):
            raise HostsError("hosts: CPUs per host cannot be negative")
        state = _read_state(self.name)
        if state is not None and _alive(state.get("owner")) and state["owner"]["pid"] != os.getpid():
            raise HostsError(f"cluster {self.name} is up, owned by process {state['owner']['pid']}: "
                             f"`python -m distdqn.hosts down --name {self.name}` first")
        started = time.monotonic()
        sweep(self.name)
        sweep_stale(keep=self.name)
        try:
            self._make(n, shm_mb)
            if ray:
                self._start_ray(cpus_per_host, cpus_per_host if head_cpus is None else head_cpus,
                                object_store_mb, timeout_s, dead_after_s)
            self.ray_times.total_s = time.monotonic() - started
            self._save()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove everything the cluster made (``sweep``); nothing is left to list after it."""
        sweep(self.name)
        self.hosts, self.ray = [], False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _make(self, n: int, shm_mb: int | None) -> None:
        _hold_state_root()
        made_tmp_ray = not Path("/tmp/ray").exists()
        self.hosts = [Host(i, f"h{i}", f"{SUBNET}.{i + 1}", f"{PREFIX}-{self.name}-h{i}",
                           self.state_dir / f"h{i}.mnt", self.state_dir / f"h{i}.uts") for i in range(n)]
        self._state_extra = {"made_tmp_ray": made_tmp_ray}
        # the state first (a sweep then finds whatever follows, even if this process dies), made
        # under a hidden name and renamed: a sweep of stale clusters never sees it half written
        new = _new_state_dir(self.name)
        new.mkdir(mode=0o700)
        self._save(new)
        new.rename(self.state_dir)
        if self.guard:
            self._start_guard()
        (self.state_dir / "hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n" + "".join(f"{h.address}\t{h.name}\n" for h in self.hosts))
        bridge = self.bridge_netns
        _sh("ip", "netns", "add", bridge)
        _sh("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        for dev in ("lo", "br0"):
            _sh("ip", "-n", bridge, "link", "set", dev, "up")
        for h in self.hosts:
            self._make_host(h, shm_mb)

    def _make_host(self, h: Host, shm_mb: int | None) -> None:
        bridge = self.bridge_netns
        _sh("ip", "netns", "add", h.netns)
        _sh("ip", "link", "add", "name", "eth0", "netns", h.netns, "type", "veth",
            "peer", "name", h.name, "netns", bridge)
        _sh("ip", "-n", bridge, "link", "set", h.name, "master", "br0", "up")
        _sh("ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
        for dev in ("lo", "eth0"):
            _sh("ip", "-n", h.netns, "link", "set", dev, "up")
        for path in (h.mount_ns, h.uts_ns):
            path.touch()
        size = f",size={shm_mb}m" if shm_mb else ""
        tag = f"{PREFIX}-{self.name}-{h.name}"
        # Inside the new mount namespace: its own /dev/shm, /tmp/ray and /etc/hosts, then drop the
        # copies of every namespace file mounted on the machine (ours and anyone's): a copy would
        # keep that namespace alive after its owner deleted it.
        script = (f"set -e; hostname {h.name}; "
                  f"mount -t tmpfs -o mode=1777{size} {tag}-shm /dev/shm; "
                  f"mkdir -p /tmp/ray; mount -t tmpfs -o mode=1777 {tag}-ray /tmp/ray; "
                  f"mount --bind {self.state_dir / 'hosts'} /etc/hosts; "
                  f"findmnt -rn -t nsfs -o TARGET | while read -r p; do umount -l \"$p\" || true; done")
        _sh("unshare", f"--mount={h.mount_ns}", f"--uts={h.uts_ns}", "--propagation", "private",
            "sh", "-c", script)

    def _start_ray(self, cpus_per_host: float, head_cpus: float, object_store_mb: int,
                   timeout_s: float, dead_after_s: float | None = None) -> None:
        self.token_path.write_text(secrets.token_hex(32))   # as `ray get-auth-token --generate` makes one
        self.token_path.chmod(0o600)
        self.ray = True
        self._state_extra["node"] = {"cpus": cpus_per_host, "object_store_mb": object_store_mb}
        head, *others = self.hosts
        t = time.monotonic()
        checks = [] if dead_after_s is None else [f"--system-config={json.dumps(health_checks(dead_after_s))}"]
        self._ray_start(head, [*self._ray_start_argv(head), "--head", f"--port={HEAD_PORT}",
                               f"--num-cpus={head_cpus:g}", "--include-dashboard=false", *checks], timeout_s)
        self.ray_times.head_s = time.monotonic() - t
        t = time.monotonic()
        procs = [self._ray_popen(h, self._node_argv(h)) for h in others]
        for h, proc in zip(others, procs, strict=True):
            self._ray_wait(h, proc, timeout_s)
        self.ray_times.workers_s = time.monotonic() - t
        t = time.monotonic()
        self.wait_for_nodes(len(self.hosts), timeout_s)
        self.ray_times.formed_s = time.monotonic() - t

    def _ray_start_argv(self, host: Host) -> list[str]:
        mb = self._state_extra["node"]["object_store_mb"]
        return [str(Path(sys.executable).with_name("ray")), "start", f"--node-ip-address={host.address}",
                "--disable-usage-stats", f"--object-store-memory={mb * 2**20}"]

    def _node_argv(self, host: Host) -> list[str]:
        """`ray start` for a node (not the head) in ``host``, joining the head."""
        return [*self._ray_start_argv(host), f"--address={self.address}",
                f"--num-cpus={self._state_extra['node']['cpus']:g}"]

    def wait_for_nodes(self, count: int, timeout_s: float = 120.0, host: Host | int | str | None = None) -> list[str]:
        """The addresses of the Ray nodes alive, once at least ``count`` are (and, if given, one
        in ``host``: a node that rejoined); HostsError after ``timeout_s``. Asked of the head by a
        driver in h0 (a second or two: it joins the cluster to ask). A node killed or cut off
        counts as alive until the head's health checks give up on it (docs/hosts.md)."""
        if not self.ray:
            raise HostsError(f"cluster {self.name} runs no Ray")
        node = None if host is None else self.host(host)
        argv = [sys.executable, "-m", "distdqn.runtime.nodes", self.address, str(count), str(timeout_s)]
        nodes = self.run(self.hosts[0], argv + ([node.address] if node else []), env=_own_env(self.env()),
                         timeout=timeout_s + 30)
        if nodes.returncode != 0:
            last = (nodes.stderr.strip().splitlines() or ["no output"])[-1]
            raise HostsError(f"cluster {self.name}: {last}")
        return json.loads(nodes.stdout)

    def alive_nodes(self) -> list[str]:
        """The addresses of the Ray nodes the head counts alive now, sorted."""
        return self.wait_for_nodes(0, timeout_s=30.0)

    def rejoin(self, host: Host | int | str, timeout_s: float = 120.0) -> None:
        """A fresh Ray node in ``host`` (not the head's), joined to the head: after ``kill_host``,
        or after a cut long enough for the head to have declared the node dead (its raylet then
        exits). Whatever still runs in the host is killed first."""
        h = self.host(host)
        if not self.ray or h.index == 0:
            raise HostsError(f"rejoin {h.name}: only a host other than the head's, in a cluster with Ray")
        self.kill_host(h)
        self._ray_start(h, self._node_argv(h), timeout_s)
        self.wait_for_nodes(1, timeout_s, host=h)

    def _ray_popen(self, host: Host, argv: list[str]) -> subprocess.Popen:
        return self.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def _ray_start(self, host: Host, argv: list[str], timeout_s: float) -> None:
        self._ray_wait(host, self._ray_popen(host, argv), timeout_s)

    @staticmethod
    def _ray_wait(host: Host, proc: subprocess.Popen, timeout_s: float) -> None:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise HostsError(f"{host.name}: `ray start` did not finish within {timeout_s:g} s") from None
        if proc.returncode != 0:
            lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
            raise HostsError(f"{host.name}: `ray start` failed: {lines[-1] if lines else 'no output'}")

    def _start_guard(self) -> None:
        guard = subprocess.Popen([sys.executable, "-m", "distdqn.hosts", "_guard", self.name, str(os.getpid())],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 start_new_session=True, cwd="/", env=_own_env(os.environ), text=True)
        ready, _, _ = select.select([guard.stdout], [], [], 30)
        if not ready or guard.stdout.readline().strip() != "watching":
            guard.kill()
            raise HostsError("the guard process did not start")
        guard.stdout.close()
        self._state_extra["guard"] = _owner_of(guard.pid)
        self._save()

    def _save(self, state_dir: Path | None = None) -> None:
        state = {"name": self.name, "owner": _owner_of(os.getpid()) if self.guard else None,
                 "hosts": [dataclasses.asdict(h) | {"mount_ns": str(h.mount_ns), "uts_ns": str(h.uts_ns)}
                           for h in self.hosts],
                 "ray": self.ray, "ray_times": dataclasses.asdict(self.ray_times), **self._state_extra}
        state_dir = state_dir or self.state_dir
        tmp = state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(state_dir / "state.json")

    def _load(self, state: dict) -> None:
        self.hosts = [Host(h["index"], h["name"], h["address"], h["netns"], Path(h["mount_ns"]), Path(h["uts_ns"]))
                      for h in state["hosts"]]
        self.ray = state.get("ray", False)
        self.ray_times = RayTimes(**state.get("ray_times", {}))
        self._state_extra = {k: state[k] for k in ("made_tmp_ray", "guard", "node") if k in state}

    # ---- what it is ----
    @property
    def bridge_netns(self) -> str:
        return f"{PREFIX}-{self.name}-br"

    @property
    def address(self) -> str:
        """The Ray head's address (``--address`` for a driver inside any host)."""
        return f"{self.hosts[0].address}:{HEAD_PORT}"

    def host(self, host: Host | int | str) -> Host:
        """A host by itself, its index or its name (``h1``)."""
        if isinstance(host, Host):
            return host
        if not self.hosts:
            raise HostsError(f"cluster {self.name} is not up")
        for h in self.hosts:
            if host in (h.index, h.name):
                return h
        raise HostsError(f"no host {host!r} in cluster {self.name} (it has {', '.join(h.name for h in self.hosts)})")

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a command in a host: token authentication with the cluster's token,
        ``RAY_ADDRESS`` the head (so `distdqn train` joins it with or without ``--address``)."""
        env = dict(os.environ if base is None else base)
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(key, None)
        if self.ray:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_ADDRESS=self.address)
        return env

    # ---- running commands in a host ----
    def command(self, host: Host | int | str, argv: Sequence[str], cwd: str | Path | None = None) -> list[str]:
        """``argv`` prefixed with what enters ``host`` (its network, mount and UTS namespaces),
        in ``cwd`` (default: this process's)."""
        h = self.host(host)
        return ["nsenter", f"--net=/run/netns/{h.netns}", f"--mount={h.mount_ns}", f"--uts={h.uts_ns}",
                f"--wd={cwd or os.getcwd()}", "--", *argv]

    def popen(self, host: Host | int | str, argv: Sequence[str], cwd: str | Path | None = None,
              env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in ``host`` (in a session of its own), in the environment ``env``
        (default: ``self.env()``); ``kwargs`` go to Popen."""
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(host, argv, cwd), env=self.env() if env is None else env, **kwargs)

    def run(self, host: Host | int | str, argv: Sequence[str], cwd: str | Path | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None, capture_output: bool = True,
            text: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``host`` to its end (output captured as text unless told otherwise);
        on a timeout its session is killed and ``subprocess.TimeoutExpired`` raised."""
        if capture_output:
            kwargs.setdefault("stdout", subprocess.PIPE)
            kwargs.setdefault("stderr", subprocess.PIPE)
        proc = self.popen(host, argv, cwd, env, text=text, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def pids(self, host: Host | int | str) -> list[int]:
        """Every process of ``host`` (in its network or mount namespace)."""
        h = self.host(host)
        inodes = {"net": {_ns_inode(f"/run/netns/{h.netns}")}, "mnt": {_ns_inode(h.mount_ns)}}
        return _pids_in({k: {i for i in v if i is not None} for k, v in inodes.items()})

    # ---- faults ----
    def limit(self, host: Host | int | str, rate: str | int | None) -> None:
        """Limit ``host``'s link to ``rate`` each way (``10mbit``, ``1gbit``, bits/s; None: no
        limit): a token bucket (`tc tbf`) on its eth0 (what it sends) and on its bridge port
        (what it receives). Burst: 4 ms at the rate, at least 16 KiB; queue: 50 ms."""
        h = self.host(host)
        for netns, dev in ((h.netns, "eth0"), (self.bridge_netns, h.name)):
            if rate is None:
                _sh("tc", "-n", netns, "qdisc", "del", "dev", dev, "root", check=False)
                continue
            bits = parse_rate(rate)
            burst = max(bits // 8 // 250, 16 * 1024)
            _sh("tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{bits}bit",
                "burst", str(burst), "latency", "50ms")

    def cut(self, host: Host | int | str) -> None:
        """Partition ``host``: its bridge port down. Packets to and from it are dropped, as by a
        pulled cable: connections opened before stay open (and time out as TCP does), new ones
        time out; its own processes and loopback go on."""
        h = self.host(host)
        _sh("ip", "-n", self.bridge_netns, "link", "set", h.name, "down")

    def heal(self, host: Host | int | str) -> None:
        """Undo ``cut``: the bridge port up again."""
        h = self.host(host)
        _sh("ip", "-n", self.bridge_netns, "link", "set", h.name, "up")

    def kill_host(self, host: Host | int | str) -> list[int]:
        """SIGKILL every process of ``host`` at once (its Ray node, workers and anything run
        there), as when a machine loses power; returns the pids. The host itself stays: its
        namespaces, link and addresses (nothing restarts there unless asked)."""
        h = self.host(host)
        inodes = {"net": {_ns_inode(f"/run/netns/{h.netns}")}, "mnt": {_ns_inode(h.mount_ns)}}
        return _kill_all({k: {i for i in v if i is not None} for k, v in inodes.items()})

    # ---- probes ----
    def connect(self, src: Host | int | str, address: str, port: int = 9,
                timeout_s: float = 2.0) -> ConnectOutcome:
        """How a TCP connect from ``src`` to ``address:port`` ends within ``timeout_s``: connected,
        refused (it reached a host where nothing listens: the path works), timeout (packets
        lost: a cut link) or unreachable (no route: the outside)."""
        proc = self.run(src, [sys.executable, "-m", "distdqn.hosts", "_connect", address, str(port),
                              str(timeout_s)], env=_own_env(self.env()), timeout=timeout_s + 30)
        if proc.returncode != 0:
            raise HostsError(f"connect probe failed: {proc.stderr.strip().splitlines()[-1:]}")
        return proc.stdout.strip()   # type: ignore[return-value]

    def throughput(self, src: Host | int | str, dst: Host | int | str, seconds: float = 2.0,
                   port: int = 5201) -> float:
        """Bits per second one TCP stream carries from ``src`` to ``dst`` for ``seconds`` (the
        same host: over its loopback). Counted by the receiver, first byte to last."""
        s, d = self.host(src), self.host(dst)
        address = "127.0.0.1" if s == d else d.address
        sink = self.popen(d, [sys.executable, "-m", "distdqn.hosts", "_sink", address, str(port)],
                          env=_own_env(self.env()), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if sink.stdout.readline().strip() != "ready":
                raise HostsError(f"throughput probe: the receiver in {d.name} did not start: {sink.stderr.read()}")
            sent = self.run(s, [sys.executable, "-m", "distdqn.hosts", "_send", address, str(port), str(seconds)],
                            env=_own_env(self.env()), timeout=seconds + 60)
            if sent.returncode != 0:
                raise HostsError(f"throughput probe: the sender in {s.name} failed: {sent.stderr.strip()[-300:]}")
            out, _ = sink.communicate(timeout=60)
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.communicate()
        received, elapsed = json.loads(out)
        return 8 * received / elapsed

    def round_trip(self, src: Host | int | str, dst: Host | int | str, count: int = 2000,
                   port: int = 5203) -> float:
        """The median seconds a 64-byte message takes from ``src`` to ``dst`` and back, over one
        TCP connection (no Nagle delay), of ``count`` in a row (the same host: its loopback)."""
        s, d = self.host(src), self.host(dst)
        address = "127.0.0.1" if s == d else d.address
        echo = self.popen(d, [sys.executable, "-m", "distdqn.hosts", "_echo", address, str(port)],
                          env=_own_env(self.env()), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if echo.stdout.readline().strip() != "ready":
                raise HostsError(f"round-trip probe: the echo in {d.name} did not start: {echo.stderr.read()}")
            pinged = self.run(s, [sys.executable, "-m", "distdqn.hosts", "_ping", address, str(port), str(count)],
                              env=_own_env(self.env()), timeout=120)
            if pinged.returncode != 0:
                raise HostsError(f"round-trip probe: the sender in {s.name} failed: {pinged.stderr.strip()[-300:]}")
        finally:
            echo.kill()
            echo.communicate()
        return float(pinged.stdout.strip())

    # ---- status ----
    def status(self) -> dict[str, Any]:
        """Each host's address, link (up / cut), limit (tbf rate or none) and process count; the
        Ray address and how long forming it took; what is left if the cluster is half gone."""
        hosts = []
        for h in self.hosts:
            link = _sh("ip", "-n", self.bridge_netns, "-o", "link", "show", h.name, check=False).stdout
            qdisc = _sh("tc", "-n", h.netns, "qdisc", "show", "dev", "eth0", check=False).stdout
            rate = re.search(r"tbf .*?rate (\S+)", qdisc)
            flags = re.search(r"<([^>]*)>", link)
            state = "gone" if flags is None else "up" if "UP" in flags.group(1).split(",") else "cut"
            hosts.append({"host": h.name, "address": h.address, "link": state,
                          "limit": rate.group(1) if rate else None, "processes": len(self.pids(h))})
        return {"cluster": self.name, "ray_address": self.address if self.ray else None,
                "ray_times": dataclasses.asdict(self.ray_times) if self.ray else None, "hosts": hosts,
                "token": str(self.token_path) if self.ray else None}


# ---------------------------------------------------------------------------------------------
# the probes' two ends and the guard (hidden subcommands, run inside hosts / beside the owner)


def _connect_probe(address: str, port: int, timeout_s: float) -> ConnectOutcome:
    import socket
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return "connected"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "unreachable"


def _accept_one(address: str, port: int):
    """Listen on ``address:port``, say "ready" (the prober waits for it), accept one connection
    within 60 s: the probes' receiving end."""
    import socket
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, port))
        server.listen(1)
        server.settimeout(60)
        print("ready", flush=True)
        conn, _ = server.accept()
        return conn


def _sink(address: str, port: int) -> None:
    with _accept_one(address, port) as conn:
        conn.settimeout(60)
        buf = bytearray(1 << 20)
        received, first, last = 0, None, None
        while n := conn.recv_into(buf):
            last = time.perf_counter()
            first = first or last
            received += n
    print(json.dumps([received, max((last or 0) - (first or 0), 1e-9)]), flush=True)


def _send(address: str, port: int, seconds: float) -> None:
    import socket
    chunk = b"\0" * (1 << 18)
    with socket.create_connection((address, port), timeout=30) as conn:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)   # until the receiver has read everything and closed


def _echo(address: str, port: int) -> None:
    import socket
    with _accept_one(address, port) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(64):
            conn.sendall(data)


def _ping(address: str, port: int, count: int) -> None:
    import socket
    import statistics
    times = []
    with socket.create_connection((address, port), timeout=30) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = b"\0" * 64
        for _ in range(count):
            t = time.perf_counter()
            conn.sendall(message)
            got = 0
            while got < len(message):
                got += len(conn.recv(64))
            times.append(time.perf_counter() - t)
    print(statistics.median(times[count // 10:]))   # the first tenth warms up


def _guard(name: str, owner_pid: int) -> None:
    """Wait for the owner to die (a pidfd: no polling, no mistaking a later process with its
    pid), then take its cluster down, unless it was taken down (or up again) by someone else."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a ^C meant for the owner is the owner's
    try:
        fd = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        fd = None
    print("watching", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    if fd is not None:
        select.select([fd], [], [])
    state = _read_state(name)
    if state and state.get("owner") and state["owner"]["pid"] == owner_pid:
        sweep(name)


# ---------------------------------------------------------------------------------------------
# the command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distdqn.hosts",
                                description="A cluster of separate hosts on this machine (docs/hosts.md).")
    sub = p.add_subparsers(dest="cmd", required=True)
    name = argparse.ArgumentParser(add_help=False)
    name.add_argument("--name", default="local", help="the cluster's name (default: local)")
    up = sub.add_parser("up", parents=[name], help="make N hosts and a Ray cluster on them")
    up.add_argument("n", type=int, help="how many hosts (h0 runs the Ray head)")
    up.add_argument("--cpus-per-host", type=float, default=1, help="Ray CPUs of each host (default 1)")
    up.add_argument("--head-cpus", type=float, default=None,
                    help="Ray CPUs of h0 (default: --cpus-per-host; 0: a head that runs no roles)")
    up.add_argument("--object-store-mb", type=int, default=512, help="each node's object store (default 512)")
    up.add_argument("--no-ray", action="store_true", help="the hosts only, no Ray")
    up.add_argument("--dead-after-s", type=float, default=None,
                    help="how soon the head declares a silent node dead (default Ray's: 15-65 s)")
    run = sub.add_parser("run", parents=[name], help="run a command in a host: run [--host h0] -- CMD ...")
    run.add_argument("--host", default="h0")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    sub.add_parser("status", parents=[name], help="the hosts, their links and processes")
    down = sub.add_parser("down", parents=[name], help="remove everything the cluster made")
    down.add_argument("--all", action="store_true", help="every cluster of distdqn.hosts on this machine")
    limit = sub.add_parser("limit", parents=[name], help="limit a host's link: limit h1 10mbit (or: off)")
    limit.add_argument("host")
    limit.add_argument("rate")
    for verb, what in (("cut", "cut a host off (its link down)"), ("heal", "restore a cut host's link"),
                       ("kill", "SIGKILL every process of a host")):
        sub.add_parser(verb, parents=[name], help=what).add_argument("host")
    probe = sub.add_parser("probe", parents=[name], help="TCP throughput and round trip between two hosts")
    probe.add_argument("src")
    probe.add_argument("dst")
    probe.add_argument("--seconds", type=float, default=2.0)
    return p


def _attached(name: str) -> HostCluster:
    cluster = HostCluster(name, guard=False)
    if not cluster.hosts:
        raise HostsError(f"cluster {name} is not up (`python -m distdqn.hosts up N --name {name}`)")
    return cluster


def _main(argv: list[str]) -> int:
    if argv[:1] == ["_guard"]:
        _guard(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["_connect"]:
        print(_connect_probe(argv[1], int(argv[2]), float(argv[3])))
        return 0
    if argv[:1] == ["_sink"]:
        _sink(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["_send"]:
        _send(argv[1], int(argv[2]), float(argv[3]))
        return 0
    if argv[:1] == ["_echo"]:
        _echo(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["_ping"]:
        _ping(argv[1], int(argv[2]), int(argv[3]))
        return 0
    args = _parser().parse_args(argv)
    if args.cmd == "up":
        cluster = HostCluster(args.name, guard=False).up(
            args.n, args.cpus_per_host, args.head_cpus, ray=not args.no_ray, object_store_mb=args.object_store_mb,
            dead_after_s=args.dead_after_s)
        print(json.dumps(cluster.status(), indent=1))
        if cluster.ray:
            print(f"inside a host: python -m distdqn.hosts run --name {args.name} -- "
                  f"distdqn train cartpole-apex   (RAY_ADDRESS={cluster.address} is set there)")
    elif args.cmd == "run":
        cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not cmd:
            raise HostsError("run: nothing to run (run [--host h0] -- CMD ...)")
        cluster = _attached(args.name)
        full = cluster.command(args.host, cmd)
        os.execvpe(full[0], full, cluster.env())
    elif args.cmd == "status":
        for name in ([args.name] if args.name in cluster_names() else []) or cluster_names():
            state = _read_state(name)
            print(json.dumps(HostCluster(name, guard=False).status() if state else {"cluster": name,
                             "leftovers": leftovers(name)}, indent=1))
        if not cluster_names():
            print("no cluster is up")
    elif args.cmd == "down":
        require_support()
        for name in cluster_names() if args.all else [args.name]:
            sweep(name)
    elif args.cmd == "limit":
        _attached(args.name).limit(args.host, None if args.rate == "off" else args.rate)
    elif args.cmd in ("cut", "heal"):
        getattr(_attached(args.name), args.cmd)(args.host)
    elif args.cmd == "kill":
        print(f"killed {len(_attached(args.name).kill_host(args.host))} processes")
    elif args.cmd == "probe":
        cluster = _attached(args.name)
        bits = cluster.throughput(args.src, args.dst, args.seconds)
        rtt = cluster.round_trip(args.src, args.dst)
        print(f"{args.src} -> {args.dst}: {bits / 1e6:.1f} Mbit/s; 64-byte round trip {rtt * 1e6:.0f} us")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["HEAD_PORT", "PREFIX", "STATE_ROOT", "SUBNET", "ConnectOutcome", "Host", "HostCluster", "HostsError",
           "RayTimes", "cluster_names", "leftovers", "parse_rate", "require_support", "support_problem", "sweep",
           "sweep_stale"]
