"""How core components are built and run: the per-run session, component builders, and (for the
distributed topologies) the Ray glue. Only ``runtime`` and ``topologies`` import ray."""
