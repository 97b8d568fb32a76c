"""Pixels: Atari's one preprocessing checked on real ALE frames, MinAtar out of the box, and the
one-line errors for pixel input that cannot work."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from distdqn.config import load_config
from distdqn.envs import env_info, make_vector_env
from tests.helpers import REPO, run_cli
from tests.test_cli_errors import assert_user_error

ale_py = pytest.importorskip("ale_py")
pytest.importorskip("minatar")

NOOP, FIRE = 0, 1


def atari(*overrides: str, game: str = "Breakout"):
    return load_config(None, [f"env.id=ALE/{game}-v5", *overrides]).env


def gymnasium_reference(game: str, seed: int) -> gym.Env:
    """Gymnasium's Python wrappers, set to the same conventions (no noop, no sticky actions)."""
    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=0, frame_skip=4, screen_size=84, grayscale_obs=True)
    env = gym.wrappers.FrameStackObservation(env, 4, padding_type="zero")
    env.reset(seed=seed)
    return env


def test_the_cpp_vector_env_gives_the_python_wrappers_observations():
    """Same seed, same actions: ale-py's C++ AtariVectorEnv (the one path distdqn steps) and
    Gymnasium's AtariPreprocessing + FrameStackObservation (frame skip 4, max over the last two
    frames, 84x84 grayscale, 4 stacked) give identical observations, rewards and episode ends."""
    cfg = atari("env.atari.noop_max=0", "env.atari.repeat_action_probability=0.0")
    vector = make_vector_env(cfg, 1, evaluation=True)
    obs, _ = vector.reset(seed=5)
    reference = gymnasium_reference("Breakout", 5)
    first, _ = reference.reset(seed=5)
    np.testing.assert_array_equal(obs[0], first)
    rng = np.random.default_rng(0)
    ended = 0
    for step in range(400):
        action = int(rng.integers(0, 4))
        obs, reward, terminated, truncated, _ = vector.step(np.array([action]))
        expected, expected_reward, expected_terminated, expected_truncated, _ = reference.step(action)
        np.testing.assert_array_equal(obs[0], expected, err_msg=f"step {step}")
        assert (reward[0], terminated[0], truncated[0]) == (expected_reward, expected_terminated, expected_truncated)
        if terminated[0] or truncated[0]:
            ended += 1
            break
    assert ended == 1     # a whole game was compared, to its end
    vector.close()


def test_observations_are_four_stacked_84x84_grayscale_frames_four_emulator_frames_a_step():
    env = make_vector_env(atari(), 2)
    obs, info = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    start = info["episode_frame_number"].copy()
    obs, *_, info = env.step(np.array([NOOP, NOOP]))
    np.testing.assert_array_equal(info["episode_frame_number"] - start, [4, 4])
    np.testing.assert_array_equal(obs[:, :3], obs[:, :3])  # the stack shifts by one frame a step
    before = obs.copy()
    obs, *_ = env.step(np.array([NOOP, NOOP]))
    np.testing.assert_array_equal(obs[:, :3], before[:, 1:])
    env.close()


def test_noop_reset_starts_episodes_after_up_to_30_noops():
    frames = []
    for noop_max in (0, 30):
        env = make_vector_env(atari(f"env.atari.noop_max={noop_max}"), 8)
        _, info = env.reset(seed=0)
        frames.append(info["episode_frame_number"])
        env.close()
    assert (frames[0] == frames[0][0]).all()                         # no noops: every env alike
    assert len(set(frames[1].tolist())) > 3                         # noops: starts spread out
    assert frames[1].max() - frames[0][0] <= 30 * 4


def play(env, actions_of_step, steps: int):
    rewards, lives_at_end = [], []
    env.reset(seed=0)
    for t in range(steps):
        _, reward, terminated, _, info = env.step(actions_of_step(t))
        rewards.append(reward)
        lives_at_end.extend(info["lives"][terminated].tolist())
    return np.concatenate(rewards), lives_at_end


def test_life_loss_ends_training_episodes_only_and_the_game_goes_on():
    fire = lambda t: np.full(2, FIRE)
    _, training = play(make_vector_env(atari(), 2), fire, 150)
    _, evaluation = play(make_vector_env(atari(), 2, evaluation=True), fire, 150)
    assert training and max(training) > 0      # terminated with lives left: a lost life
    assert all(lives == 0 for lives in evaluation)  # evaluation: only a game over


def test_rewards_are_clipped_for_training_only():
    rng = np.random.default_rng(0)
    random = lambda t: rng.integers(0, 6, size=4)
    training, _ = play(make_vector_env(atari(game="SpaceInvaders"), 4), random, 200)
    evaluation, _ = play(make_vector_env(atari(game="SpaceInvaders"), 4, evaluation=True), random, 200)
    assert set(np.unique(training)) <= {0.0, 1.0} and training.sum() > 0
    assert evaluation.max() >= 5                                    # SpaceInvaders' aliens: 5 to 30


def test_episodes_are_truncated_at_the_frame_cap():
    assert load_config(None).env.atari.max_episode_frames == 108_000
    env = make_vector_env(atari("env.atari.max_episode_frames=200", "env.atari.noop_max=0",
                                "env.atari.terminal_on_life_loss=false", game="Pong"), 1)
    env.reset(seed=0)
    for step in range(60):
        _, _, terminated, truncated, info = env.step(np.array([NOOP]))
        if truncated[0]:
            break
    assert truncated[0] and not terminated[0] and step == 200 // 4 - 1, (step, info)


def test_sticky_actions_are_configurable():
    """With repeat probability 1 the emulator keeps repeating the first action (NOOP): pressing
    FIRE then changes nothing."""
    def frames(action: int) -> np.ndarray:
        env = make_vector_env(atari("env.atari.repeat_action_probability=1.0", "env.atari.noop_max=0"), 1)
        env.reset(seed=0)
        out = [env.step(np.array([action]))[0] for _ in range(40)]
        env.close()
        return np.stack(out)
    np.testing.assert_array_equal(frames(FIRE), frames(NOOP))
    assert load_config(None).env.atari.repeat_action_probability == 0.25   # v5's default


def test_minatar_ids_work_out_of_the_box():
    info = env_info(load_config(None, ["env.id=MinAtar/Breakout-v1"]).env)
    assert (info.obs_shape, info.obs_dtype, info.num_actions) == ((10, 10, 4), np.dtype(bool), 3)
    env = make_vector_env(load_config(None, ["env.id=MinAtar/SpaceInvaders-v1"]).env, 2)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 10, 10, 6)
    env.close()


@pytest.mark.parametrize(("overrides", "fragments"), [
    (["env.id=MinAtar/Pacman-v1"], ["env.id", "MinAtar/Pacman-v1"]),
    (["env.id=MinAtar/Breakout-v1", "network.kind=nature_cnn"], ["network.kind", "nature_cnn", "(10, 10, 4)"]),
    (["env.id=CartPole-v1", "network.kind=minatar_cnn"], ["network.kind", "minatar_cnn", "(4,)"]),
    (["env.id=ALE/Pong-v5", "network.kind=minatar_cnn"], ["network.kind", "minatar_cnn", "(4, 84, 84)"]),
    (["env.id=ALE/Pong-v5", "env.vectorization=sync"], ["env.vectorization", "AtariVectorEnv"]),
    (["env.id=ALE/Pong-v5", "env.kwargs={frameskip: 2}"], ["env.kwargs", "frameskip", "env.atari"]),
    (["env.id=ALE/Pong-v5", "env.atari.frame_skip=0"], ["env.atari.frame_skip"]),
])
def test_bad_pixel_input_is_one_line_naming_the_field(tmp_path, overrides, fragments):
    args = [a for o in overrides for a in ("--set", o)]
    assert_user_error(run_cli(["train", "--run-dir", str(tmp_path / "run"), *args], timeout=60), *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("env_id", "extra", "package"), [
    ("ALE/Pong-v5", "distdqn[atari]", "ale_py"), ("MinAtar/Breakout-v1", "distdqn[minatar]", "minatar")])
def test_a_pixel_id_without_its_package_names_the_extra(tmp_path, env_id, extra, package):
    # the package hidden from the interpreter (sys.modules entry None: importing it fails)
    script = (f"import sys; sys.modules[{package!r}] = None; from distdqn.cli import main; "
              f"sys.argv = ['distdqn', 'train', '--set', 'env.id={env_id}', '--run-dir', {str(tmp_path / 'r')!r}]; main()")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=str(tmp_path), env=env, check=False)
    assert_user_error(result, "env.id", env_id, extra)


def test_an_atari_run_goes_end_to_end(tmp_path):
    """Pong through the whole pipeline (not learning): collect, frames stored once, CNN updates,
    an unclipped evaluation of whole (capped) games, a checkpoint with the replay's frames."""
    run_dir = tmp_path / "run"
    result = run_cli(["train", "atari-pong", "--run-dir", str(run_dir),
                      "--set", "train.total_env_steps=800", "--set", "train.learning_starts=400",
                      "--set", "replay.capacity=2000", "--set", "eval.interval_env_steps=800",
                      "--set", "env.atari.max_episode_frames=1000", "--set", "learner.device=cpu",
                      "--set", "checkpoint.save_replay=true", "--set", "log.progress=false",
                      "--set", "train.torch_threads=1"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] >= 800 and summary["learner_updates"] >= 90
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_return_mean" in row for row in rows)
    assert list((run_dir / "checkpoints").glob("*/replay*.pt")) or list((run_dir / "checkpoints").glob("*/*.pt"))
