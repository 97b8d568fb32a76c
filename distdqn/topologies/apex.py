"""apex: distributed prioritized experience replay (Horgan et al. 2018, "Distributed Prioritized
Experience Replay", ICLR).

    ExperienceActor 0 ---+   n-step transitions + initial priorities, one insert     +----------------+
    ExperienceActor 1 ---+-- in flight per actor; each answer carries the newest --> | replay         |
          ...            |   published weights (reference into the object store)    | (rate-limited) |
    ExperienceActor N-1 -+                                                          |  ^   |         |
                                                                                    |  |   v batches |
                                                                                    | LearnerWorker  |
                                                                                    +----------------+
    The replay lives in the learner's process (apex.replay_host=learner: sampling and priority
    updates are calls within the process, inserts run on threads beside the updates) or in a
    ReplayServer process of its own (replay_host=process).

    The learner's training thread has a core of its own on its node (apex.isolate_learner): the
    run's other processes and threads there keep off it (runtime/affinity.py).

    The driver (this function) only conducts: it keeps apex.calls_in_flight calls queued for every
    actor and for the learner, evaluates on a thread, logs, checkpoints, and restarts actors that
    die. Each of the num_actors * num_envs sub-environments explores with its own fixed
    epsilon_i = 0.4^(1 + 7 i / (count - 1)).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from distdqn.config import Config
from distdqn.core.schedules import per_actor_epsilons
from distdqn.envs import EnvInfo
from distdqn.errors import UserError
from distdqn.runtime import affinity
from distdqn.runtime import components as build
from distdqn.runtime.cluster import connect, require_resources
from distdqn.runtime.session import RunResult, RunSession, seed_everything, set_rng_state
from distdqn.runtime.workers import (
    ExperienceActor,
    LearnerWorker,
    ReplayServer,
    blocks_per_insert,
    keep_driver_off,
    process_identity,
)


class RunAborted(UserError):
    """A process the run cannot do without (learner, replay) died or stalled."""


def run(cfg: Config, run_dir: Path, info: EnvInfo, resume: dict[str, Any] | None = None) -> RunResult:
    a = cfg.apex
    seed_everything(cfg.seed)
    session = RunSession(cfg, run_dir, info)
    separate_replay = a.replay_host == "process"
    replay_cpus = a.replay_cpus if separate_replay else 0.0
    cpus = replay_cpus + a.learner_cpus + a.num_actors * a.actor_cpus
    cluster = connect(cfg.cluster.address, num_cpus=math.ceil(cpus), timeout_s=cfg.cluster.connect_timeout_s)
    driver_cpus = None   # the driver's CPUs before it kept off the learner's (restored at the end)
    try:
        require_resources(cpus, a.learner_gpus,
                          f"apex (replay {replay_cpus:g} + learner {a.learner_cpus:g} + "
                          f"{a.num_actors} actors x {a.actor_cpus:g} CPUs)")
        # ---- build: the replay (in the learner's process, or its own), learner, actors (spread) ----
        server = (ReplayServer.options(num_cpus=replay_cpus).remote(cfg, info, cfg.seed + 1)
                  if separate_replay else None)
        learner = LearnerWorker.options(num_cpus=a.learner_cpus, num_gpus=a.learner_gpus).remote(
            cfg, info, server, cfg.seed + 2)
        replay = server if separate_replay else learner   # where actors insert and the replay's state lives
        # the learner takes cores of its own on its node; the run's other processes there keep off
        # them (runtime/affinity.py): actors and the server resolve this reference themselves
        isolation_ref = learner.isolate.remote(math.ceil(a.learner_cpus)) if a.isolate_learner else None
        if server is not None:
            server.keep_off.remote(isolation_ref)
        epsilons = per_actor_epsilons(a.num_actors * cfg.env.num_envs, a.base_epsilon, a.epsilon_alpha)
        epsilons = epsilons.reshape(a.num_actors, cfg.env.num_envs)
        restarts = 0

        def start_actor(index: int, generation: int):
            seed = cfg.seed + 1000 * (index + 1) + 7919 * generation
            return ExperienceActor.options(num_cpus=a.actor_cpus, scheduling_strategy="SPREAD").remote(
                cfg, info, replay, epsilons[index], seed, isolation_ref)

        actors = [start_actor(i, 0) for i in range(a.num_actors)]
        isolation = ray.get(isolation_ref, timeout=a.stall_timeout_s) if isolation_ref is not None else None
        driver_cpus = keep_driver_off(isolation, cluster.started_here)
        env_steps, updates = 0, 0

        def record_processes() -> None:
            """processes.json: which process plays which role, and where (for users and tests)."""
            roles = {"learner": learner, "replay": replay, **{f"actor{i}": x for i, x in enumerate(actors)}}
            # with replay_host=learner, "replay" and "learner" are the same process
            refs = {name: handle.identity.remote() for name, handle in roles.items()}
            identities.update({name: _get_or_none(ref) for name, ref in refs.items()})
            identities["driver"] = process_identity()
            session.write_json("processes.json", identities)

        # ---- resume: learner and replay from the checkpoint (actors start fresh episodes) ----
        if resume is not None:
            ray.get([learner.load_state_dict.remote(resume["learner"]),
                     replay.load_replay_state.remote(resume["replay"])] if "replay" in resume
                    else [learner.load_state_dict.remote(resume["learner"])], timeout=a.stall_timeout_s)
            session.load_state_dict(resume["session"])
            env_steps = resume["counters"]["env_steps"]
            updates = resume["counters"]["learner_updates"]
            restarts = resume["counters"].get("actor_restarts", 0)
            set_rng_state(resume["rng"])
        version, weights_box = ray.get(learner.weights.remote(), timeout=a.stall_timeout_s)
        policy = build.build_policy(cfg, info, ray.get(weights_box[0], timeout=a.stall_timeout_s))
        nodes: dict[str, int] = {}
        identities: dict[str, Any] = {}

        def components() -> dict[str, Any]:
            learner_state, replay_state = ray.get([learner.state_dict.remote(), replay.replay_state.remote()],
                                                  timeout=a.stall_timeout_s)
            state = {"learner": learner_state,
                     "counters": {"env_steps": env_steps, "learner_updates": updates, "actor_restarts": restarts}}
            if cfg.checkpoint.save_replay:
                state["replay"] = replay_state
            return state

        # ---- loop: keep every actor and the learner busy; conduct between their calls ----
        session.open(env_steps, updates)
        session.restore_stats()
        record_processes()
        # each role has calls_in_flight calls queued, so it never idles waiting for the driver; an
        # actor's calls carry its generation (restarts), so a dead actor's other calls are ignored
        in_flight: dict[Any, tuple[str, int, int]] = {}
        blocks_per_call = max(a.blocks_per_call, blocks_per_insert(cfg))   # at least one insert per call
        generations = [0] * a.num_actors

        def submit(role: str, index: int) -> None:
            if role == "actor":
                ref = actors[index].collect.remote(version, weights_box, blocks_per_call)
            else:
                ref = learner.train.remote(a.updates_per_call, env_steps)
            in_flight[ref] = (role, index, generations[index] if role == "actor" else 0)

        for _ in range(a.calls_in_flight):
            for i in range(a.num_actors):
                submit("actor", i)
            submit("learner", 0)
        actor_lags = np.zeros(a.num_actors)   # each actor's last reported weight lag (learner updates)
        learner_busy_s, learner_step_s = 0.0, 0.0
        last_progress = time.perf_counter()
        interrupted = False
        try:
            while env_steps < cfg.train.total_env_steps:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                if not ready:
                    if time.perf_counter() - last_progress > a.stall_timeout_s:
                        raise RunAborted(f"apex: no actor or learner call finished in {a.stall_timeout_s:.0f} s")
                    continue
                last_progress = time.perf_counter()
                ref = ready[0]
                role, index, generation = in_flight.pop(ref)
                if role == "actor":
                    if generation != generations[index]:
                        continue   # a call to an actor that died and was replaced
                    try:
                        out = ray.get(ref)
                    except RayActorError as exc:
                        # an actor died: start a new one in its place, the run goes on
                        restarts += 1
                        generations[index] += 1
                        ray.kill(actors[index], no_restart=True)
                        actors[index] = start_actor(index, restarts)
                        session.note(f"actor {index} died and was restarted ({type(exc).__name__})")
                        record_processes()
                        for _ in range(a.calls_in_flight - 1):
                            submit("actor", index)
                        out = None
                    except RayError as exc:   # the actor is alive but its call failed: its replay died, or a bug
                        if _get_or_none(replay.identity.remote()) is None:
                            raise RunAborted(f"apex: the {'replay' if separate_replay else 'learner'} died "
                                             f"({_first_line(exc)}); the last checkpoint is intact") from None
                        raise RunAborted(f"apex: actor {index} failed ({_first_line(exc)})") from None
                    if out is not None:
                        env_steps += out["env_steps"]
                        if out["weight_lag"] is not None:
                            actor_lags[index] = out["weight_lag"]
                        session.stats.add_episodes(out["episode_returns"], out["episode_lengths"])
                    submit("actor", index)
                else:
                    try:
                        out = ray.get(ref)
                    except RayError as exc:
                        raise RunAborted(f"apex: the learner or replay failed ({_first_line(exc)}); "
                                         f"the last checkpoint is intact") from None
                    updates = out["learner_updates"]
                    learner_busy_s += out["busy_s"]
                    learner_step_s += out["step_s"]
                    if out["updates"]:
                        session.stats.add_update({k: v / out["updates"] for k, v in out["sums"].items()})
                    if "weights" in out and out["weights"][0] > version:
                        version, weights_box = out["weights"]
                    submit("learner", 0)

                # evaluation runs on a thread: the learner and the actors keep their queued calls meanwhile
                if session.due_for_evaluation(env_steps) and not session.evaluating:
                    policy.set_weights(ray.get(weights_box[0], timeout=a.stall_timeout_s))
                    session.start_evaluation(policy, env_steps)
                if session.poll_evaluation():
                    break
                if session.due_for_log(env_steps):
                    replay_stats = ray.get(replay.replay_stats.remote(), timeout=a.stall_timeout_s)
                    session.log_if_due(env_steps, updates, actor_restarts=restarts,
                                       weight_lag_updates=float(actor_lags.mean()),
                                       learner_busy_s=learner_busy_s,
                                       learner_step_s=learner_step_s, **replay_stats)
                session.checkpoint_if_due(env_steps, components)
        except KeyboardInterrupt:
            interrupted = True

        # ---- tear down: final weights, evaluation, checkpoint, summary ----
        # The learner's queued calls are let finish (bounded), never cancelled: Ray's ordered queue
        # of an actor with concurrency groups would wait 30 s for a cancelled call's sequence number.
        learner_calls = [ref for ref, (role, _, _) in in_flight.items() if role == "learner"]
        ray.wait(learner_calls, num_returns=len(learner_calls), timeout=a.stall_timeout_s)
        for actor in actors:
            ray.kill(actor, no_restart=True)
        session.poll_evaluation(wait=True)   # the policy is the evaluation thread's until it ends
        version, weights_box = ray.get(learner.weights.remote(), timeout=a.stall_timeout_s)
        policy.set_weights(ray.get(weights_box[0], timeout=a.stall_timeout_s))
        for name, ident in identities.items():
            if name.startswith("actor") and ident is not None:
                nodes[ident["node_id"]] = nodes.get(ident["node_id"], 0) + 1
        return session.finish(policy, env_steps, updates, components(), interrupted,
                               actor_restarts=restarts, num_actors=a.num_actors,
                               cluster_nodes=cluster.num_nodes, actor_nodes=nodes)
    finally:
        session.close()
        cluster.shutdown()
        if driver_cpus is not None:
            affinity.pin(driver_cpus)


def _get_or_none(ref) -> Any:
    try:
        return ray.get(ref, timeout=30)
    except (RayActorError, GetTimeoutError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__
