"""`distdqn evaluate RUN --video DIR`: one MP4 per episode, for a vector env (CartPole-v1, drawn
by pygame), MinAtar (10 x 10 boards, scaled up) and Atari (the game's screen); each file decodes
(ffmpeg, through imageio-ffmpeg: what the video extra installs) to frames of the env's picture,
one per step of the episode it shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_cli

pytest.importorskip("moviepy", reason="the video extra (pip install 'distdqn[video]')")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

TINY = ["--set", "train.learning_starts=64", "--set", "learner.batch_size=16", "--set", "log.progress=false",
        "--set", "train.torch_threads=1", "--set", "env.num_envs=2", "--set", "replay.capacity=1000"]


def decoded(path: Path) -> tuple[tuple[int, int], int]:
    """((width, height), frames) of an MP4, every frame decoded."""
    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    width, height = meta["size"]
    count = 0
    for frame in frames:
        assert len(frame) == width * height * 3   # a whole RGB frame
        count += 1
    return (width, height), count


def record(run_dir: Path, video_dir: Path, episodes: int) -> tuple[list[Path], str]:
    result = run_cli(["evaluate", str(run_dir), "--episodes", str(episodes), "--video", str(video_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error" not in result.stderr.lower(), result.stderr[-2000:]   # nothing said by pygame / SDL
    assert f"{episodes} videos in {video_dir}" in result.stdout, result.stdout
    return sorted(video_dir.glob("*.mp4")), result.stdout


def test_cartpole_episodes_are_recorded_one_frame_per_step(short_run, tmp_path):
    videos, out = record(short_run, tmp_path / "videos", 2)
    assert [v.name for v in videos] == ["CartPole-v1-episode-0.mp4", "CartPole-v1-episode-1.mp4"]
    mean = float(re.search(r"mean ([\d.]+)", out).group(1))
    sizes, counts = zip(*(decoded(v) for v in videos), strict=True)
    assert set(sizes) == {(600, 400)}
    assert abs(sum(counts) / 2 - mean) <= 1, (counts, mean)   # CartPole's return is its episode's length


def test_minatar_boards_are_recorded_scaled_up(tmp_path):
    pytest.importorskip("minatar")
    run_dir = tmp_path / "run"
    trained = run_cli(["train", "minatar-breakout", "--run-dir", str(run_dir), "--set", "train.total_env_steps=300",
                       "--set", "eval.interval_env_steps=150", *TINY])
    assert trained.returncode == 0, trained.stderr[-3000:]
    videos, _ = record(run_dir, tmp_path / "videos", 2)
    assert len(videos) == 2
    for video in videos:
        size, frames = decoded(video)
        assert size == (70, 70) and frames >= 2, (size, frames)   # 10 x 10 boards, each cell 7 x 7 pixels


@pytest.mark.slow
def test_atari_games_are_recorded_from_the_screen(tmp_path):
    pytest.importorskip("ale_py")
    run_dir = tmp_path / "run"
    trained = run_cli(["train", "atari-pong", "--run-dir", str(run_dir), "--set", "train.total_env_steps=200",
                       "--set", "eval.interval_env_steps=100", "--set", "env.atari.max_episode_frames=400", *TINY])
    assert trained.returncode == 0, trained.stderr[-3000:]
    (video,), _ = record(run_dir, tmp_path / "videos", 1)
    size, frames = decoded(video)
    # the screen, 160 x 210; one frame per agent step (4 emulator frames) of a 400-frame episode
    assert size == (160, 210) and 80 <= frames <= 101, (size, frames)
