"""A driver for test_apex's publication test: joins the cluster at argv[1] as apex's driver does,
drives one LearnerWorker as the driver and an actor's weights client would, and checks what it
publishes on the weights channel (a driver process of its own: Ray reads its token settings when
it is imported)."""

from __future__ import annotations

import sys

import numpy as np
import ray

from distdqn.config import load_config
from distdqn.core.transitions import Transitions
from distdqn.envs import env_info
from distdqn.runtime.cluster import connect
from distdqn.runtime.messages import InsertResult
from distdqn.runtime.roles.learner import LearnerWorker
from distdqn.runtime.weights import WeightsClient


def main(address: str) -> None:
    cfg = load_config("cartpole-apex", [
        "apex.weight_sync_period=8", "apex.batches_per_sample=4", "learner.batch_size=16",
        "train.learning_starts=64", "train.replay_ratio=1.0"])
    info = env_info(cfg.env)
    rng = np.random.default_rng(0)
    n = 256
    transitions = Transitions(
        obs=rng.normal(size=(n, 4)).astype(np.float32), action=rng.integers(0, 2, n),
        reward=np.ones(n, np.float32), next_obs=rng.normal(size=(n, 4)).astype(np.float32),
        terminated=rng.random(n) < 0.05, discount=np.full(n, 0.99 ** 3, np.float32))
    cluster = connect(address)
    try:
        learner = LearnerWorker.options(num_cpus=0).remote(cfg, info, None, 3)
        first = ray.get(learner.weights.remote(), timeout=60)
        assert first.version == 0 and first.box
        # the replay carries data only: an insert is answered with whether it was accepted
        assert ray.get(learner.add.remote(transitions, None, n), timeout=60) == InsertResult(True)
        report = ray.get(learner.train.remote(32, n), timeout=120)
        assert report.updates.count == 32 and report.learner_updates == 32, report
        # the put of 32 may still be under way; 24's is in the store
        assert report.weights is not None and report.weights.version in (24, 32), report.weights
        weights, initial = ray.get(report.weights.box[0], timeout=60), ray.get(first.box[0], timeout=60)
        assert not all(np.array_equal(weights[k], v) for k, v in initial.items())
        last = ray.get(learner.weights.remote(), timeout=60)   # waits for its put
        assert last.version == 32, last
        # an actor's weights client asks the learner and takes the newest publication a call later
        client = WeightsClient(source=learner, update_period=1)
        assert client.update() is None   # asked, not waited for
        client._asked.result(timeout=60)   # the request's answer and weights, read on the client's thread
        taken = client.update()
        assert client.version == 32 and taken is not None
        expected = ray.get(last.box[0], timeout=60)
        assert all(np.array_equal(v, expected[k]) for k, v in taken.items())
        assert client.update() is None   # nothing newer
        print(f"published {client.version}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
