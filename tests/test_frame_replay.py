"""The frame-deduplicated replay storage (core/frames.py) against full storage, on real Atari frames.

The stream is the Actor's: n-step transitions (n = 3) from ale-py's vector env, with lives lost
(terminated, the game going on), games over and the frame cap (truncated) inside it; the replay is
small, so it wraps several times. Every stored transition must come back as written.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ale_py")

from distdqn.config import load_config
from distdqn.core.actor import Actor
from distdqn.core.replay import make_replay
from distdqn.envs import make_vector_env

CAPACITY = 500
OBS_SHAPE = (4, 84, 84)


class RandomQ:
    """Q-values drawn at random: a policy that reaches many kinds of steps quickly."""

    def __init__(self, num_actions: int, seed: int):
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.random((len(obs), self.num_actions))


@pytest.fixture(scope="module")
def rollouts():
    """About 1,600 n-step transitions of Breakout in blocks of 16 vector steps (2 envs), with a
    frame cap short enough that episodes are truncated too."""
    cfg = load_config(None, ["env.id=ALE/Breakout-v5", "env.atari.max_episode_frames=400",
                             "env.atari.repeat_action_probability=0.0"])
    env = make_vector_env(cfg.env, 2)
    actor = Actor(env, RandomQ(int(env.single_action_space.n), 0), n_step=3, gamma=0.99, seed=0)
    blocks = [actor.collect(16, 0.0) for _ in range(50)]
    env.close()
    return blocks


def stored(replay) -> dict[str, np.ndarray]:
    batch = replay._gather(np.arange(len(replay)), np.ones(len(replay), np.float32))
    return {k: v for k, v in batch.as_dict().items() if k not in ("indices", "weights")}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=key)


def test_the_stream_has_episode_ends_of_every_kind(rollouts):
    t = [r.transitions for r in rollouts]
    assert sum(len(x) for x in t) > 3 * CAPACITY                    # the ring wraps
    assert any(x.terminated.any() for x in t)                        # lives lost, games over
    assert any(((x.discount > 0.99**3 + 1e-6) & ~x.terminated).any() for x in t)  # truncated


@pytest.mark.parametrize("prioritized", [False, True])
def test_stacks_rebuilt_from_frames_equal_the_stacks_written(rollouts, prioritized):
    frames = make_replay(prioritized, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="frames")
    full = make_replay(prioritized, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="full")
    assert frames.storage == "frames" and full.storage == "full"
    for i, rollout in enumerate(rollouts):
        frames.add(rollout.transitions)
        full.add(rollout.transitions)
        if i % 10 == 9:
            assert_same(stored(frames), stored(full))
    # sampled batches (n-step rewards, discounts, terminals with them) are the same draws too
    a, b = frames.sample(32, beta=0.4), full.sample(32, beta=0.4)
    assert_same(a.as_dict(), b.as_dict())


def test_each_frame_is_stored_about_once(rollouts):
    replay = make_replay(False, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="frames")
    for rollout in rollouts:
        replay.add(rollout.transitions)
    # one new frame per transition, plus a few per episode start and per n-step tail
    assert replay._observations.frames_stored < 1.15 * CAPACITY
    assert replay._observations.nbytes() < 0.2 * (2 * CAPACITY * 4 * 84 * 84)


def test_a_checkpoint_restores_the_frames_and_the_run_goes_on_the_same(rollouts):
    frames = make_replay(True, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="frames")
    full = make_replay(True, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="full")
    for rollout in rollouts[:30]:
        frames.add(rollout.transitions)
        full.add(rollout.transitions)
    state = frames.state_dict()
    assert state["frames"].shape[0] < 1.15 * CAPACITY                # saved compacted, not as stacks
    restored = make_replay(True, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="frames")
    restored.load_state_dict(state)
    assert_same(stored(restored), stored(full))
    for rollout in rollouts[30:]:
        restored.add(rollout.transitions)
        full.add(rollout.transitions)
    assert_same(stored(restored), stored(full))
    with pytest.raises(ValueError, match="replay.storage"):
        make_replay(True, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="full").load_state_dict(state)


def test_hash_collisions_cost_a_slot_never_a_wrong_frame(rollouts):
    """With every hash equal, each frame is still stored and read back byte for byte."""
    replay = make_replay(False, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="frames")
    full = make_replay(False, CAPACITY, OBS_SHAPE, np.uint8, seed=0, storage="full")
    replay._observations._multipliers[:] = 0
    for rollout in rollouts[:15]:
        replay.add(rollout.transitions)
        full.add(rollout.transitions)
    assert_same(stored(replay), stored(full))


def test_auto_storage_is_frames_only_for_stacked_uint8():
    assert make_replay(False, 10, OBS_SHAPE, np.uint8, 0).storage == "frames"
    assert make_replay(False, 10, (10, 10, 4), np.bool_, 0).storage == "full"
    assert make_replay(False, 10, (8,), np.float32, 0).storage == "full"
    with pytest.raises(ValueError, match="replay.storage"):
        make_replay(False, 10, (8,), np.float32, 0, storage="frames")
