"""A test's attacker, kept out of the package: runs `distdqn train ARGS` (argv[2:]) with the
parameter-server workers whose indices argv[1] lists (comma-separated) replaced by ones that push
NaN (a gradient or a model of NaN, whichever the mode pushes) instead of their update."""

from __future__ import annotations

import sys

import numpy as np
import ray

from distdqn import cli
from distdqn.runtime import parameter_server
from distdqn.runtime.roles.ps_worker import PSWorker


def attacking(poisoned: set[int]):
    """PSWorker, but the workers in ``poisoned`` push NaN, whatever the transport."""

    class Attacker(PSWorker.__ray_actor_class__):
        def __init__(self, *args):
            super().__init__(*args)
            if self.index in poisoned:
                work = self.replica.work

                def poisoned_work(*work_args):
                    vector, count = work(*work_args)
                    return (None if vector is None else np.full_like(vector, np.nan)), count

                self.replica.work = poisoned_work

    return ray.remote(Attacker)


if __name__ == "__main__":
    parameter_server.PSWorker = attacking({int(i) for i in sys.argv[1].split(",")})
    sys.argv = ["distdqn", *sys.argv[2:]]
    cli.main()
