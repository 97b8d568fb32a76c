"""A trained agent: the network of a run's checkpoint, called on the environment's observations.

    agent = distdqn.load("runs/CartPole-v1-single-s0-...")     # checkpoints/best, else latest
    obs, _ = agent.make_env().reset(seed=0)
    agent.act(obs)                # the greedy action (one observation, or a batch: an array of them)
    agent.q_values(obs)           # [num_actions] (or [B, num_actions])
    agent.evaluate(episodes=10)   # greedy returns; video_dir=... records them as MP4

``act`` and ``q_values`` take observations as the env gives them (what ``make_env`` returns: the
user's wrappers applied) and store them as the run did (envs.py: ``observation_layout``); the
actions are the env's own (a Discrete space starting at ``start`` is counted from there).
Video: Gymnasium's ``RecordVideo`` (``pip install 'distdqn[video]'``), one MP4 per episode.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from distdqn.checkpoint import BEST, MANIFEST, Checkpoint, open_checkpoint
from distdqn.config import Config, config_from_dict, parse_yaml
from distdqn.core.actor import evaluate as evaluate_policy
from distdqn.core.policy import TorchPolicy
from distdqn.envs import (
    EnvInfo,
    env_info,
    make_env,
    make_vector_env,
    observation_layout,
    stored_batch,
)
from distdqn.errors import CheckpointError, EnvironmentSpecError, UserError
from distdqn.local.build import build_network, resolve_network


def checkpoint_path(path: str | Path, which: str | None = None) -> Path:
    """The checkpoint directory of a run: ``which`` is ``best``, ``latest``, or the name of a
    checkpoint under ``checkpoints/``; None: best if the run has one, else latest. ``path`` may
    also be a checkpoint directory itself (``which`` then None)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        if which is not None:
            raise CheckpointError(f"{path}: is a checkpoint itself; name a run directory to choose {which!r}")
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if which is None:
        which = BEST if (folder / BEST / MANIFEST).is_file() else "latest"
    if which == "latest":
        return open_checkpoint(path).path   # the newest that verifies
    if not (folder / which / MANIFEST).is_file():
        if not path.exists():
            raise CheckpointError(f"{path}: no such run directory or checkpoint")
        why = " (checkpoint.keep_best was off, or the run never evaluated)" if which == BEST else ""
        raise CheckpointError(f"{path}: no checkpoint {which!r}{why}; choose latest")
    return folder / which


def read_checkpoint(path: Path, keys: tuple[str, ...] | None = None) -> tuple[dict[str, Any], Config, dict[str, Any]]:
    """(components, config, manifest) of the checkpoint directory ``path``; ``keys``: only those
    components (``()``: none)."""
    ckpt = open_checkpoint(path)   # verified (sizes, sha256) before anything is read
    manifest = ckpt.manifest
    components = {key: ckpt.load(key) for key in manifest["components"] if keys is None or key in keys}
    try:
        cfg = config_from_dict(parse_yaml(ckpt.config_yaml, "checkpoint config.yaml"), "checkpoint config.yaml")
    except UserError as exc:
        raise CheckpointError(f"{path}: the checkpoint's config.yaml is invalid: {exc}") from None
    return components, cfg, manifest


NETWORK_COMPONENTS = ("policy", "learner")
"""Where a checkpoint keeps the online network: ``best`` in ``policy``, every other one in its
``learner`` (beside the target network and the optimizer)."""


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any]]:
    """(the online network's state dict, config, manifest) of the checkpoint directory ``path``,
    reading its network's component only (never the replay, the envs or the rest)."""
    _, _, manifest = read_checkpoint(path, ())
    key = next((k for k in NETWORK_COMPONENTS if k in manifest.get("components", [])), None)
    if key is None:
        raise CheckpointError(f"{path}: the checkpoint holds no network "
                              f"(components: {sorted(manifest.get('components', []))})")
    components, cfg, manifest = read_checkpoint(path, (key,))
    component = components[key]
    if not isinstance(component, dict) or "online" not in component:
        raise CheckpointError(f"{path}: corrupt component {key}.pt (it holds no online network)")
    return component["online"], cfg, manifest


@dataclass
class Evaluation:
    """Greedy returns of an agent, and the videos of those episodes if it recorded any."""

    returns: np.ndarray
    checkpoint: Path
    videos: list[Path] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns)) if len(self.returns) else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.returns)) if len(self.returns) else math.nan


class Agent:
    """The Q-network of one checkpoint and how to feed it the env's observations."""

    def __init__(self, cfg: Config, info: EnvInfo, network: torch.nn.Module, checkpoint: Path,
                 manifest: dict[str, Any]):
        self.config, self.info, self.network = cfg, info, network.eval()
        self.checkpoint, self.manifest = checkpoint, manifest
        self.env_steps: int | None = manifest.get("env_steps")
        env = make_env(cfg.env)
        try:
            self.observation_space, action_space = env.observation_space, env.action_space
        finally:
            env.close()
        self.layout = observation_layout(self.observation_space, cfg.env.id)
        self.action_start = int(getattr(action_space, "start", 0))
        self._policy = TorchPolicy(self.network)

    def __repr__(self) -> str:
        return (f"Agent({self.config.env.id}, {self.info.num_actions} actions, checkpoint {self.checkpoint.name}, "
                f"{self.env_steps} env steps)")

    # ---- acting ----
    def _q(self, obs: Any) -> tuple[np.ndarray, bool]:
        rows, single = stored_batch(self.layout, self.observation_space, obs)
        return self._policy.q_values(rows), single

    def q_values(self, obs: Any) -> np.ndarray:
        """Action values of one observation ([num_actions]) or of a batch ([B, num_actions])."""
        q, single = self._q(obs)
        return q[0] if single else q

    def act(self, obs: Any, epsilon: float = 0.0, rng: np.random.Generator | None = None) -> Any:
        """The greedy action (with probability ``epsilon`` a uniform one) for one observation (an
        int) or a batch (an array), as the env takes it."""
        q, single = self._q(obs)
        actions = q.argmax(axis=1)
        if epsilon > 0:
            rng = rng or np.random.default_rng()
            explore = rng.random(len(actions)) < epsilon
            actions = np.where(explore, rng.integers(0, q.shape[1], len(actions)), actions)
        actions = actions + self.action_start
        return int(actions[0]) if single else actions

    __call__ = act

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """A new env as the run made it (the user's wrappers applied), for a loop of one's own."""
        return make_env(self.config.env, render_mode)

    # ---- evaluating ----
    def evaluate(self, episodes: int = 10, seed: int = 12345, num_envs: int = 10,
                 video_dir: str | Path | None = None, epsilon: float = 0.0) -> Evaluation:
        """Returns of ``episodes`` episodes; with ``video_dir``, each recorded there as an MP4 (one env)."""
        if video_dir is not None:
            return self._record(Path(video_dir), episodes, seed, epsilon)
        torch.set_num_threads(1)
        env = make_vector_env(self.config.env, min(num_envs, episodes), evaluation=True)
        try:
            returns = evaluate_policy(self._policy, env, episodes, epsilon, seed)
        finally:
            env.close()
        return Evaluation(returns, self.checkpoint)

    def _record(self, video_dir: Path, episodes: int, seed: int, epsilon: float) -> Evaluation:
        try:
            import moviepy  # noqa: F401 - RecordVideo's encoder
        except ImportError:
            raise UserError("--video: recording needs the video extra (pip install 'distdqn[video]')") from None
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")   # pygame-drawn envs: frames without a display
        env = self.make_env(render_mode="rgb_array")
        if env.render_mode != "rgb_array":
            env.close()
            raise EnvironmentSpecError(f"--video: {self.config.env.id} does not render rgb_array frames")
        prefix = self.config.env.id.replace("/", "-").replace(":", "-")
        before = set(video_dir.glob(f"{prefix}-episode-*.mp4")) if video_dir.is_dir() else set()
        recorder = gym.wrappers.RecordVideo(VideoFrames(env), str(video_dir), episode_trigger=lambda _: True,
                                            name_prefix=prefix, fps=env.metadata.get("render_fps") or 30)
        rng, returns = np.random.default_rng(seed), []
        try:
            for episode in range(episodes):
                obs, _ = recorder.reset(seed=seed + episode)
                total, done = 0.0, False
                while not done:
                    obs, reward, terminated, truncated, _ = recorder.step(self.act(obs, epsilon, rng))
                    total += float(reward)
                    done = terminated or truncated
                returns.append(total)
        finally:
            recorder.close()
        videos = sorted(set(video_dir.glob(f"{prefix}-episode-*.mp4")) - before)
        return Evaluation(np.array(returns), self.checkpoint, videos)


class VideoFrames(gym.Wrapper):
    """Frames an MP4 encoder takes: uint8 RGB (float frames in [0, 1] scaled), boards smaller than
    64 pixels scaled up (MinAtar's 10 x 10), sides made even (H.264's 4:2:0)."""

    def render(self) -> Any:
        frame = np.asarray(self.env.render())
        if frame.dtype != np.uint8:
            frame = (np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8) if frame.max(initial=0) <= 1.0 else \
                np.clip(frame, 0, 255).astype(np.uint8)
        if frame.ndim == 2:
            frame = np.repeat(frame[:, :, None], 3, axis=2)
        scale = max(1, math.ceil(64 / min(frame.shape[:2])))
        if scale > 1:
            frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
        height, width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        return np.ascontiguousarray(frame[:height, :width])


def load(path: str | Path, checkpoint: str | None = None, cfg: Config | None = None) -> Agent:
    """The agent of a run directory (or of a checkpoint directory): ``checkpoint`` best, latest or
    a checkpoint's name; None: best if the run kept one, else latest. ``cfg``: the run's config
    with a Python env factory handed again (api.load does that)."""
    where = checkpoint_path(path, checkpoint)
    weights, saved_cfg, manifest = read_weights(where)
    cfg = cfg or saved_cfg
    info = env_info(cfg.env)
    Checkpoint(where, manifest).check_spaces(info.obs_shape, info.obs_dtype, info.num_actions)
    cfg = resolve_network(cfg, info)
    network = build_network(cfg, info)
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: checkpoint weights do not match its config "
                              f"({str(exc).splitlines()[0]})") from None
    return Agent(cfg, info, network, where, manifest)
