"""distdqn: Deep Q-Networks trained fast on one machine and in parallel on Ray.

The Python API (``distdqn/api.py``): ``train``, ``load``, ``evaluate``, ``export``, ``make_config``,
and the ``Run``, ``Agent`` and ``Evaluation`` they return. They are imported on first use, so that
``import distdqn`` (and the ``distdqn`` command's start) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Agent", "Config", "Evaluation", "Run", "__version__", "evaluate", "export", "load", "make_config",
           "train"]
_API = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from distdqn.api import (
        Agent,
        Config,
        Evaluation,
        Run,
        evaluate,
        export,
        load,
        make_config,
        train,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        from distdqn import api
        return getattr(api, name)
    raise AttributeError(f"module 'distdqn' has no attribute {name!r}")
