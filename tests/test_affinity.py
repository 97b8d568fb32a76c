"""runtime/affinity.py on this machine's real scheduler, in child processes (so that the test
process keeps all its CPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distdqn.local import affinity

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs Linux CPU affinity and at least 2 CPUs")


def child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_claim_last_gives_the_calling_thread_the_last_cpu_and_the_other_threads_the_rest():
    cpus = sorted(os.sched_getaffinity(0))
    got = child(
        "import json, os, threading\n"
        "from distdqn.local import affinity\n"
        "def where(): return sorted(os.sched_getaffinity(0))\n"
        "stop = threading.Event()\n"
        "other = threading.Thread(target=stop.wait); other.start()      # started before the claim\n"
        "mine = affinity.claim_last(1)\n"
        "late = []\n"
        "child = threading.Thread(target=lambda: late.append(where())); child.start(); child.join()\n"
        "print(json.dumps({'mine': mine, 'caller': where(), 'other': sorted(os.sched_getaffinity(other.native_id)),\n"
        "                  'started_by_caller': late[0], 'all': affinity.claim_last(len(os.sched_getaffinity(0)))}))\n"
        "stop.set(); other.join()\n")
    assert got["mine"] == [cpus[-1]]
    assert got["caller"] == got["started_by_caller"] == [cpus[-1]]
    assert got["other"] == cpus[:-1]
    assert got["all"] is None          # taking every CPU would leave none for the rest: refused


def test_pin_another_process_and_find_it_among_descendants():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert sleeper.pid in affinity.descendants(os.getpid())
        first = min(os.sched_getaffinity(0))
        affinity.pin({first}, sleeper.pid)
        assert os.sched_getaffinity(sleeper.pid) == {first}
        assert len(os.sched_getaffinity(0)) >= 2        # this process was left alone
    finally:
        sleeper.kill()
        sleeper.wait()
