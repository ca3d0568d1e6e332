import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from minigrid.core.grid import Grid
from minigrid.core.world_object import Wall
from minigrid.minigrid_env import MiniGridEnv
from minigrid.wrappers import OneHotPartialObsWrapper

import sparc_rl  # noqa: F401
from sparc_rl.curriculum import load_curriculum
from sparc_rl.envs import (
    SEASONS,
    AbruptTaskSwitch,
    CyclicTaskReturn,
    GradualDrift,
    HiddenTaskBoundaries,
    MinigridImageTask,
    PreviousActionRewardObservation,
)
from sparc_rl.envs.minigrid_view import OneHotPartialObs, _visible_cells, egocentric_view, install_fast_view

SPARC_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("SparcRL/"))
VARIANTS = [("SparcRL/Garden-v0", {"season": s}) for s in SEASONS] + [
    ("SparcRL/DriftingCartPole-v0", {}),
    ("SparcRL/DriftingCartPole-v0", {"mask_velocity": False, "pole_length": 1.0, "reverse_actions": True}),
]


def test_registry_has_the_package_envs():
    assert SPARC_IDS == ["SparcRL/DriftingCartPole-v0", "SparcRL/Garden-v0"]


@pytest.mark.parametrize("env_id,kwargs", VARIANTS)
def test_env_checker(env_id, kwargs):
    check_env(gym.make(env_id, **kwargs).unwrapped, skip_render_check=True)


def _rollout(env_id, kwargs, seed, steps=60):
    env = gym.make(env_id, **kwargs)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    trace = [np.asarray(obs["image"] if isinstance(obs, dict) else obs).copy()]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        trace.append(np.asarray(obs["image"] if isinstance(obs, dict) else obs).copy())
        trace.append(np.array([reward, terminated, truncated], dtype=float))
        if terminated or truncated:
            obs, _ = env.reset()
    return trace


@pytest.mark.parametrize("env_id,kwargs", VARIANTS)
def test_same_seed_same_rollout(env_id, kwargs):
    first, second = _rollout(env_id, kwargs, 3), _rollout(env_id, kwargs, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    other = _rollout(env_id, kwargs, 4)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def _face_plant(env, color):
    """Put the agent next to the plant of ``color``, facing it; returns the env."""
    from minigrid.core.world_object import Ball

    unwrapped = env.unwrapped
    for x in range(unwrapped.width):
        for y in range(unwrapped.height):
            cell = unwrapped.grid.get(x, y)
            if isinstance(cell, Ball) and cell.color == color:
                for direction, (dx, dy) in enumerate([(1, 0), (0, 1), (-1, 0), (0, -1)]):
                    ax, ay = x - dx, y - dy
                    if unwrapped.grid.get(ax, ay) is None:
                        unwrapped.agent_pos, unwrapped.agent_dir = (ax, ay), direction
                        return env
    raise AssertionError("no free cell next to the plant")


@pytest.mark.parametrize("season", sorted(SEASONS))
def test_garden_rewards_watering_the_thirsty_plant_only(season):
    env = gym.make("SparcRL/Garden-v0", season=season)
    env.reset(seed=0)
    thirsty = SEASONS[season].thirsty_plant
    other = "yellow" if thirsty == "green" else "green"
    _face_plant(env, other)
    _, reward, terminated, _, _ = env.step(5)
    assert reward == pytest.approx(-0.2) and not terminated
    _, reward, terminated, _, _ = env.step(5)
    assert reward == 0.0  # the penalty is given once
    _face_plant(env, thirsty)
    _, reward, terminated, _, info = env.step(5)
    assert reward > 0.5 and terminated and info["is_success"]


def test_autumn_looks_like_spring_but_summer_does_not():
    def image(season):
        obs, _ = gym.make("SparcRL/Garden-v0", season=season).reset(seed=11)
        return obs["image"]

    assert np.array_equal(image("spring"), image("autumn"))
    assert not np.array_equal(image("spring"), image("summer"))


def test_cartpole_success_means_lasting_max_steps():
    env = gym.make("SparcRL/DriftingCartPole-v0", max_steps=5, pole_length=1.0)
    env.reset(seed=0)
    for _ in range(5):
        _, _, terminated, truncated, info = env.step(0)
    assert truncated and not terminated and info["is_success"]


# -- wrappers on a tiny stub env ----------------------------------------------------------------
class StubEnv(gym.Env):
    """Observation = [task value, step count]; reward = the action; episodes last 3 steps."""

    def __init__(self, value=0.0, length=1.0):
        self.value = value
        self.length = length
        self.observation_space = spaces.Box(-10, 10, (2,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.value, self.length], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.value, self.length], np.float32), float(action), False, self.t >= 3, {}


def _episode(env):
    obs, info = env.reset()
    infos = [info]
    for _ in range(3):
        obs, _, _, _, info = env.step(1)
        infos.append(info)
    return obs, infos


def test_abrupt_task_switch_switches_once_at_an_episode_start():
    env = AbruptTaskSwitch([StubEnv(0.0), StubEnv(1.0)], steps_per_task=6)
    values = [_episode(env)[0][0] for _ in range(4)]
    assert values == [0.0, 0.0, 1.0, 1.0]
    _, infos = _episode(env)
    assert infos[0]["task_index"] == 1 and infos[0]["task_switched"] is False


def test_cyclic_task_return_brings_the_first_task_back():
    env = CyclicTaskReturn([StubEnv(0.0), StubEnv(1.0)], period=3)
    assert [_episode(env)[0][0] for _ in range(4)] == [0.0, 1.0, 0.0, 1.0]


def test_task_sequences_refuse_different_spaces():
    other = StubEnv()
    other.action_space = spaces.Discrete(5)
    with pytest.raises(ValueError, match="Task 1 has spaces"):
        AbruptTaskSwitch([StubEnv(), other], steps_per_task=3)


def test_gradual_drift_moves_the_parameter_linearly():
    env = GradualDrift(StubEnv(), "length", start=1.0, end=2.0, steps=6)
    lengths = [_episode(env)[0][1] for _ in range(3)]
    assert lengths == pytest.approx([1.0, 1.5, 2.0])
    with pytest.raises(ValueError, match="no parameter 'mass'"):
        GradualDrift(StubEnv(), "mass", 0, 1, 5)


def test_hidden_task_boundaries_strip_announcements():
    env = HiddenTaskBoundaries(AbruptTaskSwitch([StubEnv(0.0), StubEnv(1.0)], steps_per_task=3))
    _, infos = _episode(env)
    assert all("task_index" not in info and "task_switched" not in info for info in infos)


def test_previous_action_reward_observation():
    env = PreviousActionRewardObservation(StubEnv(0.5))
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, [0.5, 1.0, 0, 0, 0, 0])
    obs, *_ = env.step(2)
    np.testing.assert_array_equal(obs, [0.5, 1.0, 0, 0, 1, 2.0])
    assert env.observation_space.contains(obs)


def test_minigrid_image_task_gives_one_space_to_all_tasks():
    spaces_seen = set()
    for env_id in ("MiniGrid-Empty-Random-6x6-v0", "MiniGrid-Dynamic-Obstacles-5x5-v0", "MiniGrid-DoorKey-5x5-v0"):
        env = MinigridImageTask(gym.make(env_id))
        spaces_seen.add((str(env.observation_space), str(env.action_space)))
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
    assert len(spaces_seen) == 1
    with pytest.raises(ValueError, match="needs a MiniGrid dict observation"):
        MinigridImageTask(StubEnv())


# every distinct MiniGrid env of the built-in curricula (a returning task is the same env)
MINIGRID_TASKS = [
    pytest.param(task, id=f"{name}:{task.name}")
    for name in ("minigrid-skills", "garden-seasons")
    for index, task in enumerate(load_curriculum(name).tasks)
    if (task.env_id, task.kwargs) not in [(t.env_id, t.kwargs) for t in load_curriculum(name).tasks[:index]]
]


@pytest.mark.parametrize("task", MINIGRID_TASKS)
def test_fast_minigrid_view_observes_exactly_what_minigrid_does(task):
    env = task.make_env()
    base = env.unwrapped
    assert base.gen_obs.__func__ is egocentric_view
    one_hot = OneHotPartialObs(gym.make(task.env_id, **task.kwargs))
    stock_one_hot = OneHotPartialObsWrapper(gym.make(task.env_id, **task.kwargs))
    rng = np.random.default_rng(0)
    directions, carried = set(), False
    for episode in range(12):
        env.reset(seed=episode)
        for _ in range(150):
            fast, stock = egocentric_view(base), MiniGridEnv.gen_obs(base)
            assert np.array_equal(fast["image"], stock["image"])
            assert (fast["direction"], fast["mission"]) == (stock["direction"], stock["mission"])
            assert np.array_equal(one_hot.observation(stock)["image"], stock_one_hot.observation(stock)["image"])
            directions.add(base.agent_dir)
            carried |= base.carrying is not None
            # mostly forward and pick-up/toggle, so agents walk into doors, keys and walls
            _, _, terminated, truncated, _ = env.step(int(rng.choice([0, 1, 2, 2, 2, 3, 5])))
            if terminated or truncated:
                break
    assert directions == {0, 1, 2, 3}
    if task.env_id == "MiniGrid-DoorKey-5x5-v0":
        assert carried, "the rollouts never picked up the key: they do not test the carried-object cell"


@pytest.mark.parametrize("size", [3, 7, 9])
def test_visible_cells_light_what_minigrid_lights(size):
    rng = np.random.default_rng(size)
    for wall_share in (0.1, 0.3, 0.6):
        for _ in range(300):
            opaque = rng.random((size, size)) < wall_share
            grid = Grid(size, size)
            for x, y in zip(*np.nonzero(opaque), strict=True):
                grid.set(int(x), int(y), Wall())
            expected = grid.process_vis(agent_pos=(size // 2, size - 1))
            assert np.array_equal(_visible_cells(opaque), expected)


def test_fast_minigrid_view_leaves_other_envs_alone():
    assert not install_fast_view(gym.make("CartPole-v1"))
