"""Observation storage for the replay: whole observations, or each distinct frame once.

A replay keeps, for every transition, the observation it started from and the one it bootstraps
from. For stacked pixel frames ([C, H, W] uint8, Atari's [4, 84, 84]) that is 2C frames per
transition, while an env step adds one new frame: ``FrameStorage`` keeps each distinct frame once
and, per transition, the 2C slots its two stacks are made of; a sampled batch gathers them back.

Frames are found by content: a frame's 64-bit hash points to the slot holding it, and every hit
is checked byte for byte (a hash collision only costs a slot). Nothing has to know where episodes
begin or end, how n-step windows were cut, or which actor wrote what: a stack rebuilt is, byte
for byte, the stack the env returned. Each slot counts the transitions that use it and is reused
once none does.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class FullStorage:
    """obs and next_obs of every transition, as written."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype):
        self.obs_shape = tuple(obs_shape)
        self._obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self._next_obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)

    def write(self, positions: np.ndarray, obs: np.ndarray, next_obs: np.ndarray) -> None:
        self._obs[positions] = obs
        self._next_obs[positions] = next_obs

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._obs[indices], self._next_obs[indices]

    def nbytes(self) -> int:
        return self._obs.nbytes + self._next_obs.nbytes

    def state_dict(self, size: int) -> dict[str, Any]:
        return {"obs": self._obs[:size].copy(), "next_obs": self._next_obs[:size].copy()}

    def load_state_dict(self, state: dict[str, Any], size: int) -> None:
        if "obs" not in state:
            raise ValueError("replay saved with replay.storage frames, loaded with full")
        if tuple(state["obs"].shape[1:]) != self.obs_shape:
            raise ValueError(f"replay observation shape {state['obs'].shape[1:]} != {self.obs_shape}")
        self._obs[:size], self._next_obs[:size] = state["obs"], state["next_obs"]


class FrameStorage:
    """Stacked frames [C, H, W] stored once per distinct frame (see the module docstring)."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, seed: int = 0):
        if len(obs_shape) != 3:
            raise ValueError(f"replay.storage: frames needs stacked frames [C, H, W], not {tuple(obs_shape)}")
        self.obs_shape = tuple(obs_shape)
        self.stack = obs_shape[0]
        self.frame_shape = tuple(obs_shape[1:])
        self.dtype = np.dtype(obs_dtype)
        frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self._words = -(-frame_bytes // 8)             # the frame hashed as 64-bit words
        rng = np.random.default_rng(seed)
        self._multipliers = rng.integers(0, 2**63, size=self._words, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        # transition i is made of frames refs[i, :C] (obs) and refs[i, C:] (next_obs)
        self._refs = np.zeros((capacity, 2 * self.stack), dtype=np.int32)
        self._live = np.zeros(capacity, dtype=bool)     # positions holding a transition
        # an env step adds one frame per transition, an episode a few more: the pool starts at
        # capacity + 1/8 and grows by half when full (np.zeros: pages are touched only when used)
        self._pool = 0
        self._grow(capacity + capacity // 8 + 4 * self.stack)
        self._free: list[int] = []                     # slots released, reused first (LIFO)
        self._high_water = 0                            # slots ever handed out
        self._slot_of: dict[int, int] = {}              # hash -> the slot registered for it

    # ---- slots ----
    def _grow(self, pool: int) -> None:
        old = self._pool
        frames = np.zeros((pool, *self.frame_shape), dtype=self.dtype)
        refcount = np.zeros(pool, dtype=np.int32)
        hashes = np.zeros(pool, dtype=np.uint64)
        if old:
            frames[:old], refcount[:old], hashes[:old] = self._frames, self._refcount, self._hash
        self._frames, self._refcount, self._hash, self._pool = frames, refcount, hashes, pool

    def _allocate(self) -> int:
        if self._free:
            return self._free.pop()
        if self._high_water == self._pool:
            self._grow(self._pool + self._pool // 2)
        self._high_water += 1
        return self._high_water - 1

    def _hashes(self, frames: np.ndarray) -> np.ndarray:
        """A 64-bit hash of each frame: its bytes as words, summed with odd random multipliers
        (mod 2^64). Odd multipliers are invertible, so frames differing in one word never collide."""
        flat = frames.reshape(len(frames), -1).view(np.uint8)
        pad = self._words * 8 - flat.shape[1]
        if pad:
            flat = np.pad(flat, ((0, 0), (0, pad)))
        return np.ascontiguousarray(flat).view(np.uint64) @ self._multipliers

    def _slots_for(self, frames: np.ndarray) -> np.ndarray:
        """The slot of each frame, storing those not held yet (no reference counted here)."""
        hashes = self._hashes(frames)
        unique_hashes, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        slots = np.empty(len(unique_hashes), dtype=np.int64)
        for u, h in enumerate(unique_hashes.tolist()):
            slot = self._slot_of.get(h)
            if slot is None:
                slot = self._slot_of[h] = self._allocate()
                self._hash[slot] = h
                self._frames[slot] = frames[first[u]]
            slots[u] = slot
        found = slots[inverse]
        # every frame is checked against the frame in its slot: a hash collision (within the batch
        # or with a stored frame) gets a slot of its own, not registered under the hash
        differs = np.flatnonzero((self._frames[found] != frames).reshape(len(frames), -1).any(axis=1))
        for i in differs.tolist():
            found[i] = self._allocate()
            self._hash[found[i]] = 0
            self._frames[found[i]] = frames[i]
        return found

    def _release(self, slots: np.ndarray) -> None:
        np.subtract.at(self._refcount, slots, 1)
        for slot in np.unique(slots[self._refcount[slots] == 0]).tolist():
            h = int(self._hash[slot])
            if self._slot_of.get(h) == slot:
                del self._slot_of[h]
            self._free.append(slot)

    # ---- the storage interface ----
    def write(self, positions: np.ndarray, obs: np.ndarray, next_obs: np.ndarray) -> None:
        n, c = len(positions), self.stack
        frames = np.concatenate([obs, next_obs], axis=1).reshape(n * 2 * c, *self.frame_shape)
        refs = self._slots_for(frames).reshape(n, 2 * c)
        np.add.at(self._refcount, refs.reshape(-1), 1)       # new references first: a frame both
        replaced = positions[self._live[positions]]          # dropped and written stays stored
        if len(replaced):
            self._release(self._refs[replaced].reshape(-1))
        self._refs[positions] = refs
        self._live[positions] = True

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        refs = self._refs[indices]
        return self._frames[refs[:, :self.stack]], self._frames[refs[:, self.stack:]]

    @property
    def frames_stored(self) -> int:
        return self._high_water - len(self._free)

    def nbytes(self) -> int:
        """Bytes of the frames in use (slots ever handed out) and of the per-transition arrays."""
        per_slot = self._frames[0].nbytes + self._refcount.itemsize + self._hash.itemsize
        return self._high_water * per_slot + self._refs.nbytes + self._live.nbytes

    # ---- checkpointing: the frames in use, compacted, and each transition's references ----
    def state_dict(self, size: int) -> dict[str, Any]:
        refs = self._refs[:size]
        used, compact = np.unique(refs, return_inverse=True)
        return {"frames": self._frames[used].copy(), "frame_refs": compact.reshape(refs.shape).astype(np.int32)}

    def load_state_dict(self, state: dict[str, Any], size: int) -> None:
        if "frames" not in state:
            raise ValueError("replay saved with replay.storage full, loaded with frames")
        frames = np.asarray(state["frames"])
        if tuple(frames.shape[1:]) != self.frame_shape:
            raise ValueError(f"replay frame shape {frames.shape[1:]} != {self.frame_shape}")
        if len(frames) > self._pool:
            self._grow(len(frames))
        self._frames[:len(frames)] = frames
        self._refcount[:] = 0
        self._hash[:len(frames)] = self._hashes(frames)
        self._slot_of = {}
        for slot, h in enumerate(self._hash[:len(frames)].tolist()):
            self._slot_of.setdefault(h, slot)
        self._high_water, self._free = len(frames), []
        self._refs[:size] = state["frame_refs"]
        self._live[:] = False
        self._live[:size] = True
        np.add.at(self._refcount, self._refs[:size].reshape(-1), 1)
