"""What the one-machine cluster of `distdqn.hosts` costs and offers (docs/hosts.md).

    python -m benchmarks.hosts_links [--hosts 3] [--repeats 3] [--seconds 3] [--faults]

- the harness's own cost: `up` of N hosts without Ray and with Ray (the head, the other nodes
  all at once, until the head counts every node alive), `down`, and the processes Ray runs per
  host (median over repeats);
- one TCP stream's throughput: within a host (its loopback), between two hosts (veth + bridge),
  and between hosts with the link limited by `tc tbf` to 1 Gbit/s, 100 Mbit/s, 10 Mbit/s; with
  the package's own socket probe (``HostCluster.throughput``) and, if installed, iperf3; and the
  median round trip of a 64-byte message on each path (``HostCluster.round_trip``);
- with ``--faults``: how long the Ray head takes to declare a host's node dead when every process
  of the host is killed, and when its link is cut; whether a node cut off and healed comes back,
  and how long ``rejoin`` takes to bring a fresh one.

Run it alone on the machine (`flock -x /work/cpu.lock`): every host shares the same cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import header
from distdqn.hosts import HostCluster, parse_rate

RATES = (None, "1gbit", "100mbit", "10mbit")
NAME = "bench"


def _iperf3(cluster: HostCluster, src: str, dst: str, seconds: float) -> float | None:
    if shutil.which("iperf3") is None:
        return None
    d = cluster.host(dst)
    address = "127.0.0.1" if src == dst else d.address
    server = cluster.popen(dst, ["iperf3", "-s", "-B", address, "-p", "5202"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if cluster.connect(src, address, 5202, 1.0) == "connected":
                break
            time.sleep(0.1)
        out = cluster.run(src, ["iperf3", "-c", address, "-p", "5202", "-t", f"{seconds:g}", "-J"],
                          timeout=seconds + 30).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]
    finally:
        server.kill()
        server.wait()


def _harness(n: int, repeats: int) -> None:
    plain, with_ray, down, procs = [], [], [], {}
    for _ in range(repeats):
        t = time.monotonic()
        cluster = HostCluster(NAME).up(n, ray=False)
        plain.append(time.monotonic() - t)
        cluster.down()
        cluster = HostCluster(NAME).up(n, cpus_per_host=1)
        with_ray.append(cluster.ray_times)
        procs = {h.name: len(cluster.pids(h)) for h in cluster.hosts}
        t = time.monotonic()
        cluster.down()
        down.append(time.monotonic() - t)

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}"
    print(f"\n{n} hosts, median of {repeats} (seconds):\n")
    print("| step | seconds |\n|---|---|")
    print(f"| `up`, namespaces, links and mounts only (`ray=False`) | {med(plain)} |")
    print(f"| `up` with Ray: `ray start --head` in h0 | {med([r.head_s for r in with_ray])} |")
    print(f"| ... `ray start --address` in the {n - 1} others, at once | {med([r.workers_s for r in with_ray])} |")
    print(f"| ... until the head counts {n} nodes alive | {med([r.formed_s for r in with_ray])} |")
    print(f"| `up` with Ray, whole | {med([r.total_s for r in with_ray])} |")
    print(f"| `down` (every process killed, namespaces and mounts removed) | {med(down)} |")
    print(f"\nProcesses per host with Ray idle: {', '.join(f'{k} {v}' for k, v in procs.items())} "
          "(h0: GCS, raylet, dashboard agent, runtime-env agent, monitor, log monitor, client server, ...)\n")


def _links(seconds: float) -> None:
    with HostCluster(NAME).up(2, ray=False) as cluster:
        rows = [("loopback within h0", "h0", "h0", None)] + [
            (f"h0 -> h1, {'no limit' if r is None else 'tbf ' + r}", "h0", "h1", r) for r in RATES]
        print("| path | socket probe, Mbit/s | iperf3, Mbit/s | of the set rate | 64-byte round trip, us |\n"
              "|---|---|---|---|---|")
        for label, src, dst, rate in rows:
            cluster.limit("h1", rate)
            probe = cluster.throughput(src, dst, seconds)
            iperf = _iperf3(cluster, src, dst, seconds)
            share = f"{probe / parse_rate(rate):.2f}" if rate else ""
            rtt = cluster.round_trip(src, dst)
            print(f"| {label} | {probe / 1e6:,.1f} | {'' if iperf is None else f'{iperf / 1e6:,.1f}'} | {share} "
                  f"| {rtt * 1e6:.0f} |", flush=True)
        cluster.limit("h1", None)


OBSERVER = """
import logging, time, ray
ray.init(logging_level=logging.ERROR, log_to_driver=False)
while True:
    print("ALIVE", sum(n["Alive"] for n in ray.nodes()), flush=True)
    time.sleep(0.2)
"""


class _Observer:
    """A driver in h0 that counts the alive nodes every 0.2 s (Ray's own messages ignored)."""

    def __init__(self, cluster: HostCluster):
        self.proc = cluster.popen("h0", [sys.executable, "-c", OBSERVER], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)

    def alive(self) -> int:
        for line in self.proc.stdout:
            if line.startswith("ALIVE "):
                return int(line.split()[1])
        raise RuntimeError("the observer ended")

    def until(self, count: int, timeout_s: float = 120.0) -> float:
        """Seconds until ``count`` nodes are alive (from this call)."""
        started = time.monotonic()
        while self.alive() != count and time.monotonic() - started < timeout_s:
            pass
        return time.monotonic() - started

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _names(pids: list[int]) -> list[str]:
    names = []
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        scripts = [a for a in args if a.endswith(".py")]
        names.append((scripts or args)[0].rsplit("/", 1)[-1])
    return names


def _faults() -> None:
    print("\n| fault | the head declares h1's node dead after (s) | afterwards |\n|---|---|---|")
    with HostCluster(NAME).up(2, cpus_per_host=1) as cluster:
        observer = _Observer(cluster)
        observer.until(2)
        cluster.kill_host("h1")
        print(f"| every process of h1 killed | {observer.until(1):.1f} | |", flush=True)
        observer.close()
    with HostCluster(NAME).up(2, cpus_per_host=1) as cluster:
        observer = _Observer(cluster)
        observer.until(2)
        cluster.cut("h1")
        dead = observer.until(1)
        cluster.heal("h1")
        back = observer.until(2, timeout_s=30)
        rejoined = f"back after {back:.1f} s" if back < 30 else "h1 not back"
        print(f"| h1's link cut, healed once dead | {dead:.1f} | 30 s after healing: {observer.alive()} nodes "
              f"alive ({rejoined}); left in h1: {', '.join(_names(cluster.pids('h1'))) or 'nothing'} |", flush=True)
        t = time.monotonic()
        cluster.rejoin("h1")
        print(f"| ... then `rejoin(h1)` | | a fresh node alive after {time.monotonic() - t:.1f} s |", flush=True)
        observer.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--faults", action="store_true")
    args = parser.parse_args()
    print(header("distdqn.hosts: the harness's cost, and its links"))
    _harness(args.hosts, args.repeats)
    _links(args.seconds)
    if args.faults:
        _faults()


if __name__ == "__main__":
    main()
