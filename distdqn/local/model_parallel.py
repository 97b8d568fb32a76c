"""One learner on P ranks (``learner.model_parallel``): the ranks' group, rank 0 as the learner the
rest of the system sees, the other ranks' loop, and ``single``'s ranks as local processes. No Ray:
apex's ranks are Ray actors (runtime/roles/model_parallel_rank.py) that run the same loop.

    rank 0: ModelParallelLearner (a Learner's calls)           rank r = 1 .. P-1: follow()
      announce(command) ------ command group ----------------->  next command (no deadline: rank 0 may idle)
      the batch, the state --- data group -------------------->  ...
      ShardedLearner.step  <== all-reduces, data group ==>       ShardedLearner.step
                               (learner.model_parallel_timeout_s)

Every rank runs the same ``ShardedLearner`` call on the same data (core/tensor_parallel.py); rank
0 answers for all of them. The command group waits without a deadline, because rank 0 may idle
(collecting, evaluating, writing a checkpoint) as long as it likes, while rank 0's announcement and
everything a command then exchanges fail within the timeout when a rank has died or stalled: rank
0 then ends the run with one line (``ModelParallelError``).

``single`` starts its P - 1 other ranks as local processes (``split_locally``, the spawn method):
it is a one-process topology with no Ray, and the ranks need nothing from Ray (no object store,
no scheduling across nodes), only a process each and a rendezvous on this machine's loopback.
"""

from __future__ import annotations

import datetime
import multiprocessing
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from distdqn.config import Config
from distdqn.core.finite import NonFiniteStreak
from distdqn.core.learner import DQNLearner, StepResult, resolve_device
from distdqn.core.tensor_parallel import Collective, ShardedLearner
from distdqn.core.transitions import Batch
from distdqn.envs import EnvInfo
from distdqn.errors import UserError
from distdqn.local import build, rendezvous

# what rank 0 announces (the second number of the header is the command's argument)
STEP, WEIGHTS, TARGET_WEIGHTS, SET_WEIGHTS, STATE, LOAD_STATE, STOP = range(7)
_NO_DEADLINE = datetime.timedelta(days=7)


class ModelParallelError(UserError):
    """A rank of the learner died or stalled: the run cannot go on (the last checkpoint is intact)."""


def join_group(address: str, port: int, rank: int, cfg: Config,
               listener: socket.socket | None = None) -> tuple[Collective, Any]:
    """Form (or join) the learner's ranks' group at ``address:port`` (the loopback: the ranks
    share one node), rank 0 hosting the store on ``listener`` (local/rendezvous.py): gloo on
    CPU, nccl on CUDA. Returns the data group (collective timeout
    ``learner.model_parallel_timeout_s``) and the command group (no deadline, gloo)."""
    device = resolve_device(cfg.learner.device)
    rendezvous.init_group("nccl" if device.type == "cuda" else "gloo", address, port, rank,
                          cfg.learner.model_parallel, cfg.learner.model_parallel_timeout_s, listener)
    commands = dist.new_group(backend="gloo", timeout=_NO_DEADLINE)
    return Collective(dist.group.WORLD, rank, cfg.learner.model_parallel, device), commands


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class BatchCodec:
    """A batch as one byte buffer (one broadcast): obs, action, reward, next_obs, terminated,
    discount, weights, in fixed dtypes (indices stay with rank 0)."""

    def __init__(self, obs_shape: tuple[int, ...], obs_dtype: np.dtype):
        self.fields = [("obs", obs_dtype, obs_shape), ("action", np.int64, ()), ("reward", np.float32, ()),
                       ("next_obs", obs_dtype, obs_shape), ("terminated", np.bool_, ()),
                       ("discount", np.float32, ()), ("weights", np.float32, ())]

    def nbytes(self, size: int) -> int:
        return sum(size * int(np.prod(shape)) * np.dtype(dtype).itemsize for _, dtype, shape in self.fields)

    def encode(self, batch: Batch) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([
            np.ascontiguousarray(getattr(batch, name), dtype=dtype).view(np.uint8).reshape(-1)
            for name, dtype, _ in self.fields]))

    def decode(self, payload: torch.Tensor, size: int, indices: np.ndarray | None = None) -> Batch:
        buffer, arrays, offset = payload.cpu().numpy(), {}, 0
        for name, dtype, shape in self.fields:
            count = size * int(np.prod(shape))
            arrays[name] = np.frombuffer(buffer, dtype, count, offset).reshape(size, *shape)
            offset += count * np.dtype(dtype).itemsize
        return Batch(**arrays, indices=indices)


class Channel:
    """Rank 0's commands and their data, as the other ranks receive them."""

    def __init__(self, comm: Collective, commands: Any, codec: BatchCodec, timeout_s: float):
        self.comm, self.commands, self.codec = comm, commands, codec
        self.timeout = datetime.timedelta(seconds=timeout_s)

    def announce(self, command: int, argument: int = 0) -> None:
        """Rank 0 waits for a rank that has stopped reading only as long as the data group's
        timeout (the others wait for commands without one)."""
        options = dist.BroadcastOptions()
        options.rootRank, options.timeout = 0, self.timeout
        self.commands.broadcast([torch.tensor([command, argument], dtype=torch.int64)], options).wait()

    def next_command(self) -> tuple[int, int]:
        header = torch.zeros(2, dtype=torch.int64)
        dist.broadcast(header, src=0, group=self.commands)
        return int(header[0]), int(header[1])

    def batch(self, batch: Batch | None, size: int) -> Batch:
        """Rank 0 sends ``batch``; every rank returns the same decoded batch (rank 0 too, so that
        all ranks compute on identical inputs)."""
        if self.comm.rank == 0:
            payload = self.codec.encode(batch).to(self.comm.device)
        else:
            payload = torch.empty(self.codec.nbytes(size), dtype=torch.uint8, device=self.comm.device)
        dist.broadcast(payload, src=0, group=self.comm.group)
        return self.codec.decode(payload, size, batch.indices if batch is not None else None)


def follow(shard: ShardedLearner, channel: Channel) -> None:
    """Rank r > 0: make each call rank 0 announces, until it announces the end."""
    while True:
        command, argument = channel.next_command()
        if command == STEP:
            shard.step(channel.batch(None, argument))
        elif command == WEIGHTS:
            shard.gather_weights()
        elif command == TARGET_WEIGHTS:
            shard.gather_target_weights()
        elif command == SET_WEIGHTS:
            shard.scatter_weights(None, None, with_target=bool(argument))
        elif command == STATE:
            shard.gather_state()
        elif command == LOAD_STATE:
            shard.scatter_state(None)
        elif command == STOP:
            return
        else:
            raise RuntimeError(f"unknown command {command} from rank 0")


def build_shard(cfg: Config, info: EnvInfo, comm: Collective) -> ShardedLearner:
    """This rank's part of the learner ``build.build_learner`` would make (weights come from rank 0)."""
    return ShardedLearner(build.build_network(cfg, info), cfg.learner, comm, build.planned_updates(cfg))


class ModelParallelLearner:
    """Rank 0 of the learner's P ranks: to the rest of the system, one Learner (core/learner.py:
    step, weights, state), each call made by every rank."""

    def __init__(self, shard: ShardedLearner, channel: Channel):
        self.shard, self.channel = shard, channel
        self.cfg, self.device = shard.cfg, shard.device
        self.local_processes: list[multiprocessing.Process] = []   # single's other ranks
        self.failed = False

    @property
    def updates(self) -> int:
        return self.shard.updates

    @property
    def target_version(self) -> int:
        return self.shard.target_version

    @property
    def comm(self) -> Collective:
        return self.shard.comm

    @property
    def non_finite(self) -> NonFiniteStreak:
        """The updates skipped for a NaN or infinity (every rank skips the same ones)."""
        return self.shard.non_finite

    def _all_ranks(self, what: str, command: int, argument: int, call: Callable[[], Any]) -> Any:
        try:
            self.channel.announce(command, argument)
            return call()
        except RuntimeError as exc:   # gloo / nccl: a peer closed its connection, or the timeout passed
            self.failed = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelParallelError(
                f"learner.model_parallel: a rank of {self.comm.world_size} died or stalled during {what} "
                f"({first[:200]}); the run stopped (the last checkpoint is intact)") from None

    def step(self, batch: Batch) -> StepResult:
        return self._all_ranks("an update", STEP, len(batch),
                               lambda: self.shard.step(self.channel.batch(batch, len(batch))))

    def get_weights(self) -> dict[str, np.ndarray]:
        return self._all_ranks("gathering the weights", WEIGHTS, 0, self.shard.gather_weights)

    def get_target_weights(self) -> dict[str, np.ndarray]:
        return self._all_ranks("gathering the target weights", TARGET_WEIGHTS, 0, self.shard.gather_target_weights)

    def set_weights(self, weights: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray] | None = None) -> None:
        self._all_ranks("setting the weights", SET_WEIGHTS, int(target is not None),
                        lambda: self.shard.scatter_weights(weights, target, with_target=target is not None))

    def state_dict(self) -> dict[str, Any]:
        """The unsplit learner's state (loadable by a learner on any number of ranks)."""
        return self._all_ranks("gathering the state", STATE, 0, self.shard.gather_state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._all_ranks("loading the state", LOAD_STATE, 0, lambda: self.shard.scatter_state(state))

    def close(self) -> None:
        """The other ranks leave (local ones end); the group is left."""
        if not self.failed:
            try:
                self.channel.announce(STOP)
            except RuntimeError:
                pass
        leave_group()
        for process in self.local_processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        self.local_processes = []


def lead(full: DQNLearner, cfg: Config, info: EnvInfo, listener: socket.socket) -> ModelParallelLearner:
    """Rank 0: form the group on ``listener`` (``rendezvous.listen``: its address and port are
    where the others join, meanwhile) and hand every rank its part of ``full``'s state (its
    weights, target, Adam moments, counters)."""
    address, port = listener.getsockname()
    try:
        comm, commands = join_group(address, port, 0, cfg, listener)
    except RuntimeError as exc:
        raise ModelParallelError(f"learner.model_parallel: the learner's {cfg.learner.model_parallel} ranks did "
                                 f"not form their group ({str(exc).strip().splitlines()[0][:200]})") from None
    learner = ModelParallelLearner(build_shard(cfg, info, comm), Channel(comm, commands, BatchCodec(
        info.obs_shape, info.obs_dtype), cfg.learner.model_parallel_timeout_s))
    learner.load_state_dict(full.state_dict())
    return learner


def serve(cfg: Config, info: EnvInfo, address: str, port: int, rank: int) -> None:
    """Rank ``rank`` > 0 from start to end: join, take rank 0's state, follow, leave."""
    comm, commands = join_group(address, port, rank, cfg)
    try:
        shard = build_shard(cfg, info, comm)
        follow(shard, Channel(comm, commands, BatchCodec(info.obs_shape, info.obs_dtype),
                             cfg.learner.model_parallel_timeout_s))
    finally:
        leave_group()


def _local_rank(cfg: Config, info: EnvInfo, port: int, rank: int, threads: int) -> None:
    torch.set_num_threads(threads)
    if resolve_device(cfg.learner.device).type == "cuda":
        torch.cuda.set_device(rank)
    try:
        serve(cfg, info, rendezvous.LOOPBACK, port, rank)
    except Exception as exc:  # noqa: BLE001 -- rank 0 reports the failure; this rank ends in one line
        print(f"[distdqn] learner rank {rank}: {type(exc).__name__}: {str(exc).strip()[:200]}",
              file=sys.stderr, flush=True)
        sys.exit(1)


def split_locally(full: DQNLearner, cfg: Config, info: EnvInfo, threads: int) -> ModelParallelLearner:
    """``full`` on ``learner.model_parallel`` ranks: this process (rank 0) and local processes
    started here, ``threads`` torch threads each; they end with the learner's ``close`` (or
    with this process: they are daemons, and lose their connection to rank 0)."""
    listener = rendezvous.listen(rendezvous.LOOPBACK)
    port = listener.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_local_rank, args=(cfg, info, port, rank, threads), daemon=True,
                                 name=f"distdqn-learner-rank{rank}")
                 for rank in range(1, cfg.learner.model_parallel)]
    for process in processes:
        process.start()
    try:
        learner = lead(full, cfg, info, listener)
    except BaseException:
        for process in processes:
            process.terminate()
        raise
    learner.local_processes = processes
    return learner

