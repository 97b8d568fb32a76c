"""Wait until a Ray cluster has a number of alive nodes, and say which: the check `distdqn.hosts`
runs inside a host after starting its nodes (a raylet registers with the head a moment after
`ray start` returns, and a driver started before then would place everything on fewer nodes).

    python -m distdqn.runtime.nodes ADDRESS COUNT TIMEOUT_S [NODE_ADDRESS]

prints the alive nodes' addresses as one JSON list and exits 0 once COUNT are alive (and, if
given, one of them at NODE_ADDRESS: a node that rejoined); exits 1 with a one-line message on
stderr if they are not within TIMEOUT_S seconds.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import ray


def wait_for_nodes(address: str, count: int, timeout_s: float, node: str | None = None) -> list[str] | None:
    """The addresses of the alive nodes once ``count`` are alive (``node`` among them, if
    given), or None after ``timeout_s``."""
    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive"))
            if len(alive) >= count and (node is None or node in alive):
                return alive
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
    finally:
        ray.shutdown()


def main(argv: list[str]) -> int:
    address, count, timeout_s = argv[0], int(argv[1]), float(argv[2])
    node = argv[3] if len(argv) > 3 else None
    alive = wait_for_nodes(address, count, timeout_s, node)
    if alive is None:
        also = f" (with {node})" if node else ""
        print(f"fewer than {count} nodes alive{also} at {address} after {timeout_s:g} s", file=sys.stderr)
        return 1
    print(json.dumps(alive))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
