"""Start-up costs that a seconds-long run pays in full, each measured in a fresh Python process.

    python -m benchmarks.startup_costs [--repeats 3]

- importing ``torch.utils.tensorboard`` vs TensorBoard's own ``EventFileWriter`` (what
  ``distdqn.metrics`` uses);
- constructing ``torch.optim.Adam`` (its first construction imports ``torch._dynamo``) vs
  ``distdqn.core.optim.Adam``.
Each figure is the median over repeats of the time of that one statement after ``import torch``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from benchmarks.common import header

CASES = {
    "import torch.utils.tensorboard (SummaryWriter)": "from torch.utils.tensorboard import SummaryWriter",
    "import tensorboard EventFileWriter (distdqn.metrics)":
        "from tensorboard.summary.writer.event_file_writer import EventFileWriter",
    "first torch.optim.Adam(...)": "torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=1e-3)",
    "first distdqn.core.optim.Adam(...)":
        "from distdqn.core.optim import Adam; Adam([torch.zeros(3)], lr=1e-3)",
}

TEMPLATE = "import time, torch\nt = time.perf_counter()\n{stmt}\nprint(time.perf_counter() - t)\n"


def measure(stmt: str) -> float:
    out = subprocess.run([sys.executable, "-c", TEMPLATE.format(stmt=stmt)], capture_output=True,
                         text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(header("Start-up costs (fresh process each, after import torch)"))
    print("| statement | seconds (median) |\n|---|---|")
    for name, stmt in CASES.items():
        print(f"| {name} | {statistics.median(measure(stmt) for _ in range(args.repeats)):.3f} |", flush=True)


if __name__ == "__main__":
    main()
