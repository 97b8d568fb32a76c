"""distdqn.hosts: separate hosts on this machine (network, mount and UTS namespaces), with real
Ray clusters and real `distdqn train` runs across them. Needs root and `ip netns`; skipped with
the reason otherwise. The tests of the module share one 2-host cluster (``hosts``); the clean-up
tests make clusters of their own, and every cluster is checked to leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distdqn.hosts import (
    PREFIX,
    STATE_ROOT,
    HostCluster,
    HostsError,
    leftovers,
    parse_rate,
    support_problem,
)
from tests.helpers import REPO, metrics_started

PROBLEM = support_problem()
needs_hosts = pytest.mark.skipif(PROBLEM is not None, reason=f"distdqn.hosts cannot run here: {PROBLEM}")

ACROSS_HOSTS = {"sync_ps": {"transport": "shm+tcp"}, "allreduce": {"backend": "gloo", "hosts": 2}}
"""What the data-parallel topologies choose with one worker on each of two hosts (summary keys and
values), the server or rank 0 on h0: the parameter server's worker there over its shared memory,
the other's over a socket to the server; allreduce's one rank per host, a flat gloo group."""

SHORT = ["--set", "log.progress=false", "--set", "train.torch_threads=1", "--set", "eval.episodes=10"]


def _name(tag: str) -> str:
    return f"t{os.getpid()}{tag}"   # one per test session: sessions side by side never meet


def _namespace_inodes(cluster: HostCluster) -> set[int]:
    """The inodes of every namespace of the cluster, to look for processes in them after it is gone."""
    files = [f"/run/netns/{h.netns}" for h in cluster.hosts] + [f"/run/netns/{cluster.bridge_netns}"]
    files += [str(p) for h in cluster.hosts for p in (h.mount_ns, h.uts_ns)]
    return {os.stat(f).st_ino for f in files}


def _traces(name: str, inodes: set[int], links_before: set[str]) -> list[str]:
    """Everything of cluster ``name`` the machine still shows: `ip netns`, root links new since
    ``links_before``, mounts, processes in any of its namespaces, its state."""
    found = [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                         check=False).stdout.split()
             if ns.startswith(f"{PREFIX}-{name}-")]
    found += [f"link {link}" for link in _root_links() - links_before]
    found += [f"mount {line.split()[4]}" for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if f"{PREFIX}-{name}-" in line or f"{STATE_ROOT}/{name}" in line]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            for kind in ("net", "mnt", "uts"):
                try:
                    link = os.readlink(entry / "ns" / kind)
                except OSError:
                    continue
                if int(link[link.index("[") + 1:-1]) in inodes:
                    found.append(f"process {entry.name} ({kind})")
    return found + leftovers(name)


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def hosts():
    """Two hosts with a Ray node each (3 CPUs: apex's learner, replay and an actor fit on h0, one
    data-parallel worker of 2 CPUs on each host); nothing of it is left afterwards."""
    links = _root_links()
    cluster = HostCluster(_name("m"))
    try:
        cluster.up(2, cpus_per_host=3)
        inodes = _namespace_inodes(cluster)
        yield cluster
    finally:
        cluster.down()
    assert _traces(cluster.name, inodes, links) == []


def _py(cluster: HostCluster, host: str, code: str, **kwargs) -> subprocess.CompletedProcess:
    return cluster.run(host, [sys.executable, "-c", code], timeout=120, **kwargs)


# ---- links ----------------------------------------------------------------------------------


@needs_hosts
def test_hosts_reach_each_other_but_not_the_outside_nor_each_others_loopback(hosts):
    h0, h1 = hosts.hosts
    assert hosts.connect("h0", h1.address) == "refused"      # reached h1: nothing listens on port 9
    assert hosts.connect("h1", h0.address, 6379) == "connected"   # the Ray head
    root_addresses = [line.split()[3].split("/")[0] for line in subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout.splitlines()
        if not line.split()[3].startswith("127.")]
    for address in [*root_addresses, "1.1.1.1", "8.8.8.8"]:
        assert hosts.connect("h0", address, 80) == "unreachable", address
    # each host has its own loopback: h1's listener on 127.0.0.1 is not h0's
    serve = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 7001)); s.listen(); "
             "print('ready', flush=True); time.sleep(60)")
    listener = hosts.popen("h1", [sys.executable, "-c", serve], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        assert hosts.connect("h1", "127.0.0.1", 7001) == "connected"
        assert hosts.connect("h0", "127.0.0.1", 7001) == "refused"
    finally:
        listener.kill()
        listener.wait()
    assert _py(hosts, "h1", "import socket; print(socket.gethostname(), socket.gethostbyname('h0'))").stdout.split() \
        == ["h1", h0.address]


@needs_hosts
def test_each_host_has_its_own_shared_memory_and_ray_temp_dir(hosts):
    make = ("from multiprocessing import shared_memory, resource_tracker; "
            "s = shared_memory.SharedMemory(name='distdqn-hosts-probe', create=True, size=64); s.buf[0] = 7; "
            "resource_tracker.unregister(s._name, 'shared_memory'); print('made')")
    look = ("from multiprocessing import shared_memory, resource_tracker\n"
            "try:\n s = shared_memory.SharedMemory(name='distdqn-hosts-probe')\n"
            " resource_tracker.unregister(s._name, 'shared_memory'); print(s.buf[0])\n"
            "except FileNotFoundError:\n print('absent')")
    assert _py(hosts, "h0", make).stdout.strip() == "made"
    try:
        assert _py(hosts, "h0", look).stdout.strip() == "7"
        assert _py(hosts, "h1", look).stdout.strip() == "absent"
        assert not Path("/dev/shm/distdqn-hosts-probe").exists()
    finally:
        _py(hosts, "h0", "import os; os.unlink('/dev/shm/distdqn-hosts-probe')")
    sessions = {h.name: _py(hosts, h.name, "import os; print(os.path.realpath('/tmp/ray/session_latest'))").stdout.strip()
                for h in hosts.hosts}
    names = {h.name: hosts.run(h, ["ls", Path(sessions[h.name]) / "logs"]).stdout.split() for h in hosts.hosts}
    assert "gcs_server.out" in names["h0"] and "gcs_server.out" not in names["h1"]   # h1's own logs
    assert not Path(sessions["h0"]).exists()   # nor is it in the machine's /tmp/ray


@needs_hosts
def test_the_ray_cluster_spans_both_hosts_and_wants_its_token(hosts, tmp_path):
    nodes = hosts.run("h1", [sys.executable, "-m", "distdqn.runtime.nodes", hosts.address, "2", "30"], timeout=120)
    assert nodes.returncode == 0, nodes.stderr[-2000:]
    assert json.loads(nodes.stdout) == sorted(h.address for h in hosts.hosts)
    wrong = tmp_path / "token"
    wrong.write_text("0" * 64)
    code = f"import ray; ray.init(address='{hosts.address}'); print('joined')"
    for env in (dict(hosts.env(), RAY_AUTH_TOKEN_PATH=str(wrong)),
                {k: v for k, v in hosts.env().items() if not k.startswith("RAY_AUTH")}):
        # Ray retries for 20 s before giving up: the GCS's first refusal is enough
        driver = hosts.popen("h1", [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            lines = []
            for line in driver.stdout:
                lines.append(line)
                if "InvalidAuthToken" in line or "joined" in line:
                    break
        finally:
            driver.kill()
            driver.communicate()
        assert "InvalidAuthToken" in lines[-1], "".join(lines)[-2000:]


# ---- real runs across hosts -----------------------------------------------------------------


def _train(hosts: HostCluster, preset: str, run_dir: Path, *sets: str) -> dict:
    result = hosts.run("h0", [sys.executable, "-m", "distdqn.cli", "train", preset, "--address", hosts.address,
                              "--run-dir", str(run_dir), *SHORT, *sets], cwd=REPO, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def _nodes(run_dir: Path) -> dict[str, str]:
    return {role: p["node_id"] for role, p in json.loads((run_dir / "processes.json").read_text()).items() if p}


@needs_hosts
@pytest.mark.slow
def test_apex_from_inside_a_host_runs_its_actors_on_both_hosts(hosts, tmp_path):
    run_dir = tmp_path / "run"
    summary = _train(hosts, "cartpole-apex", run_dir, "--set", "apex.num_actors=2", "--set", "apex.actor_cpus=1",
                     "--set", "train.total_env_steps=6000")
    assert summary["cluster_nodes"] == 2
    assert len(summary["actor_nodes"]) == 2, summary["actor_nodes"]
    nodes = _nodes(run_dir)
    assert nodes["driver"] in summary["actor_nodes"]   # one actor on the driver's host (h0), one on h1
    assert summary["env_steps"] >= 6000 and summary["learner_updates"] > 0


@needs_hosts
@pytest.mark.slow
def test_federated_from_inside_a_host_runs_its_clients_on_both_hosts(hosts, tmp_path):
    run_dir = tmp_path / "run"
    summary = _train(hosts, "cartpole-federated", run_dir, "--set", "workers.cpus=1",
                     "--set", "train.total_env_steps=6000")
    assert summary["cluster_nodes"] == 2 and summary["rounds"] > 0
    clients = {n for role, n in _nodes(run_dir).items() if role.startswith("worker")}
    assert len(clients) == 2, clients


@needs_hosts
@pytest.mark.slow
@pytest.mark.parametrize("topology", sorted(ACROSS_HOSTS))
def test_data_parallel_workers_on_two_hosts_take_the_cross_host_path(hosts, tmp_path, topology):
    """The shared-memory probe finds the worker on h1 cannot open h0's segment: no `auto` path
    assumes one host (ACROSS_HOSTS says what each chooses instead)."""
    run_dir = tmp_path / "run"
    summary = _train(hosts, f"cartpole-{topology}", run_dir, "--set", "workers.cpus=2",
                     "--set", "train.total_env_steps=3000")
    workers = {n for role, n in _nodes(run_dir).items() if role.startswith("worker")}
    assert len(workers) == 2, workers
    assert {key: summary[key] for key in ACROSS_HOSTS[topology]} == ACROSS_HOSTS[topology], summary


@needs_hosts
@pytest.mark.slow
def test_a_head_that_runs_no_roles_hosts_the_driver_and_async_ps_workers_elsewhere_take_tcp(tmp_path):
    """``head_cpus=0``, as Ray advises for clusters: the driver (the server) in h0, both workers on
    h1, each over its socket to the server; the run finishes and leaves nothing behind."""
    links, run_dir = _root_links(), tmp_path / "run"
    with HostCluster(_name("z")).up(2, cpus_per_host=4, head_cpus=0) as cluster:
        inodes = _namespace_inodes(cluster)
        summary = _train(cluster, "cartpole-async_ps", run_dir, "--set", "workers.cpus=2",
                         "--set", "train.total_env_steps=3000")
        nodes = _nodes(run_dir)
        workers = {n for role, n in nodes.items() if role.startswith("worker")}
        assert len(workers) == 1 and nodes["driver"] not in workers, nodes
        assert summary["transport"] == "tcp", summary
    assert _traces(cluster.name, inodes, links) == []


# ---- faults ---------------------------------------------------------------------------------


@needs_hosts
def test_a_token_bucket_limits_a_hosts_link_and_lifting_it_restores_the_rate(hosts):
    free = hosts.throughput("h0", "h1", seconds=1.0)
    hosts.limit("h1", "10mbit")
    try:
        assert hosts.status()["hosts"][1]["limit"] == "10Mbit"
        there = hosts.throughput("h0", "h1", seconds=2.0)
        back = hosts.throughput("h1", "h0", seconds=2.0)
    finally:
        hosts.limit("h1", None)
    assert free > 200e6, free
    assert 5e6 < there < 10.5e6 and 5e6 < back < 10.5e6, (there, back)
    assert hosts.status()["hosts"][1]["limit"] is None
    assert hosts.throughput("h0", "h1", seconds=1.0) > 200e6


@needs_hosts
def test_a_cut_link_makes_connects_time_out_and_healing_restores_it(hosts):
    h1 = hosts.host("h1")
    hosts.cut("h1")
    try:
        assert hosts.status()["hosts"][1]["link"] == "cut"
        started = time.monotonic()
        assert hosts.connect("h0", h1.address, timeout_s=2.0) == "timeout"
        assert time.monotonic() - started >= 2.0
        assert hosts.connect("h1", "127.0.0.1", 9) == "refused"   # the host itself goes on
    finally:
        hosts.heal("h1")
    assert hosts.status()["hosts"][1]["link"] == "up"
    assert hosts.connect("h0", h1.address) == "refused"
    assert hosts.connect("h1", hosts.host("h0").address, 6379) == "connected"


CONTROLLER = """
import sys, time
from distdqn.hosts import HostCluster
c = HostCluster(sys.argv[1]).up(2, cpus_per_host=1, ray=sys.argv[2] == "ray")
c.popen("h1", ["sleep", "300"])
print("up", flush=True)
time.sleep(300)
"""


def _controller(name: str, ray: bool) -> subprocess.Popen:
    """A process that brings a cluster up (guarded) and waits: for the tests to kill."""
    proc = subprocess.Popen([sys.executable, "-c", CONTROLLER, name, "ray" if ray else "no"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "up", proc.stderr.read()[-2000:] if proc.poll() is not None else line
    return proc


def _wait_clean(name: str, inodes: set[int], links: set[str], timeout_s: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := _traces(name, inodes, links)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@needs_hosts
@pytest.mark.slow
def test_kill_host_ends_every_process_of_it_rejoin_brings_a_node_back_and_a_sigkilled_owner_leaves_nothing():
    name, links = _name("k"), _root_links()
    proc = _controller(name, ray=True)
    try:
        cluster = HostCluster(name, guard=False)   # attached to the controller's cluster
        inodes = _namespace_inodes(cluster)
        before = {h.name: cluster.pids(h) for h in cluster.hosts}
        assert len(before["h1"]) >= 3 and len(before["h0"]) >= 3, before   # raylets and their helpers, the sleep
        killed = cluster.kill_host("h1")
        assert set(before["h1"]) <= set(killed)
        assert cluster.pids("h1") == []
        assert all(os.path.exists(f"/proc/{p}") for p in before["h0"])   # h0 untouched
        cluster.rejoin("h1")   # a fresh node there, joined to the head
        nodes = cluster.run("h0", [sys.executable, "-m", "distdqn.runtime.nodes", cluster.address, "2", "30"],
                            timeout=120)
        # (the killed node counts as alive until the head's health checks give up on it)
        assert set(json.loads(nodes.stdout)) == {h.address for h in cluster.hosts}, nodes.stderr[-2000:]
        assert cluster.pids("h1")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait_clean(name, inodes, links) == []   # the guard took it all down
    finally:
        if proc.poll() is None:
            proc.kill()
        HostCluster(name, guard=False).down()


@needs_hosts
def test_down_and_the_next_up_sweep_what_a_killed_owner_and_guard_left():
    name, links = _name("s"), _root_links()
    proc = _controller(name, ray=False)
    cluster = HostCluster(name, guard=False)
    inodes = _namespace_inodes(cluster)
    guard = json.loads((STATE_ROOT / name / "state.json").read_text())["guard"]["pid"]
    os.kill(guard, signal.SIGKILL)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    assert any(line.startswith("process") for line in _traces(name, inodes, links))   # the sleep lives on
    # the next `up` of another name sweeps clusters whose owner is dead
    other = HostCluster(_name("o"))
    try:
        other.up(1, ray=False)
        assert _traces(name, inodes, links) == []
    finally:
        other.down()
    # and `down` on the command line sweeps a cluster with nothing of it left running
    proc = _controller(name, ray=False)
    inodes = _namespace_inodes(HostCluster(name, guard=False))
    os.kill(json.loads((STATE_ROOT / name / "state.json").read_text())["guard"]["pid"], signal.SIGKILL)
    proc.kill()
    proc.wait()
    down = _cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert _traces(name, inodes, links) == []


# ---- the command line and its errors ----------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distdqn.hosts", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


@needs_hosts
def test_the_command_line_brings_hosts_up_runs_in_them_and_takes_them_down():
    name, links = _name("c"), _root_links()
    try:
        up = _cli("up", "2", "--no-ray", "--name", name)
        assert up.returncode == 0, up.stderr
        assert [h["host"] for h in json.loads(up.stdout[:up.stdout.rindex("}") + 1])["hosts"]] == ["h0", "h1"]
        inodes = _namespace_inodes(HostCluster(name, guard=False))
        ran = _cli("run", "--name", name, "--host", "h1", "--", "sh", "-c", "hostname; exit 3")
        assert ran.returncode == 3 and ran.stdout.strip() == "h1"   # its exit status, its output
        assert _cli("limit", "h1", "100mbit", "--name", name).returncode == 0
        status = json.loads(_cli("status", "--name", name).stdout)
        assert status["hosts"][1]["limit"] == "100Mbit" and status["hosts"][0]["limit"] is None
        for args, message in ((("limit", "h1", "fast", "--name", name), "rate 'fast'"),
                              (("cut", "h7", "--name", name), "no host 'h7'"),
                              (("run", "--name", "nosuch", "--", "true"), "cluster nosuch is not up"),
                              (("up", "0", "--name", name), "expected 1 to 64")):
            bad = _cli(*args)
            assert bad.returncode == 2 and bad.stderr.startswith("error: ") and message in bad.stderr, bad.stderr
            assert "Traceback" not in bad.stderr
        assert _cli("down", "--name", name).returncode == 0
        assert _traces(name, inodes, links) == []
    finally:
        _cli("down", "--name", name)


def test_rates_read_as_tc_reads_them():
    assert parse_rate("10mbit") == 10_000_000
    assert parse_rate("1gbit") == 1_000_000_000
    assert parse_rate("1.5Mbit") == 1_500_000
    assert parse_rate(64000) == 64000
    for bad in ("10 mbps", "fast", "1kbit", ""):
        with pytest.raises(HostsError):
            parse_rate(bad)


# ---- a slow link slows a run; it does not end it ----------------------------------------------


def _slow_then_short_cut(cluster: HostCluster) -> None:
    cluster.limit("h1", "2mbit")
    time.sleep(10)
    cluster.limit("h1", None)
    cluster.cut("h1")
    time.sleep(8)
    cluster.heal("h1")


def _long_cut(cluster: HostCluster) -> None:
    cluster.cut("h1")
    time.sleep(20)   # past the 8 s after which this cluster's head declares a silent node dead
    cluster.heal("h1")


@needs_hosts
@pytest.mark.slow
@pytest.mark.parametrize("fault, wall_s, restarts, dead_after_s", [(_slow_then_short_cut, 50, 0, None),
                                                                   (_long_cut, 50, 1, 8.0)],
                         ids=["2mbit-then-8s-cut", "20s-cut-dead-after-8s"])
def test_apex_rides_out_a_slow_link_and_a_short_cut_and_replaces_an_actor_a_long_cut_lost(tmp_path, fault, wall_s,
                                                                                         restarts, dead_after_s):
    """apex with one actor on each host, h1 (an actor's host, not the learner's) faulted while the
    run trains. A link at 2 Mbit/s for 10 s, then cut for 8 s (shorter than Ray's health checks
    can declare a node dead: 5 failed checks 3 s apart): the run goes on with the other actor
    meanwhile and ends at its wall-clock budget with both, replacing none (a call Ray could not
    deliver is asked again, not taken for a death). A cut of 20 s on a cluster whose head declares
    a silent node dead after 8 s (Ray's default takes 65 s for a cut; the same path, sooner): Ray
    declares h1's node dead (its raylet exits and does not come back on heal); its actor is
    replaced on h0 and the run ends at its budget, the restart counted. Either way nothing of the
    run is left in any host."""
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    with HostCluster(_name("p")).up(2, cpus_per_host=3, dead_after_s=dead_after_s) as cluster, log.open("w") as out:
        proc = cluster.popen("h0", [sys.executable, "-m", "distdqn.cli", "train", "cartpole-apex", "--address",
                                    cluster.address, "--run-dir", str(run_dir), *SHORT,
                                    "--set", "apex.num_actors=2", "--set", "apex.actor_cpus=1",
                                    "--set", "train.total_env_steps=10000000", "--set", f"train.max_wall_s={wall_s}",
                                    "--set", "log.interval_env_steps=1000"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=out)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None and not metrics_started(run_dir)():
                time.sleep(0.5)
            assert metrics_started(run_dir)(), log.read_text()[-3000:]
            pids = json.loads((run_dir / "processes.json").read_text())
            assert {pids["actor0"]["pid"], pids["actor1"]["pid"]} & set(cluster.pids("h1")), pids   # one is there
            assert pids["learner"]["pid"] in cluster.pids("h0")
            fault(cluster)
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, log.read_text()[-3000:]
        run_pids = [p["pid"] for p in json.loads((run_dir / "processes.json").read_text()).values() if p]
        deadline = time.monotonic() + 15   # Ray ends a job's actors as its driver exits
        while set(run_pids) & set(cluster.pids("h0") + cluster.pids("h1")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not set(run_pids) & set(cluster.pids("h0") + cluster.pids("h1")), "the run left processes"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "max_wall_s" and summary["actor_restarts"] == restarts, (
        summary, log.read_text()[-3000:])
    assert len(summary["actor_nodes"]) == 2 - restarts, summary   # after a long cut both actors on h0
    assert summary["learner_updates"] > 0
