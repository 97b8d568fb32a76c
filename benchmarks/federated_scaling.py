"""Federated DQN with 2, 4 and 8 clients, with and without differential privacy: rounds and
wall-clock time to solve CartPole-v1, and the return the final global model reaches on each
client's own variant.

    python -m benchmarks.federated_scaling [--seeds 2] [--clients 2 4 8] [--dp-mode local]
        [--dp-clip 1.0] [--dp-noise 0.01]

Every run is `distdqn train cartpole-federated` with ``workers.num_workers`` clients sharing the
machine's cores; client i gets variant i mod 4 of the preset (pole length, pole mass, cart mass,
gravity). Each run stops at its first solving evaluation on the default CartPole-v1 (10 greedy
episodes, mean >= 475), or at the env-step budget. DP runs report the (epsilon, delta) spent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import header
from distdqn.config import load_config

PRESET = "cartpole-federated"


def train(args: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "distdqn.cli", "train", PRESET, *args, "--run-dir", str(run_dir),
           "--set", "log.progress=false"]
    done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def client_overrides(num_clients: int) -> list[str]:
    variants = [c.model_dump(exclude_unset=True) for c in load_config(PRESET).federated.clients]
    clients = [variants[i % len(variants)] for i in range(num_clients)]
    cpus = min(0.5, 2.0 / num_clients)
    return ["--set", f"workers.num_workers={num_clients}", "--set", f"workers.cpus={cpus:g}",
            "--set", f"federated.clients={json.dumps(clients)}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--dp-mode", choices=["central", "local"], default="local")
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--dp-noise", type=float, default=0.01)
    parser.add_argument("--budget", type=int, default=200_000)
    args = parser.parse_args()
    print(header(f"Federated DQN on CartPole-v1 variants: 2-8 clients, with and without DP "
                 f"(stop when solved, budget {args.budget:,} env steps)"))
    print("| clients | DP (clip, noise multiplier) | seeds solved | rounds to solve | time to solve (s) | "
          "env steps to solve | final return on default / on each client's variant (median over seeds) | "
          "epsilon (delta 1e-5), median |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for dp in (False, True):
            for k in args.clients:
                extra = [*client_overrides(k), "--set", "eval.stop_when_solved=true",
                         "--set", f"train.total_env_steps={args.budget}"]
                if dp:
                    extra += ["--set", f"federated.dp.mode={args.dp_mode}", "--set", f"federated.dp.clip={args.dp_clip}",
                              "--set", f"federated.dp.noise_multiplier={args.dp_noise}"]
                runs = []
                for seed in range(args.seeds):
                    run_dir = Path(tmp) / f"k{k}-dp{int(dp)}-s{seed}"
                    runs.append(train([*extra, "--seed", str(seed)], run_dir))
                solved = [r for r in runs if r["solved"]]

                def med(key: str, rs=solved) -> str:
                    values = [r[key] for r in rs if r.get(key) is not None]
                    return (f"{statistics.median(values):,.1f} [{min(values):,.1f}-{max(values):,.1f}]"
                            if values else "-")
                per_variant = [statistics.median(r["client_eval_returns"][i] for r in runs) for i in range(k)]
                default = statistics.median(r["final_eval_return_mean"] for r in runs)
                epsilons = [r["dp_epsilon"] if r["dp_epsilon"] is not None else float("inf")
                            for r in runs if "dp_epsilon" in r]
                dp_label = f"{args.dp_mode} {args.dp_clip:g}, {args.dp_noise:g}" if dp else "off"
                print(f"| {k} | {dp_label} | {len(solved)}/{len(runs)} | "
                      f"{med('rounds_to_solve')} | {med('time_to_solve_s')} | {med('env_steps_to_solve')} | "
                      f"{default:.0f} / {', '.join(f'{v:.0f}' for v in per_variant)} | "
                      f"{f'{statistics.median(epsilons):.3g}' if epsilons else '-'} |", flush=True)


if __name__ == "__main__":
    main()
