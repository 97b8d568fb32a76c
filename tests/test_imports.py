"""Imports flow one way: core <- envs <- local <- runtime, topologies <- compare, tuning <- cli;
only runtime/, topologies/ and tuning/ (Ray Tune) import ray; core has no sockets, files or processes (DESIGN.md); each process role has
a file of its own under runtime/roles/."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distdqn"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_under(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py")) if (PACKAGE / sub).is_dir() else [PACKAGE / f"{sub}.py"]


def uses(path: Path, prefixes: tuple[str, ...]) -> set[str]:
    return {m for m in imported_modules(path) if m.split(".")[0] in prefixes or m.startswith(prefixes)}


def test_core_is_pure():
    forbidden = ("ray", "socket", "subprocess", "multiprocessing", "distdqn.envs", "distdqn.runtime",
                 "distdqn.topologies", "distdqn.cli", "distdqn.checkpoint", "distdqn.metrics")
    for path in modules_under("core"):
        assert not uses(path, forbidden), (path.name, uses(path, forbidden))


def test_envs_imports_only_core():
    forbidden = ("ray", "distdqn.runtime", "distdqn.topologies", "distdqn.cli")
    assert not uses(PACKAGE / "envs.py", forbidden)


def test_local_is_ray_free_and_below_runtime():
    forbidden = ("ray", "distdqn.runtime", "distdqn.topologies", "distdqn.cli")
    for path in modules_under("local"):
        assert not uses(path, forbidden), (path.name, uses(path, forbidden))


def test_messages_are_ray_free():
    # the wire types are plain dataclasses: any process (or a test) can build and check them
    assert not uses(PACKAGE / "runtime" / "messages.py", ("ray",))


def test_one_file_per_process_role():
    roles = {p.stem: p.read_text() for p in modules_under("runtime/roles") if p.stem != "__init__"}
    assert set(roles) == {"experience_actor", "learner", "replay_server", "ps_worker", "allreduce_rank", "federated_client",
                           "model_parallel_rank"}
    for name, text in roles.items():
        assert text.count("@ray.remote") == 1, name


def test_roles_and_transports_never_import_who_conducts_them():
    # a role or a transport returns events; it never calls back into the conductor or a topology
    conducting = ("distdqn.runtime.conductor", "distdqn.runtime.parameter_server", "distdqn.topologies")
    for path in modules_under("runtime/roles") + modules_under("runtime/updates") + [PACKAGE / "runtime" / "group.py"]:
        assert not uses(path, conducting), (path.name, uses(path, conducting))


def test_the_conductor_knows_no_topology_role_or_transport():
    # adding a topology, a role or a transport never touches the conductor
    specific = ("distdqn.runtime.roles", "distdqn.runtime.updates", "distdqn.runtime.parameter_server",
                "distdqn.runtime.group", "distdqn.topologies")
    assert not uses(PACKAGE / "runtime" / "conductor.py", specific)


def test_only_runtime_and_topologies_import_ray():
    # tuning/ (distdqn tune) drives Ray Tune, above everything else, as compare/ drives runs
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if rel[0] in ("runtime", "topologies", "tuning"):
            continue
        assert not uses(path, ("ray",)), path


def test_only_the_cli_runs_searches():
    # a search drives runs as a user would: nothing a run is made of imports it
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] not in ("tuning", "cli.py"):
            assert not uses(path, ("distdqn.tuning",)), path


def test_nothing_below_cli_imports_it():
    for path in PACKAGE.rglob("*.py"):
        if path.name != "cli.py":
            assert not uses(path, ("distdqn.cli",)), path


def test_the_scan_sees_imports():
    # the checker itself must find what is there, or the tests above prove nothing
    assert "torch" in imported_modules(PACKAGE / "core" / "learner.py")
    assert "distdqn.envs" in imported_modules(PACKAGE / "local" / "build.py")
    assert "ray" in imported_modules(PACKAGE / "runtime" / "roles" / "learner.py")
    assert "distdqn.runtime.conductor" in imported_modules(PACKAGE / "runtime" / "parameter_server.py")
    assert modules_under("runtime/updates") and modules_under("runtime/roles")
