import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.distributions import Distribution

from sparc_rl import CnnSparcPolicy, SparcPPO
from sparc_rl.envs import MinigridImageTask
from sparc_rl.errors import ConfigError

SMALL = dict(n_steps=32, batch_size=64, n_epochs=2, seq_len=16)


def masked_cartpole(n_envs=2, seed=0):
    return make_vec_env("SparcRL/DriftingCartPole-v0", n_envs=n_envs, seed=seed, env_kwargs={"max_steps": 40})


def small_model(core="sparc", n_envs=2, **policy_kwargs):
    return SparcPPO(
        "MlpSparcPolicy",
        masked_cartpole(n_envs),
        seed=0,
        policy_kwargs=dict(core=core, hidden_size=16, **policy_kwargs),
        **SMALL,
    )


@pytest.mark.parametrize("core", ["sparc", "lstm", "gru"])
def test_learn_runs_for_every_core(core):
    model = small_model(core)
    model.learn(128)
    assert model.num_timesteps == 128
    assert model.rollout_buffer.states.shape == (32, 2, model.policy.state_size)


def test_recomputed_log_probs_match_rollout_before_any_update():
    """The chunked unroll from stored states must reproduce exactly what the rollout computed."""
    model = small_model("sparc", n_slots=2)
    model.learn(64)
    model.consolidate()  # a filled slot, so memory and gate take part
    model.learn(64, reset_num_timesteps=False)
    # collect a fresh rollout without training on it
    callback = CallbackList([])
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    assert model.rollout_buffer.episode_starts[1:].sum() > 0  # resets inside chunks are exercised
    everything = model.rollout_buffer.all_sequences(16)
    actor_readout, critic_readout = model.policy.read_memories(
        everything.observations, everything.states, everything.episode_starts
    )
    assert actor_readout is not None and critic_readout is not None
    with th.no_grad():
        for batch in model.rollout_buffer.get_sequences(64, 16):
            actions = batch.actions.long().flatten()
            values, log_prob, _ = model.policy.evaluate_sequences(
                batch.observations, actions, batch.states, batch.episode_starts
            )
            assert th.allclose(log_prob, batch.old_log_prob, atol=1e-5)
            assert th.allclose(values.flatten(), batch.old_values, atol=1e-5)
            # the memory read once for the whole rollout gives the same result (what train() uses)
            readouts = (actor_readout.select(batch.chunks), critic_readout.select(batch.chunks))
            _, cached_log_prob, _ = model.policy.evaluate_sequences(
                batch.observations, actions, batch.states, batch.episode_starts, readouts
            )
            assert th.allclose(cached_log_prob, log_prob, atol=1e-6)


def test_predict_with_and_without_state():
    model = small_model()
    model.learn(64)
    env = masked_cartpole(n_envs=3)
    obs = env.reset()
    actions, state = model.predict(obs)
    assert actions.shape == (3,) and state.shape == (3, model.policy.state_size)
    actions2, state2 = model.predict(obs, state=state, episode_start=np.zeros(3), deterministic=True)
    assert not np.allclose(state, state2)
    # an episode start resets the state: same as starting from None
    reset_actions, reset_state = model.predict(obs, state=state2, episode_start=np.ones(3), deterministic=True)
    fresh_actions, fresh_state = model.predict(obs, state=None, deterministic=True)
    np.testing.assert_allclose(reset_state, fresh_state, atol=1e-6)
    np.testing.assert_array_equal(reset_actions, fresh_actions)
    # a single (non-vectorised) observation gives a single action
    single, single_state = model.predict(obs[0])
    assert np.ndim(single) == 0 and single_state.shape == (1, model.policy.state_size)
    with pytest.raises(ValueError, match="state has 5 values per env"):
        model.predict(obs, state=np.zeros((3, 5)))


def test_evaluate_policy_works():
    model = small_model()
    model.learn(64)
    mean, std = evaluate_policy(model, masked_cartpole(2), n_eval_episodes=4)
    assert 1 <= mean <= 40


def test_save_load_round_trip_keeps_memory_and_actions(tmp_path):
    model = small_model("sparc", n_slots=3, core_kwargs={"write_only_novel": False})
    model.learn(64)
    model.consolidate()
    model.learn(64, reset_num_timesteps=False)
    model.consolidate()
    obs = masked_cartpole(4, seed=5).reset()
    expected, expected_state = model.predict(obs, deterministic=True)
    model.save(tmp_path / "model.zip")

    loaded = SparcPPO.load(tmp_path / "model.zip", env=masked_cartpole(n_envs=4))  # a different number of envs
    assert loaded.n_envs == 4
    assert int(loaded.policy.actor_core.n_filled) == 2
    # the skills a transfer trial tries come back as they were written: consolidating a stored slot
    # again must not list it twice
    assert loaded._stored_skills == model._stored_skills == [(0, 0), (1, 1)]
    for name, buffer in model.policy.named_buffers():
        assert th.equal(buffer, dict(loaded.policy.named_buffers())[name]), name
    actions, state = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, expected)
    np.testing.assert_allclose(state, expected_state)
    # protected parts stay frozen after loading, and training goes on with the slots intact
    assert not any(p.requires_grad for p in loaded.policy.action_net.parameters())
    slots = loaded.policy.actor_core.slot_weight_hh.clone()
    loaded.learn(256)
    assert th.equal(slots, loaded.policy.actor_core.slot_weight_hh)


def test_consolidate_before_any_rollout_is_a_clear_error():
    with pytest.raises(RuntimeError, match="call learn\\(\\) first"):
        small_model().consolidate()


def test_bad_policy_kwargs_and_settings_give_clear_errors():
    with pytest.raises(ConfigError, match="Unknown core 'lstmm'"):
        small_model("lstmm")
    with pytest.raises(ConfigError, match="Invalid policy_kwargs"):
        SparcPPO("MlpSparcPolicy", masked_cartpole(), policy_kwargs={"hiden_size": 3}, **SMALL)
    with pytest.raises(ConfigError, match="seq_len \\(7\\) must be positive and divide n_steps"):
        SparcPPO("MlpSparcPolicy", masked_cartpole(), n_steps=32, seq_len=7)
    with pytest.raises(ConfigError, match="batch_size \\(40\\) must be a multiple of seq_len"):
        SparcPPO("MlpSparcPolicy", masked_cartpole(), n_steps=32, batch_size=40, seq_len=16)


def test_cnn_policy_runs_on_minigrid_images():
    env = make_vec_env(lambda: MinigridImageTask(gym.make("MiniGrid-DoorKey-5x5-v0")), n_envs=2, seed=0)
    model = SparcPPO("CnnSparcPolicy", env, seed=0, policy_kwargs=dict(hidden_size=16), **SMALL)
    model.learn(64)
    actions, _ = model.predict(env.reset())
    assert actions.shape == (2,)


def test_plugins_hooks_and_auxiliary_loss_are_called():
    from sparc_rl.plugins import ContinualPlugin

    class Recorder(ContinualPlugin):
        def __init__(self):
            self.events, self.aux_calls = [], 0

        def on_task_start(self, model, task):
            self.events.append(("start", task))

        def on_task_end(self, model, task):
            self.events.append(("end", task))

        def auxiliary_loss(self, model, batch):
            self.aux_calls += 1
            return th.zeros(())

    recorder = Recorder()
    model = SparcPPO("MlpSparcPolicy", masked_cartpole(), plugins=[recorder], **SMALL)
    model.start_task("a")
    model.learn(64)
    model.end_task()
    assert recorder.events == [("start", "a"), ("end", "a")]
    assert recorder.aux_calls == 2  # 2 epochs x 1 minibatch per rollout


def test_behaviour_cloning_replays_a_minibatch_sized_sample_of_every_finished_task():
    from sparc_rl.buffers import SequenceBatch
    from sparc_rl.plugins import BehaviourCloning

    cloning = BehaviourCloning(chunks_per_task=3)
    model = SparcPPO("MlpSparcPolicy", masked_cartpole(), plugins=[cloning], seed=0, **SMALL)
    model.start_task("a")
    model.learn(64)
    model.end_task()
    batch = next(model.rollout_buffer.get_sequences(32, 16))
    assert isinstance(batch, SequenceBatch) and batch.states.shape[0] == 2
    with th.no_grad():  # the teacher is the policy itself: nothing to distil yet
        assert float(cloning.auxiliary_loss(model, batch)) == pytest.approx(0.0, abs=1e-6)
        model.policy.action_net.bias.add_(th.tensor([2.0, -2.0]))
        assert float(cloning.auxiliary_loss(model, batch)) > 0.1
    model.start_task("b")
    model.learn(64)
    model.end_task()
    assert cloning.memory is not None
    observations, starts, teacher, states = cloning.memory
    assert states.shape[0] == 6 and observations.shape[:2] == starts.shape == teacher.shape[:2] == (16, 6)


class _ShiftedObservations:
    """Env factory: observations are noise around ``centre``; reward for action 1."""

    def __init__(self, centre: float):
        self.centre = centre

    def __call__(self):
        centre = self.centre

        class Shifted(gym.Env):
            observation_space = spaces.Box(-20, 20, (3,), np.float32)
            action_space = spaces.Discrete(2)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.t = 0
                return self._obs(), {}

            def _obs(self):
                return (centre + self.np_random.normal(size=3)).astype(np.float32)

            def step(self, action):
                self.t += 1
                return self._obs(), float(action), False, self.t >= 10, {}

        return Shifted()


def _trained_with_detector(transfer_episodes: int | None = None):
    """A SPARC model with a novelty detector, trained on the first hidden task (observations near 0)."""
    from sparc_rl.plugins import NoveltyBoundaryDetector

    detector = NoveltyBoundaryDetector(min_rollouts=3)
    model = SparcPPO(
        "MlpSparcPolicy",
        DummyVecEnv([_ShiftedObservations(0.0)] * 2),
        plugins=[detector],
        seed=0,
        transfer_episodes=transfer_episodes,
        policy_kwargs=dict(hidden_size=16, n_slots=4),
        **SMALL,
    )
    model.learn(64 * 6)
    return detector, model


def test_novelty_detector_consolidates_once_when_hidden_task_changes():
    detector, model = _trained_with_detector()
    assert detector.detected == 0 and int(model.policy.actor_core.n_filled) == 0
    model.set_env(DummyVecEnv([_ShiftedObservations(5.0)] * 2))
    model.learn(64 * 6, reset_num_timesteps=False)
    assert detector.detected == 1 and int(model.policy.actor_core.n_filled) == 1
    # the slot's key describes the old task (centred on 0), not the new one
    assert float(model.policy.actor_core.key_mean[0, :3].abs().max()) < 1.0


def test_a_detected_task_starts_from_the_best_of_the_stored_skills_and_a_restart(monkeypatch):
    """As at an announced boundary: the first rollout after the detection tries every start first."""
    detector, model = _trained_with_detector(transfer_episodes=2)
    assert model.current_task is None
    trials = []
    choose = model._choose_start
    monkeypatch.setattr(model, "_choose_start", lambda env: trials.append(model.current_task) or choose(env))
    model.set_env(DummyVecEnv([_ShiftedObservations(5.0)] * 2))
    model.learn(64 * 6, reset_num_timesteps=False)
    assert detector.detected == 1 and model._stored_skills == [(0, 0)]
    assert trials == ["segment-1"] and model.current_task == "segment-1"


def test_novelty_detector_closes_an_unlearned_skill_as_end_task_does(monkeypatch):
    detector, model = _trained_with_detector()
    model.ep_success_buffer.extend([False] * 10)  # the old task ends unlearned
    restarts = []
    restore = model.policy.restore_plasticity
    monkeypatch.setattr(model.policy, "restore_plasticity", lambda: restarts.append(1) or restore())
    model.set_env(DummyVecEnv([_ShiftedObservations(5.0)] * 2))
    model.learn(64 * 6, reset_num_timesteps=False)
    assert detector.detected == 1 and int(model.policy.actor_core.n_filled) == 0 and len(restarts) == 1


def test_end_task_consolidates_only_a_learned_skill():
    model = small_model("sparc", n_slots=2, core_kwargs={"write_only_novel": False})
    model.learn(64)
    model.ep_success_buffer.clear()
    model.ep_success_buffer.extend([False] * 9 + [True])
    plastic = model.policy.actor_core.cell.weight_hh.clone()
    assert not model.end_task() and int(model.policy.actor_core.n_filled) == 0
    # nothing written, but the next task does not start from the unlearned task's plastic path
    assert not th.allclose(model.policy.actor_core.cell.weight_hh, plastic)
    model.ep_success_buffer.extend([True] * 10)
    assert model.end_task() and int(model.policy.actor_core.n_filled) == 1
    model.consolidation_threshold = None
    model.ep_success_buffer.extend([False] * 20)
    assert model.end_task() and int(model.policy.actor_core.n_filled) == 2


def test_after_consolidating_a_new_task_starts_without_the_last_skills_lean():
    """The frozen heads must not carry the last skill's lean into the next task's exploration."""
    model = small_model("sparc", n_slots=0)  # no memory: the plastic path alone drives the heads
    model.learn(64)
    with th.no_grad():  # a strong lean learned on the last task
        model.policy.action_net.bias.copy_(th.tensor([3.0, -3.0]))
        model.policy.value_net.bias.fill_(5.0)
    obs = th.as_tensor(masked_cartpole(64, seed=5).reset(), dtype=th.float32)
    state = th.zeros(64, model.policy.state_size)
    starts = th.ones(1, 64)

    def logits_and_values() -> tuple[th.Tensor, th.Tensor]:
        with th.no_grad():
            logits = model.policy.action_logits_sequences(obs, state, starts)
            values = model.policy.predict_values_step(obs, state, starts[0])
        return logits, values

    logits, values = logits_and_values()
    assert (logits[:, 0] - logits[:, 1]).min() > 5.0 and values.min() > 4.0  # the lean, before
    model.consolidate()
    logits, values = logits_and_values()
    # a fresh head per task: near-uniform logits, and values of zero (a random critic's high values
    # would teach the policy to avoid ending episodes)
    assert (logits[:, 0] - logits[:, 1]).abs().max() < 0.1
    assert values.abs().max() < 1e-5
    # through the frozen heads, the plastic output reads exactly as the task's own trainable head
    hidden = th.randn(5, 16)
    policy = model.policy
    for core, head in ((policy.actor_core, policy.action_net), (policy.critic_core, policy.value_net)):
        assert core.task_head.weight.requires_grad and not head.weight.requires_grad
        with th.no_grad():
            expected = core.task_head(core.output_norm(hidden))
            assert th.allclose(head(core._plastic_output(hidden, task_head=True)), expected, atol=1e-4)


@pytest.mark.parametrize("close", ["consolidate", "restore_plasticity"])
def test_a_restarted_plastic_path_starts_with_fresh_optimizer_state(close):
    """Adam's moments of the last task must not carry into a restarted plastic path; the rest keeps them."""
    model = small_model("sparc")
    model.learn(64)
    core, state = model.policy.actor_core, model.policy.optimizer.state
    with th.no_grad():
        core.input_norm.weight.fill_(3.0)
    trained = [p for p in core.plastic_parameters() if p.grad is not None]  # the gate trains once a slot exists
    assert trained and all(p in state for p in trained)
    restarted = core.plastic_parameters() + model.policy.critic_core.plastic_parameters()
    kept = [p for p in model.policy.parameters() if p in state and all(p is not q for q in restarted)]
    getattr(model.policy, close)(*([] if close == "restore_plasticity" else model._last_rollout()))
    assert not any(p in state for p in restarted)
    assert kept and all(p in state for p in kept)
    assert th.all(core.input_norm.weight == 1.0)  # shrink 0: back to the identity


def test_adam_updating_all_parameters_at_once_trains_exactly_as_one_at_a_time():
    """The default optimiser is SB3's Adam with ``foreach``; across a restart of the plastic path (whose
    parameters then have fewer Adam steps than the rest) it must train bit for bit as torch's
    one-tensor-at-a-time update, which is what the committed results were measured with."""
    models = []
    for optimizer_kwargs in (None, {"eps": 1e-5}):
        # built and trained one after the other: building a model seeds the global random generators
        model = small_model(
            "sparc", n_slots=2, core_kwargs={"write_only_novel": False}, optimizer_kwargs=optimizer_kwargs
        )
        model.learn(64)
        model.consolidate()
        model.learn(64, reset_num_timesteps=False)
        models.append(model)
    default, one_at_a_time = (model.policy.optimizer.param_groups[0] for model in models)
    assert (default["foreach"], default["eps"]) == (True, 1e-5)
    assert (one_at_a_time["foreach"], one_at_a_time["eps"]) == (None, 1e-5)
    assert int(models[0].policy.actor_core.n_filled) == 1
    default_state, one_at_a_time_state = (model.policy.state_dict() for model in models)
    assert default_state.keys() == one_at_a_time_state.keys()
    for name, value in default_state.items():
        assert th.equal(value, one_at_a_time_state[name]), name


def _finish_episodes(model: SparcPPO, successes: list[bool]) -> None:
    """As if the current skill's training had just finished these episodes."""
    model.ep_success_buffer.extend(successes)
    model._skill_episodes += len(successes)


@pytest.mark.parametrize("consolidate_best", [True, False])
def test_a_skill_is_written_as_it_was_at_its_best_training_success(consolidate_best):
    model = small_model("sparc", n_slots=2, core_kwargs={"write_only_novel": False})
    model.consolidate_best = consolidate_best
    model.start_task("a")
    model.learn(64)
    core = model.policy.actor_core
    _finish_episodes(model, [True] * 100)
    model._remember_best_skill()
    at_best = core.cell.weight_hh.clone()
    with th.no_grad():  # training goes on and the policy falls back
        core.cell.weight_hh.add_(1.0)
    fallen = core.cell.weight_hh.clone()
    _finish_episodes(model, [False] * 40 + [True] * 60)
    model._remember_best_skill()
    assert model.end_task() and int(core.n_filled) == 1
    assert th.equal(core.slot_weight_hh[0], at_best if consolidate_best else fallen)
    assert model._best_skill is None  # the next skill starts its own record


def test_the_best_skill_is_recorded_only_once_a_full_window_belongs_to_it():
    model = small_model("sparc", n_slots=2)
    model.learn(64)
    model.start_task("a")
    model.ep_success_buffer.clear()
    _finish_episodes(model, [True] * 99)
    model._remember_best_skill()
    assert model._best_skill is None
    _finish_episodes(model, [True])
    model._remember_best_skill()
    assert model._best_skill is not None and model._best_skill[0] == 1.0
    model.start_task("b")  # the window now holds the last task's episodes
    model._remember_best_skill()
    assert model._best_skill is None


def test_collected_rollouts_count_the_skills_episodes():
    model = small_model("sparc")
    model.start_task("a")
    model.learn(256)
    assert model._skill_episodes == sum(1 for info in model.ep_info_buffer) > 0


def test_a_core_that_keeps_its_head_continues_the_last_task_unchanged():
    """restart_head=False: after consolidation the policy acts exactly as before (fine-tuning onwards)."""
    model = small_model("sparc", n_slots=2, core_kwargs={"shrink": 1.0, "perturb": 0.0, "restart_head": False})
    model.learn(64)
    obs = th.as_tensor(masked_cartpole(16, seed=5).reset(), dtype=th.float32)
    state = th.zeros(16, model.policy.state_size)
    starts = th.ones(1, 16)

    def logits_and_values() -> tuple[th.Tensor, th.Tensor]:
        with th.no_grad():
            return (
                model.policy.action_logits_sequences(obs, state, starts),
                model.policy.predict_values_step(obs, state, starts[0]),
            )

    before = logits_and_values()
    for _ in range(2):  # the first consolidation attaches the task heads, the second restarts them
        model.consolidate()
        model.policy.actor_core.n_filled.fill_(0)  # read the plastic path alone
        model.policy.critic_core.n_filled.fill_(0)
        after = logits_and_values()
        assert th.allclose(before[0], after[0], atol=1e-4) and th.allclose(before[1], after[1], atol=1e-4)


def test_starting_from_a_stored_skill_acts_exactly_as_that_skill():
    """Both kinds of slot: the first task's (written before the task heads exist) and a later task's."""
    model = small_model("sparc", n_slots=2, core_kwargs={"write_only_novel": False})
    policy = model.policy
    obs = th.as_tensor(masked_cartpole(16, seed=5).reset(), dtype=th.float32)
    state = th.zeros(16, policy.state_size)
    starts = th.ones(1, 16)

    def plastic_logits_and_values() -> tuple[th.Tensor, th.Tensor]:
        filled = int(policy.actor_core.n_filled)
        for core in (policy.actor_core, policy.critic_core):
            core.n_filled.fill_(0)  # read the plastic path alone
        with th.no_grad():
            result = (
                policy.action_logits_sequences(obs, state, starts),
                policy.predict_values_step(obs, state, starts[0]),
            )
        for core in (policy.actor_core, policy.critic_core):
            core.n_filled.fill_(filled)
        return result

    skills = []
    for _ in range(2):
        model.learn(64, reset_num_timesteps=False)
        skills.append(plastic_logits_and_values())
        model.consolidate()
    assert model._stored_skills == [(0, 0), (1, 1)]
    assert not th.allclose(plastic_logits_and_values()[0], skills[1][0], atol=1e-3)  # restarted
    for slot, (logits, values) in enumerate(skills):
        policy.start_from_skill((slot, slot))
        started = plastic_logits_and_values()
        assert th.allclose(started[0], logits, atol=1e-4) and th.allclose(started[1], values, atol=1e-4)
    assert policy.actor_core.task_head.weight.requires_grad
    with pytest.raises(ConfigError, match="Slot 2 is not filled"):
        policy.start_from_skill((2, 2))


@pytest.mark.parametrize(
    "returns, kept",
    [
        ((3.0, 5.0, 4.0), 0),
        ((3.0, 4.0, 5.0), 1),
        ((5.0, 3.0, 4.0), None),
        ((4.0, 4.0, 4.0), None),
        ((3.0, 5.0, 5.0), 0),
    ],
)
def test_a_task_trains_the_start_with_the_highest_trial_return(monkeypatch, returns, kept):
    """``returns``: the restart's, then each stored skill's; ``kept``: the slot that trains (``None``:
    the restart, exactly as tried)."""
    model = small_model("sparc", n_slots=3, core_kwargs={"write_only_novel": False})
    model.transfer_episodes = 3
    core = model.policy.actor_core
    for _ in range(2):
        model.learn(64, reset_num_timesteps=False)
        model.consolidate()
    model.start_task("c")
    restart = core.cell.weight_hh.clone()
    trial_returns = iter(returns)
    tried = []

    def fake_mean_return(env, episodes):
        tried.append(next(i for i in (None, 0, 1) if th.equal(core.cell.weight_hh, playing(i))))
        return next(trial_returns)

    def playing(slot):
        return restart if slot is None else core.slot_weight_hh[slot]

    monkeypatch.setattr(model, "_mean_return", fake_mean_return)
    model.learn(64, reset_num_timesteps=False)  # the choice comes before the first rollout
    assert tried == [None, 0, 1]  # the restart first, then each stored skill
    model.policy.restore_plasticity()
    restart = core.cell.weight_hh.clone()
    model._choose_start_pending = True
    trial_returns = iter(returns)
    model._choose_start(model.env)
    assert th.equal(core.cell.weight_hh, playing(kept))
    assert not model._choose_start_pending


def test_trial_episodes_count_as_env_steps_and_training_starts_on_fresh_episodes():
    model = small_model("sparc", n_slots=2, core_kwargs={"write_only_novel": False})
    model.transfer_episodes = 4
    model.learn(64)
    model.consolidate()
    model.start_task("b")
    before = model.num_timesteps
    model._choose_start(model.env)
    # 2 envs, episodes of at most 40 steps: 4 episodes per start take 2 to 80 steps each
    assert 2 * 2 * 2 <= model.num_timesteps - before <= 2 * 2 * 80
    assert model._last_episode_starts.all()
    mean = model._mean_return(masked_cartpole(2, seed=3), 4)
    assert 1.0 <= mean <= 40.0


def test_transfer_episodes_must_be_positive():
    with pytest.raises(ConfigError, match="transfer_episodes"):
        SparcPPO("MlpSparcPolicy", masked_cartpole(), transfer_episodes=0, **SMALL)


def _dict_observation_env():
    """A custom env with a dict observation, as many users' envs have."""

    class DictEnv(gym.Env):
        observation_space = spaces.Dict({"pos": spaces.Box(0, 1, (2,), np.float32), "flag": spaces.Discrete(2)})
        action_space = spaces.Discrete(3)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return {"pos": np.zeros(2, np.float32), "flag": 1}, {}

        def step(self, action):
            self.t += 1
            obs = {"pos": np.full(2, self.t / 10, np.float32), "flag": int(action == 1)}
            return obs, float(action == 1), self.t >= 10, False, {}

    return DictEnv()


def test_dict_observations_are_a_clear_error_naming_the_wrapper_that_flattens_them():
    with pytest.raises(
        ConfigError, match="got Dict\\(flag: Discrete\\(2\\), pos: Box\\(shape=\\(2,\\), dtype=float32\\)\\): wrap"
    ):
        SparcPPO("MlpSparcPolicy", make_vec_env(_dict_observation_env, n_envs=2), **SMALL)
    flat = make_vec_env(lambda: gym.wrappers.FlattenObservation(_dict_observation_env()), n_envs=2, seed=0)
    SparcPPO("MlpSparcPolicy", flat, seed=0, policy_kwargs=dict(hidden_size=8), **SMALL).learn(64)


class _ActionSpaceEnv:
    """A small env for each action space SB3's PPO supports."""

    SPACES = {
        "multi-discrete": lambda: spaces.MultiDiscrete([3, 2]),
        "multi-binary": lambda: spaces.MultiBinary(3),
        "box": lambda: spaces.Box(-1, 1, (2,), np.float32),
    }

    @staticmethod
    def make(kind):
        class Env(gym.Env):
            observation_space = spaces.Box(-1, 1, (3,), np.float32)
            action_space = _ActionSpaceEnv.SPACES[kind]()

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.t = 0
                return np.zeros(3, np.float32), {}

            def step(self, action):
                self.t += 1
                return np.full(3, self.t / 10, np.float32), float(np.sum(action)), self.t >= 10, False, {}

        return Env()


@pytest.mark.parametrize("kind", sorted(_ActionSpaceEnv.SPACES))
def test_every_action_space_of_sb3s_ppo_trains_through_tasks_with_a_plugin(kind):
    from sparc_rl.plugins import OnlineEWC

    env = make_vec_env(lambda: _ActionSpaceEnv.make(kind), n_envs=2, seed=0)
    model = SparcPPO("MlpSparcPolicy", env, seed=0, plugins=[OnlineEWC()], policy_kwargs=dict(hidden_size=8), **SMALL)
    for task in ("a", "b"):
        model.start_task(task)
        model.learn(64, reset_num_timesteps=False)
        model.end_task()  # EWC reads the stored actions' log-probabilities here
    actions, _ = model.predict(env.reset())
    assert actions.shape == (2, *env.action_space.shape)
    assert model.logger.name_to_value["train/auxiliary_loss"] > 0  # EWC's penalty joined the second task


def test_behaviour_cloning_refuses_actions_it_cannot_distil():
    from sparc_rl.plugins import BehaviourCloning

    env = make_vec_env(lambda: _ActionSpaceEnv.make("box"), n_envs=2, seed=0)
    with pytest.raises(ConfigError, match="behaviour-cloning plugin .* needs a Discrete action space, got Box"):
        SparcPPO("MlpSparcPolicy", env, plugins=[BehaviourCloning()], policy_kwargs=dict(hidden_size=8), **SMALL)


def _pixel_env():
    class Pixels(gym.Env):
        """64x64 camera-like frames (channels last, as most envs give them)."""

        observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
        action_space = spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return self.observation_space.sample(), {}

        def step(self, action):
            self.t += 1
            return self.observation_space.sample(), float(action), self.t >= 8, False, {}

    return Pixels()


def test_cnn_policy_picks_sb3s_nature_cnn_on_pixels_and_the_small_cnn_on_grids(tmp_path):
    from stable_baselines3.common.torch_layers import NatureCNN

    from sparc_rl.agents import load_agent
    from sparc_rl.policies import MinigridCNN

    env = make_vec_env(_pixel_env, n_envs=2, seed=0)
    model = SparcPPO("CnnSparcPolicy", env, seed=0, policy_kwargs=dict(hidden_size=8), **SMALL)
    assert isinstance(model.policy.features_extractor, NatureCNN) and model.policy.normalize_images
    model.learn(64)
    model.save(tmp_path / "pixels")
    loaded = SparcPPO.load(tmp_path / "pixels")
    assert isinstance(loaded.policy.features_extractor, NatureCNN) and loaded.policy.normalize_images

    lstm = load_agent("recurrent-ppo").build(env, seed=0)
    assert isinstance(lstm.policy.features_extractor, NatureCNN) and lstm.policy.normalize_images
    grid = make_vec_env(lambda: MinigridImageTask(gym.make("MiniGrid-DoorKey-5x5-v0")), n_envs=2, seed=0)
    for model in (SparcPPO("CnnSparcPolicy", grid, **SMALL), load_agent("recurrent-ppo").build(grid, seed=0)):
        assert isinstance(model.policy.features_extractor, MinigridCNN) and not model.policy.normalize_images


def test_plugin_state_is_saved_with_the_model(tmp_path):
    from sparc_rl.plugins import BehaviourCloning, OnlineEWC

    plugins = [OnlineEWC(), BehaviourCloning(chunks_per_task=2)]
    model = SparcPPO(
        "MlpSparcPolicy",
        masked_cartpole(),
        seed=0,
        plugins=plugins,
        policy_kwargs=dict(core="lstm", hidden_size=8),
        **SMALL,
    )
    model.start_task("a")
    model.learn(64)
    model.end_task()
    model.save(tmp_path / "model")
    ewc, cloning = SparcPPO.load(tmp_path / "model").plugins
    assert ewc.fisher is not None and ewc.fisher.keys() == plugins[0].fisher.keys()
    assert all(th.equal(ewc.fisher[name], plugins[0].fisher[name]) for name in ewc.fisher)
    assert all(th.equal(a, b) for a, b in zip(cloning.memory, plugins[1].memory, strict=True))


def test_sb3s_vec_envs_wrappers_and_callbacks_work_as_with_ppo(tmp_path):
    """What an SB3 user reaches for: SubprocVecEnv, VecNormalize, EvalCallback and CheckpointCallback."""
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

    kwargs = {"max_steps": 40}
    env = VecNormalize(
        make_vec_env(
            "SparcRL/DriftingCartPole-v0",
            n_envs=2,
            seed=0,
            env_kwargs=kwargs,
            vec_env_cls=SubprocVecEnv,
            vec_env_kwargs={"start_method": "fork"},
        )
    )
    eval_env = VecNormalize(
        make_vec_env("SparcRL/DriftingCartPole-v0", n_envs=2, seed=1, env_kwargs=kwargs), training=False
    )
    evaluation = EvalCallback(
        eval_env, eval_freq=64, n_eval_episodes=2, best_model_save_path=str(tmp_path), log_path=str(tmp_path), verbose=0
    )
    checkpoints = CheckpointCallback(save_freq=64, save_path=str(tmp_path / "ck"), save_vecnormalize=True)
    model = SparcPPO("MlpSparcPolicy", env, seed=0, transfer_episodes=2, policy_kwargs=dict(hidden_size=8), **SMALL)
    try:
        for task in ("a", "b"):
            model.start_task(task)
            callback = CallbackList([evaluation, checkpoints])
            model.learn(128, callback=callback, reset_num_timesteps=False, progress_bar=True)
            model.end_task()
        assert len(evaluation.evaluations_results) == 2 and np.isfinite(evaluation.best_mean_reward)
        assert {p.name for p in (tmp_path / "ck").iterdir()} >= {
            "rl_model_128_steps.zip",
            "rl_model_vecnormalize_256_steps.pkl",
        }
        SparcPPO.load(tmp_path / "best_model", env=env).learn(64)
    finally:
        env.close()


def test_float_images_keep_the_small_cnn():
    from sparc_rl.policies import MinigridCNN, is_pixel_image

    floats = spaces.Box(0.0, 1.0, (3, 64, 64), np.float32)
    assert not is_pixel_image(floats) and is_pixel_image(spaces.Box(0, 255, (3, 40, 40), np.uint8))
    assert not is_pixel_image(spaces.Box(0, 255, (7, 7, 3), np.uint8))
    policy = CnnSparcPolicy(floats, spaces.Discrete(2), lambda _: 3e-4, hidden_size=8)
    assert isinstance(policy.features_extractor, MinigridCNN)


@pytest.mark.parametrize("view", [3, 5, 7])
def test_the_default_agents_train_on_minigrid_views_of_every_size(view):
    """``agent_view_size`` 3 or 5 used to crash MinigridCNN (its max-pool left nothing to convolve)."""
    from sparc_rl.agents import load_agent

    env = make_vec_env(
        lambda: MinigridImageTask(gym.make("MiniGrid-Empty-5x5-v0", agent_view_size=view)), n_envs=2, seed=0
    )
    for name in ("sparc", "recurrent-ppo"):
        model = load_agent(name).build(env, seed=0, algorithm_overrides={"n_steps": 16, "batch_size": 32})
        model.learn(32)
        assert model.num_timesteps == 32


def test_the_small_cnn_keeps_its_7x7_layers_and_refuses_channels_last_or_tiny_images():
    from torch import nn

    from sparc_rl.policies import MinigridCNN

    layers = [type(layer) for layer in MinigridCNN(spaces.Box(0, 10, (3, 7, 7), np.uint8)).cnn]
    relu = nn.ReLU
    assert layers == [nn.Conv2d, relu, nn.MaxPool2d, nn.Conv2d, relu, nn.Conv2d, relu, nn.Flatten]
    # checkpoints of 7x7 models name the same parameters
    assert [name for name, _ in MinigridCNN(spaces.Box(0, 10, (3, 7, 7), np.uint8)).named_parameters()] == [
        "cnn.0.weight", "cnn.0.bias", "cnn.3.weight", "cnn.3.bias", "cnn.5.weight", "cnn.5.bias",
        "linear.0.weight", "linear.0.bias",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r"channels-first images \(C, H, W\); got shape \(7, 7, 3\) \(float32\)"):
        CnnSparcPolicy(spaces.Box(0.0, 1.0, (7, 7, 3), np.float32), spaces.Discrete(2), lambda _: 3e-4)
    with pytest.raises(ConfigError, match=r"takes images \(C, H, W\); got observations of shape \(5,\): use an MLP"):
        CnnSparcPolicy(spaces.Box(0.0, 1.0, (5,), np.float32), spaces.Discrete(2), lambda _: 3e-4)
    with pytest.raises(ConfigError, match="at least 2x2 cells"):
        MinigridCNN(spaces.Box(0, 10, (3, 1, 1), np.uint8))


def test_target_kl_stops_an_update_early_and_clip_range_vf_bounds_the_value_change():
    """SB3's PPO settings that change the update: a tiny ``target_kl`` ends it after the first minibatch
    (one epoch counted, as SB3 counts), and ``clip_range_vf`` trains values within the clip."""
    settings = dict(n_steps=32, batch_size=16, seq_len=16, n_epochs=10, policy_kwargs=dict(hidden_size=8))
    stopped = SparcPPO("MlpSparcPolicy", masked_cartpole(), seed=0, target_kl=1e-12, **settings).learn(64)
    assert stopped._n_updates == 1  # one rollout: its first epoch stopped, not 10 epochs
    full = SparcPPO("MlpSparcPolicy", masked_cartpole(), seed=0, **settings).learn(64)
    assert full._n_updates == 10
    clipped = SparcPPO("MlpSparcPolicy", masked_cartpole(), seed=0, clip_range_vf=1e-3, **settings).learn(64)
    free = SparcPPO("MlpSparcPolicy", masked_cartpole(), seed=0, clip_range_vf=None, **settings).learn(64)
    assert clipped.logger.name_to_value["train/value_loss"] != free.logger.name_to_value["train/value_loss"]


class _StepCounter(gym.Env):
    """Observes how many steps its episode has run."""

    observation_space = spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 0.0, False, self.t >= 50, {}


def test_a_callback_that_stops_training_leaves_the_model_where_the_envs_are():
    """The next learn() must continue from the envs' last observation, which the state already follows."""

    class StopAtThirdStep(BaseCallback):
        def _on_step(self) -> bool:
            return self.n_calls < 3

    model = SparcPPO(
        "MlpSparcPolicy", DummyVecEnv([_StepCounter] * 2), seed=0, policy_kwargs=dict(hidden_size=8), **SMALL
    )
    model.learn(64, callback=StopAtThirdStep())
    assert model.num_timesteps == 6
    np.testing.assert_array_equal(model._last_obs, [[3.0], [3.0]])
    assert not model._last_episode_starts.any()


def test_rollout_novelty_is_the_kl_divergence_both_ways_and_sees_features_vanish():
    from sparc_rl.plugins import rollout_novelty

    # per dimension 0.5 * (v/v' + v'/v + (m - m')^2 (1/v + 1/v') - 2): 0.4375 for the first, 0 for the equal second
    mean, var = th.tensor([0.0, 1.0]), th.tensor([1.0, 0.5])
    assert rollout_novelty(mean, var, th.tensor([0.5, 1.0]), th.tensor([2.0, 0.5])) == pytest.approx(0.21875)
    # a tile that is sometimes there (the old segment) and then never (the new rollout)
    segment = (th.tensor([0.1]), th.tensor([0.09]))
    vanished = (th.tensor([0.0]), th.tensor([1e-3]))  # the detector's variance floor
    assert rollout_novelty(*vanished, *segment) > 1.0 and rollout_novelty(*segment, *segment) == 0.0


def test_torchs_distribution_checks_are_off_while_learning_and_predicting_and_restored_after():
    seen: list[bool] = []

    class RecordChecks(BaseCallback):
        def _on_step(self) -> bool:
            seen.append(Distribution._validate_args)
            return True

    model = small_model()
    checking = Distribution._validate_args
    model.learn(64, callback=RecordChecks())
    assert seen and not any(seen)
    assert Distribution._validate_args == checking
    Distribution.set_default_validate_args(True)
    try:
        model.predict(np.zeros((2, 2), np.float32))
        assert Distribution._validate_args is True
    finally:
        Distribution.set_default_validate_args(checking)


def test_rollout_tensors_a_callback_sees_are_inference_tensors_that_a_clone_frees_for_autograd():
    """As the README says: rollouts run under ``torch.inference_mode()``; a clone made outside it can
    enter an autograd graph, and learning after a stopped rollout picks up the state it left."""
    kept: list[th.Tensor] = []

    class KeepValues(BaseCallback):
        def _on_step(self) -> bool:
            kept.append(self.locals["values"])
            return len(kept) < 5

    model = small_model()
    model.learn(64, callback=KeepValues())
    stopped_at = model.num_timesteps
    assert stopped_at == 5 * model.n_envs
    assert kept[0].is_inference() and model._last_state.is_inference()
    weight = th.ones(1, requires_grad=True)
    (kept[0].clone() * weight).sum().backward()
    assert weight.grad is not None
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        (kept[0] * weight).sum().backward()
    model.learn(64, reset_num_timesteps=False)  # continues from the inference-mode state it left
    assert model.num_timesteps == stopped_at + 64


class _NaNObservationAfter(gym.Env):
    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(3, np.nan if self.t > 10 else 0.5, np.float32)
        return obs, 1.0, False, False, {}


@pytest.mark.parametrize("core", ["sparc", "lstm", "gru"])
def test_nan_observations_stop_with_the_recurrent_state_message_not_an_error_inside_torch(core):
    """With torch's distribution checks off, the state check must come before any distribution is built."""
    model = SparcPPO(
        "MlpSparcPolicy",
        DummyVecEnv([_NaNObservationAfter] * 2),
        seed=0,
        policy_kwargs=dict(core=core, hidden_size=8),
        **SMALL,
    )
    checking = Distribution._validate_args
    with pytest.raises(FloatingPointError, match="Non-finite recurrent state"):
        model.learn(64)
    with pytest.raises(FloatingPointError, match="Non-finite recurrent state"):
        model.predict(np.full((2, 3), np.nan, np.float32))
    assert Distribution._validate_args == checking  # restored after the errors too
