import copy
import warnings

import gymnasium as gym
import pytest
import yaml
from stable_baselines3.common.vec_env import DummyVecEnv

from sparc_rl.agents import list_agents, load_agent, parse_agent
from sparc_rl.curriculum import check_task_spaces, list_curricula, load_curriculum, parse_curriculum
from sparc_rl.errors import ConfigError
from tests.conftest import tiny_curriculum_dict


def test_builtin_curricula_load_and_share_spaces():
    assert {"minigrid-skills", "garden-seasons", "cartpole-drift"} <= set(list_curricula())
    for name in list_curricula():
        curriculum = load_curriculum(name)
        assert curriculum.tasks and all(task.steps > 0 for task in curriculum.tasks)
    minigrid = load_curriculum("minigrid-skills")
    assert len({task.env_id for task in minigrid.tasks}) >= 4
    garden = load_curriculum("garden-seasons")
    seasons = [task.kwargs["season"] for task in garden.tasks]
    assert len(set(seasons)) >= 4 and seasons[-1] in seasons[:-1]  # a season returns


def test_builtin_agents_load():
    assert {"sparc", "sparc-no-memory", "sparc-no-gate", "lstm", "gru", "lstm-ewc", "recurrent-ppo"} <= set(
        list_agents()
    )
    for name in list_agents():
        assert load_agent(name).name == name


def test_path_to_a_yaml_file_loads(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(tiny_curriculum_dict()))
    assert load_curriculum(path).task_names == ["short", "reversed"]


def _broken(mutate):
    data = copy.deepcopy(tiny_curriculum_dict())
    mutate(data)
    return data


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda d: d["tasks"][1].update(env="SparcRL/DriftingCartPol-v0"),
            "task 'reversed': unknown env id 'SparcRL/DriftingCartPol-v0'. Did you mean 'SparcRL/DriftingCartPole-v0'",
        ),
        (lambda d: d["tasks"][0].pop("steps"), "task 'short': missing key\\(s\\) \\['steps'\\]"),
        (lambda d: d["tasks"][0].update(steps=-5), "task 'short': 'steps' must be a positive integer, got -5"),
        (lambda d: d["tasks"][0].update(stepz=5), "task 'short': unknown key\\(s\\) \\['stepz'\\]"),
        (lambda d: d.update(colour="red"), "unknown key\\(s\\) \\['colour'\\]"),
        (lambda d: d.update(boundary="sometimes"), "'boundary' must be one of"),
        (lambda d: d.update(tasks=[]), "'tasks' must be a non-empty list"),
        (lambda d: d["tasks"][1].update(name="short"), "task names must be unique"),
        # names name files: checkpoints/task-<i>-<name>.zip, runs/<curriculum>-<agent>-...
        (lambda d: d["tasks"][1].update(name="easy/1"), "task 'easy/1': the task name 'easy/1' must be non-empty text"),
        (lambda d: d["tasks"][1].update(name=" "), "the task name ' ' must be non-empty text without '/'"),
        (lambda d: d.update(name="../up"), "the curriculum's name '../up' must be non-empty text without '/'"),
        (lambda d: d["tasks"][0].update(wrappers=["sparkle"]), "unknown wrapper 'sparkle'"),
        (lambda d: d.update(algorithm_kwargs=[10]), "'algorithm_kwargs' must be a mapping"),
        (lambda d: d.update(algorithm_kwargs={"seq_len": 8}), "'algorithm_kwargs' cannot set \\['seq_len'\\]"),
        (lambda d: d.update(algorithm_kwargs={"n_epochs": 2.5}), "'n_epochs' must be int, got 2.5"),
        (
            lambda d: d.update(algorithm_kwargs={"learning_rate": "3e-4"}),
            "'learning_rate' must be float, got '3e-4' \\(YAML reads 3e-4 as text: write 0.0003\\)",
        ),
    ],
)
def test_each_validation_error_has_one_clear_message(mutate, message):
    with pytest.raises(ConfigError, match=message):
        parse_curriculum(_broken(mutate), "mine.yaml")


def test_tasks_with_different_spaces_are_named_with_both_spaces(tmp_path):
    data = _broken(lambda d: d["tasks"][1].update(wrappers=[]))
    path = tmp_path / "spaces.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError,
        match=r"task 'reversed' has observation space Box\(shape=\(2,\), dtype=float32\) but task 'short' has Box",
    ):
        load_curriculum(path)


def test_unknown_name_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="Unknown curriculum 'garden-season'. Did you mean 'garden-seasons'"):
        load_curriculum("garden-season")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntasks: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_curriculum(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_curriculum(listing)
    with pytest.raises(ConfigError, match="does not exist"):
        load_curriculum(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"The curriculum is empty: give a built-in name \(cartpole-drift"):
        load_curriculum("")
    with pytest.raises(ConfigError, match=r"curriculum '.*' is a folder: give a YAML file in it"):
        load_curriculum(tmp_path)
    with pytest.raises(ConfigError, match=r"agent '.*' is a folder"):
        load_agent(tmp_path)


def test_agent_validation():
    with pytest.raises(ConfigError, match="unknown plugin 'ewcc'"):
        parse_agent({"name": "a", "plugins": ["ewcc"]})
    with pytest.raises(ConfigError, match="'algorithm' must be one of"):
        parse_agent({"name": "a", "algorithm": "dqn"})
    with pytest.raises(ConfigError, match="unknown key\\(s\\) \\['polcy'\\]"):
        parse_agent({"name": "a", "polcy": "x"})
    with pytest.raises(ConfigError, match="Unknown agent 'sparcc'. Did you mean 'sparc'"):
        load_agent("sparcc")
    with pytest.raises(ConfigError, match=r"the agent's name 'my\\\\agent' must be non-empty text without"):
        parse_agent({"name": "my\\agent"})


@pytest.mark.parametrize(
    "algorithm,settings,message",
    [
        ("sparc-ppo", {"n_epoch": 3}, "unknown setting 'n_epoch'. Did you mean 'n_epochs'\\? Allowed: batch_size,"),
        ("sparc-ppo", {"n_epochs": "x"}, "'n_epochs' must be int, got 'x'"),
        ("sparc-ppo", {"normalize_advantage": 1}, "'normalize_advantage' must be bool, got 1"),
        ("sparc-ppo", {"transfer_episodes": "all"}, "'transfer_episodes' must be int or null, got 'all'"),
        ("sparc-ppo", {"env": "CartPole-v1"}, "unknown setting 'env'"),  # the curriculum gives the env
        ("recurrent-ppo", {"seq_len": 8}, "unknown setting 'seq_len'"),  # SparcPPO's, not RecurrentPPO's
        ("recurrent-ppo", {"target_kl": "0.01"}, "'target_kl' must be float or null, got '0.01' \\(YAML reads"),
    ],
)
def test_agent_algorithm_settings_are_checked_when_the_file_is_read(algorithm, settings, message):
    with pytest.raises(ConfigError, match=message):
        parse_agent({"name": "a", "algorithm": algorithm, "algorithm_kwargs": settings}, "mine.yaml")


@pytest.mark.parametrize(
    "plugin,message",
    [
        ({"name": "ewc", "kwargs": {"lambd": 3}}, "plugin 'ewc': unknown setting 'lambd'. Allowed: decay, strength"),
        ({"name": "ewc", "kwargs": {"strenght": 3}}, "Did you mean 'strength'"),
        ({"name": "behaviour-cloning", "kwargs": {"chunks_per_task": 6.5}}, "'chunks_per_task' must be int, got 6.5"),
        ({"name": "ewc", "kwargs": [3]}, "plugin 'ewc': 'kwargs' must be a mapping"),
    ],
)
def test_plugin_settings_are_checked_when_the_file_is_read(plugin, message):
    with pytest.raises(ConfigError, match=message):
        parse_agent({"name": "a", "plugins": [plugin]}, "mine.yaml")


@pytest.mark.parametrize(
    "algorithm,settings,message",
    [
        ("sparc-ppo", {"hidden_size": "x"}, "policy_kwargs: 'hidden_size' must be int, got 'x'"),
        ("sparc-ppo", {"net_arch": "wide"}, "'net_arch' must be list or dict or null, got 'wide'"),
        ("sparc-ppo", {"ortho_init": "yes"}, "'ortho_init' must be bool"),  # SB3's ActorCriticPolicy's setting
        ("sparc-ppo", {"lr_schedule": 0.1}, "unknown setting 'lr_schedule'"),  # the algorithm gives it
        ("recurrent-ppo", {"lstm_hidden_sizes": 64}, "Did you mean 'lstm_hidden_size'"),
        ("recurrent-ppo", {"hidden_size": 64}, "unknown setting 'hidden_size'"),  # SPARC's, not the LSTM policy's
    ],
)
def test_policy_settings_are_checked_when_the_file_is_read(algorithm, settings, message):
    with pytest.raises(ConfigError, match=message):
        parse_agent({"name": "a", "algorithm": algorithm, "policy_kwargs": settings}, "mine.yaml")


def test_algorithm_settings_the_algorithm_rejects_are_one_clear_error():
    spec = parse_agent({"name": "a", "algorithm_kwargs": {"learning_rate": -1.0}, "policy_kwargs": {"core": "gru"}})
    env = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(
        ConfigError, match="Agent 'a': the sparc-ppo algorithm rejects its settings: Invalid learning rate"
    ):
        spec.build(env, seed=0)


def _curriculum_on(env_id: str) -> dict:
    data = tiny_curriculum_dict()
    for task in data["tasks"]:
        task["env"], task["kwargs"], task["wrappers"] = env_id, {}, []
    return data


def test_env_ids_in_module_form_import_the_module_that_registers_them(tmp_path, monkeypatch):
    (tmp_path / "my_pole_envs.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('MyPoles/Pole-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "MyPoles/Pole-v0" not in gym.registry
    curriculum = parse_curriculum(_curriculum_on("my_pole_envs:MyPoles/Pole-v0"))
    assert curriculum.tasks[0].env_id == "my_pole_envs:MyPoles/Pole-v0"  # kept: a resumed run imports it again
    env = curriculum.tasks[0].make_env()
    assert env.spec is not None and env.spec.id == "MyPoles/Pole-v0"
    env.close()


@pytest.mark.parametrize(
    "module_source,env_id,message",
    [
        (None, "no_such_envs_module:Pole-v0", "cannot import 'no_such_envs_module' for 'no_such_envs_module:Pole-v0'"),
        ("x = 1\n", "registers_nothing:MyPoles/Nothing-v0", "importing 'registers_nothing' did not register it"),
        (
            "raise RuntimeError('boom')\n",
            "broken_envs:Pole-v0",
            "importing 'broken_envs' for 'broken_envs:Pole-v0' failed",
        ),
    ],
)
def test_env_ids_in_module_form_that_do_not_work(tmp_path, monkeypatch, module_source, env_id, message):
    module = env_id.split(":")[0]
    if module_source is not None:
        (tmp_path / f"{module}.py").write_text(module_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=message) as caught:
        parse_curriculum(_curriculum_on(env_id))
    assert "\n" not in str(caught.value)
    if module == "broken_envs":
        assert "RuntimeError: boom" in str(caught.value)


@pytest.mark.parametrize(
    "plugin,message",
    [
        ({"name": "my_plugins:Quiet", "kwargs": {"tga": 1}}, "plugin 'my_plugins:Quiet': unknown setting 'tga'"),
        (
            "my_plugins:NoSuchClass",
            "must name a subclass of sparc_rl.plugins.ContinualPlugin in 'my_plugins', got None",
        ),
        ("my_plugins:NotAPlugin", "must name a subclass of sparc_rl.plugins.ContinualPlugin"),
        ("missing_plugins_module:Quiet", "cannot import 'missing_plugins_module' for 'missing_plugins_module:Quiet'"),
        ("ewcc", "unknown plugin 'ewcc'; choose from \\['behaviour-cloning', 'ewc', 'novelty-boundaries'\\] or"),
    ],
)
def test_the_users_own_plugins_are_checked_when_the_file_is_read(tmp_path, monkeypatch, plugin, message):
    (tmp_path / "my_plugins.py").write_text(
        "from sparc_rl.plugins import ContinualPlugin\n"
        "class Quiet(ContinualPlugin):\n"
        "    def __init__(self, tag: int = 0) -> None:\n"
        "        self.tag = tag\n"
        "class NotAPlugin:\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        parse_agent({"name": "a", "plugins": [plugin]}, "mine.yaml")
    assert parse_agent({"name": "a", "plugins": ["my_plugins:Quiet"]}).plugins == (("my_plugins:Quiet", {}),)


def test_a_curriculum_of_dict_observations_stops_before_anything_is_written(tmp_path):
    from sparc_rl.runner import ContinualRunner

    data = _curriculum_on("MiniGrid-Empty-5x5-v0")  # MiniGrid's own dict observation, no wrappers
    with pytest.raises(
        ConfigError, match="task 'short': .* got Dict\\(.*for MiniGrid, add the wrappers minigrid-one-hot"
    ):
        ContinualRunner(parse_curriculum(data), "sparc", run_dir=tmp_path / "run", progress=False).run()
    assert not (tmp_path / "run").exists()


class _RandomActions:
    def __init__(self) -> None:
        self.space = gym.spaces.Discrete(2, seed=0)

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        return [self.space.sample() for _ in range(len(observation))], None


def _stock_cartpole(wrappers: list) -> dict:
    return {"name": "stock", "tasks": [{"name": "pole", "env": "CartPole-v1", "wrappers": wrappers, "steps": 64}]}


def test_envs_without_success_information_are_named_and_the_wrapper_that_adds_it_scores_them():
    from sparc_rl.evaluation import evaluate_task

    (bare,) = parse_curriculum(_stock_cartpole([]), "stock").tasks
    with pytest.warns(
        UserWarning, match=r"'pole' \(CartPole-v1\) reports no info\['is_success'\].*success-from-return"
    ):
        assert evaluate_task(_RandomActions(), bare, n_episodes=4, seed=0).success_rate == 0.0
    # random actions keep CartPole up for 8 to 50 steps: above 5 always, never at the registered 475
    for threshold, rate in ((5, 1.0), (None, 0.0)):
        wrapper = (
            {"name": "success-from-return", "kwargs": {"threshold": threshold}} if threshold else "success-from-return"
        )
        (task,) = parse_curriculum(_stock_cartpole([wrapper]), "stock").tasks
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            score = evaluate_task(_RandomActions(), task, n_episodes=4, seed=0)
        assert score.success_rate == rate and 8 <= score.mean_return <= 50


def test_the_success_wrapper_without_a_threshold_needs_a_registered_one():
    with pytest.raises(
        ConfigError, match="task 'pole': cannot build the env: Pendulum-v1 has no registered reward_threshold"
    ):
        check_task_spaces(
            parse_curriculum(
                {
                    "name": "p",
                    "tasks": [{"name": "pole", "env": "Pendulum-v1", "wrappers": ["success-from-return"], "steps": 64}],
                },
                "p",
            )
        )


class _Endless(gym.Env):
    """Never terminates, and is registered without a time limit."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_an_env_whose_episodes_never_end_stops_evaluation_with_the_fix_instead_of_stalling(monkeypatch):
    from sparc_rl import SparcPPO, evaluation
    from sparc_rl.evaluation import evaluate_task

    if "Tests/Endless-v0" not in gym.registry:
        gym.register("Tests/Endless-v0", entry_point=_Endless)
    monkeypatch.setattr(evaluation, "EPISODE_STEP_LIMIT", 50)
    task_data = {"name": "endless", "env": "Tests/Endless-v0", "steps": 64}
    (task,) = parse_curriculum({"name": "e", "tasks": [task_data]}, "e").tasks
    with pytest.raises(ConfigError, match=r"Evaluating task 'endless' \(Tests/Endless-v0\): an episode ran 50 steps"):
        evaluate_task(_RandomActions(), task, n_episodes=2, seed=0)
    model = SparcPPO("MlpSparcPolicy", task.make_env(), n_steps=16, batch_size=16, transfer_episodes=2)
    model.start_task("endless")
    with pytest.raises(ConfigError, match=r"starts \(transfer_episodes\): an episode ran 50 steps.*max_episode_steps"):
        model._mean_return(model.get_env(), 2)
    # the fix the message names
    (limited,) = parse_curriculum({"name": "e", "tasks": [{**task_data, "kwargs": {"max_episode_steps": 20}}]}).tasks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no success information here
        assert evaluate_task(_RandomActions(), limited, n_episodes=2, seed=0).mean_return == 0.0
