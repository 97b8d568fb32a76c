"""What a weight publication costs apex's learner: copying the online weights, and putting them
into the object store, timed inside a Ray actor (one CPU) as the learner does them.

    python -m benchmarks.weight_publication [--config acrobot-apex] [--puts 200] [--rounds 3]

The put is what ``LearnerWorker`` hands to its publisher thread (the training thread only copies);
per learner update it costs put / ``apex.weight_sync_period``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray

from benchmarks.common import header


@ray.remote(num_cpus=1)
class Publisher:
    def __init__(self, config: str):
        import torch

        from distdqn.config import load_config
        from distdqn.envs import env_info
        from distdqn.local import build
        torch.set_num_threads(1)
        cfg = load_config(config)
        self.sync_period = cfg.apex.weight_sync_period
        self.learner = build.build_learner(cfg, env_info(cfg.env))

    def time(self, puts: int) -> dict[str, float]:
        t = time.perf_counter()
        for _ in range(puts):
            weights = self.learner.get_weights()
        copy_s = (time.perf_counter() - t) / puts
        t = time.perf_counter()
        for _ in range(puts):
            ray.put(weights)
        put_s = (time.perf_counter() - t) / puts
        size = sum(v.nbytes for v in weights.values())
        return {"copy_us": copy_s * 1e6, "put_us": put_s * 1e6, "kb": size / 1024, "period": self.sync_period}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="acrobot-apex", help="YAML config file or preset name")
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        publisher = Publisher.remote(args.config)
        rounds = [ray.get(publisher.time.remote(args.puts), timeout=300) for _ in range(args.rounds)]
    finally:
        ray.shutdown()
    print(header(f"A weight publication in apex's learner ({args.config})"))
    print("| round | weights (KB) | copy (us) | ray.put (us) | put per learner update (us) |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        print(f"| {i} | {r['kb']:.0f} | {r['copy_us']:.0f} | {r['put_us']:.0f} | {r['put_us'] / r['period']:.1f} |")
    print(f"\nMedian put {statistics.median(r['put_us'] for r in rounds):.0f} us every "
          f"{rounds[0]['period']} updates: what the publisher thread takes off the training thread.")


if __name__ == "__main__":
    main()
