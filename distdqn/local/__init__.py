"""What one process does, with no Ray: builders that map the config to core objects, the Replica
(a vector env with its actor, a replay and a learner: ``single``, and every data-parallel worker),
the RunSession (evaluation, metrics, checkpoints, the summary), and CPU affinity.

Imports flow one way: core <- envs <- local <- runtime (the Ray glue), topologies <- cli.
"""
