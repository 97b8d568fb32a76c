"""The registered transports of the update channel, cheapest first: ``auto`` takes the first that
reaches every worker. Each is a class with a ``name`` (a value of ``<topology>.transport`` in the
config), ``unreachable(cfg, pool, timeout_s)`` (why it cannot serve this run, or None) and
``open(pool, exchange, learner, timeout_s)`` (its UpdateChannel)."""

from __future__ import annotations

from typing import Any

from distdqn.config import Config
from distdqn.errors import ConfigError
from distdqn.runtime.pool import RolePool
from distdqn.runtime.updates.ray_calls import RayCallsChannel
from distdqn.runtime.updates.shared_memory import SharedMemoryChannel

CHANNELS: dict[str, Any] = {c.name: c for c in (SharedMemoryChannel, RayCallsChannel)}


def choose(cfg: Config, pool: RolePool, timeout_s: float) -> Any:
    """The channel class for ``<topology>.transport``: the one named, or (auto) the cheapest that
    reaches, decided by what really reaches; one named that cannot is a config error."""
    field = f"{cfg.topology}.transport"
    wanted = getattr(cfg, cfg.topology).transport
    if wanted != "auto":
        why = CHANNELS[wanted].unreachable(cfg, pool, timeout_s)
        if why is not None:
            raise ConfigError(f"{field}: {wanted}: {why} (use auto, or another transport)")
        return CHANNELS[wanted]
    return next(c for c in CHANNELS.values() if c.unreachable(cfg, pool, timeout_s) is None)
