import pytest
import torch as th

from sparc_rl.cores import CORES, SparcCore, make_core, normed_linear, unroll_together
from sparc_rl.errors import ConfigError

INPUT, HIDDEN = 6, 8


def _filled_sparc(n_slots: int = 3, filled: int = 1, **kwargs) -> SparcCore:
    th.manual_seed(0)
    kwargs.setdefault("write_only_novel", False)  # fill every slot, whatever the contexts
    core = SparcCore(INPUT, HIDDEN, n_slots=n_slots, **kwargs)
    for _ in range(filled):
        core.consolidate(th.randn(10, 4, INPUT), th.zeros(10, 4))
    return core


@pytest.mark.parametrize("name", sorted(CORES))
def test_step_and_unroll_shapes(name):
    core = make_core(name, INPUT, HIDDEN)
    state = core.initial_state(5)
    assert state.shape == (5, core.state_size)
    out, new_state = core.step(th.randn(5, INPUT), state)
    assert out.shape == (5, HIDDEN) and new_state.shape == state.shape
    outs, final = core.unroll(th.randn(7, 5, INPUT), state, th.zeros(7, 5))
    assert outs.shape == (7, 5, HIDDEN) and final.shape == state.shape


@pytest.mark.parametrize("filled", [0, 1])
@pytest.mark.parametrize("name", [*sorted(CORES), "sparc-no-memory"])
def test_unroll_equals_stepping_one_step_at_a_time(name, filled):
    if name == "sparc-no-memory":
        core = _filled_sparc(n_slots=0, filled=filled)  # consolidation only shrinks and perturbs
    elif name == "sparc":
        core = _filled_sparc(filled=filled)
    else:
        core = make_core(name, INPUT, HIDDEN)
    x, starts = th.randn(7, 3, INPUT), th.zeros(7, 3)
    starts[3, 1] = 1.0
    state = th.randn(3, core.state_size)
    outs, final = core.unroll(x, state, starts)
    stepped = []
    for t in range(7):
        out, state = core.step(x[t], state * (1 - starts[t]).unsqueeze(-1))
        stepped.append(out)
    assert th.allclose(outs, th.stack(stepped), atol=1e-6)
    assert th.allclose(final, state, atol=1e-6)


@pytest.mark.parametrize("kinds", [("sparc", "sparc"), ("lstm", "lstm"), ("gru", "gru"), ("lstm", "sparc")])
def test_unrolling_cores_together_equals_unrolling_each(kinds):
    """Actor and critic share one time loop on stacked weights: outputs, final states and gradients
    must be those of separate unrolls (memory read-outs and task heads included)."""
    cores = [_filled_sparc(readout_size=5) if kind == "sparc" else make_core(kind, INPUT, HIDDEN) for kind in kinds]
    for core in cores:
        if isinstance(core, SparcCore):
            core.attach_readout(th.randn(5, HIDDEN), th.randn(5))
            th.nn.init.normal_(core.cell.weight_hh)  # differ from the other core
    x, starts = th.randn(7, 3, INPUT), th.zeros(7, 3)
    starts[3, 1] = 1.0
    states = [th.randn(3, core.state_size) for core in cores]

    def loss_and_grads(together: bool) -> tuple[list[th.Tensor], list[th.Tensor]]:
        for core in cores:
            core.zero_grad()
        if together:
            results = unroll_together(cores, x, states, starts, [None, None])
        else:
            results = [core.unroll(x, state, starts) for core, state in zip(cores, states, strict=True)]
        sum(out.pow(2).sum() + out.sum() for out, _ in results).backward()
        grads = [p.grad.clone() for core in cores for p in core.parameters() if p.grad is not None]
        return [t for result in results for t in result], grads

    together, together_grads = loss_and_grads(True)
    separate, separate_grads = loss_and_grads(False)
    assert len(together_grads) == len(separate_grads) > 0
    for a, b in zip(together + together_grads, separate + separate_grads, strict=True):
        assert th.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CORES))
def test_unroll_resets_state_where_episode_starts(name):
    core = _filled_sparc() if name == "sparc" else make_core(name, INPUT, HIDDEN)
    x = th.randn(6, 3, INPUT)
    starts = th.zeros(6, 3)
    starts[3, 1] = 1.0
    random_state = th.randn(3, core.state_size)
    outs, _ = core.unroll(x, random_state, starts)
    # env 1 restarts at t=3: its outputs from t=3 on equal a fresh unroll of x[3:] from zeros
    fresh, _ = core.unroll(x[3:, 1:2], core.initial_state(1), th.zeros(3, 1))
    assert th.allclose(outs[3:, 1], fresh[:, 0], atol=1e-6)
    # env 0 does not restart: its outputs depend on the random initial state
    plain, _ = core.unroll(x[:, 0:1], core.initial_state(1), th.zeros(6, 1))
    assert not th.allclose(outs[:, 0], plain[:, 0], atol=1e-4)


def test_gradients_reach_every_trainable_part_of_sparc():
    core = _filled_sparc()
    # a familiar context (the key's own inputs) so the gate's learned part matters
    x = th.randn(12, 4, INPUT)
    outs, _ = core.unroll(x, core.initial_state(4), th.zeros(12, 4))
    outs.pow(2).sum().backward()
    for name, param in core.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_written_slots_are_unchanged_by_later_training():
    core = _filled_sparc(filled=2)
    probe_x = th.randn(4, INPUT)
    probe_h = th.randn(4, 2, HIDDEN)
    before_out, before_state = core.slot_step(probe_x, probe_h, 2)
    buffers_before = {
        n: b.clone() for n, b in core.named_buffers() if n.startswith(("slot_weight", "slot_bias", "key"))
    }
    optimizer = th.optim.Adam(core.parameters(), lr=1e-2)
    for _ in range(20):
        outs, _ = core.unroll(th.randn(8, 4, INPUT), core.initial_state(4), th.zeros(8, 4))
        loss = (outs - 1.0).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after_out, after_state = core.slot_step(probe_x, probe_h, 2)
    assert th.equal(before_out, after_out) and th.equal(before_state, after_state)
    for name, buffer in core.named_buffers():
        if name in buffers_before:
            assert th.equal(buffers_before[name], buffer), name


def test_consolidation_copies_plastic_path_into_slot():
    core = _filled_sparc(filled=0)
    x, h = th.randn(4, INPUT), th.randn(4, HIDDEN)
    plastic_out, _ = core.plastic_step(x, h)
    core.consolidate(th.randn(10, 4, INPUT), th.zeros(10, 4))
    slot_out, _ = core.slot_step(x, h.unsqueeze(1), 1)
    assert th.allclose(slot_out[:, 0], plastic_out, atol=1e-5)
    # and the plastic path was shrunk and perturbed for the next task
    assert not th.allclose(core.plastic_step(x, h)[0], plastic_out, atol=1e-4)


def test_a_slot_keeps_its_tasks_head_through_the_frozen_read_out():
    """After attach_readout each task trains its own head; its slot must still read as that head."""
    core = _filled_sparc(filled=0, readout_size=3, readout_gain=0.01)
    readout = th.nn.Linear(HIDDEN, 3)
    core.attach_readout(readout.weight.detach(), readout.bias.detach())
    assert core.task_head.weight.requires_grad
    with th.no_grad():  # a task head trained away from its fresh start, and a trained output norm
        core.task_head.weight.normal_()
        core.task_head.bias.normal_()
        core.output_norm.weight.uniform_(0.5, 2.0)
        core.output_norm.bias.normal_()
    x, h = th.randn(4, INPUT), th.randn(4, HIDDEN)
    with th.no_grad():
        own_logits = core.task_head(core.output_norm(core.cell(core.input_norm(x), h)))
        assert th.allclose(readout(core.plastic_step(x, h)[0]), own_logits, atol=1e-4)
        core.consolidate(th.randn(10, 4, INPUT), th.zeros(10, 4))
        slot_out, _ = core.slot_step(x, h.unsqueeze(1), 1)
        assert th.allclose(readout(slot_out[:, 0]), own_logits, atol=1e-4)
        core.restart_output()  # the next task starts from a fresh head: near-uniform logits
        assert readout(core.plastic_step(x, h)[0]).std(dim=1).max() < 0.05


def test_restart_output_needs_a_read_out():
    with pytest.raises(ConfigError, match="attach_readout"):
        _filled_sparc(filled=0, readout_size=3).restart_output()


def test_evict_replaces_least_used_slot_when_full():
    core = _filled_sparc(n_slots=2, filled=2, memory_policy="evict")
    core.slot_usage.copy_(th.tensor([5.0, 1.0]))
    new_key = th.full((10, 4, INPUT), 3.0)
    core.consolidate(new_key, th.zeros(10, 4))
    assert int(core.n_filled) == 2
    assert th.allclose(core.key_mean[1], th.full((INPUT,), 3.0))


def test_merge_joins_the_two_closest_slots_when_full():
    th.manual_seed(0)
    core = SparcCore(INPUT, HIDDEN, n_slots=3, memory_policy="merge", write_only_novel=False)
    for centre in (0.0, 0.1, 10.0):
        core.consolidate(centre + 0.01 * th.randn(10, 4, INPUT), th.zeros(10, 4))
    core.consolidate(th.full((10, 4, INPUT), -10.0), th.zeros(10, 4))
    means = sorted(float(m.mean()) for m in core.key_mean)
    assert means[0] == pytest.approx(-10.0, abs=0.01)
    assert means[1] == pytest.approx(0.05, abs=0.02)  # the 0.0 and 0.1 slots merged
    assert means[2] == pytest.approx(10.0, abs=0.02)


def test_gate_leans_on_memory_only_in_familiar_contexts():
    core = _filled_sparc(filled=0, evidence_rate=1.0)
    familiar = th.zeros(10, 4, INPUT)
    core.consolidate(familiar + 0.1 * th.randn(10, 4, INPUT), th.zeros(10, 4))
    with th.no_grad():
        core.diagnostics()
        core.step(th.zeros(4, INPUT), core.initial_state(4))
        near = core.diagnostics()["gate_mean"]
        core.step(th.full((4, INPUT), 50.0), core.initial_state(4))
        far = core.diagnostics()["gate_mean"]
    assert near > 0.5 and far < 0.01


def test_bad_core_settings_give_clear_errors():
    with pytest.raises(ConfigError, match="Unknown core 'transformer'"):
        make_core("transformer", INPUT, HIDDEN)
    with pytest.raises(ConfigError, match="hidden_size must be a positive integer"):
        make_core("gru", INPUT, 0)
    with pytest.raises(ConfigError, match="does not take \\['n_slot'\\]"):
        make_core("sparc", INPUT, HIDDEN, n_slot=3)
    with pytest.raises(ConfigError, match="n_slots must be >= 0"):
        make_core("sparc", INPUT, HIDDEN, n_slots=-1)


def test_hard_routing_reads_only_the_best_key_slot():
    th.manual_seed(0)
    core = SparcCore(INPUT, HIDDEN, n_slots=2, router_temperature=0.0, evidence_rate=1.0, write_only_novel=False)
    core.consolidate(th.zeros(10, 4, INPUT) + 0.01 * th.randn(10, 4, INPUT), th.zeros(10, 4))
    core.consolidate(th.full((10, 4, INPUT), 5.0) + 0.01 * th.randn(10, 4, INPUT), th.zeros(10, 4))
    x = th.full((3, INPUT), 5.0)
    attention, familiarity = core._route(core.key_nll(x, 2))
    assert th.equal(attention, th.tensor([[0.0, 1.0]] * 3))
    assert bool((familiarity > 0.99).all())
    slots = core.slot_step(x, th.zeros(3, 2, HIDDEN), 2)[0]
    with th.no_grad():
        core.gate_weights.fill_(100.0)  # the learned part fully open: the output is the routed slot's
        out, _ = core.step(x, core.initial_state(3))
    assert th.allclose(out, slots[:, 1], atol=1e-3)  # familiarity is just under 1


def test_a_broader_key_does_not_take_over_a_narrower_task():
    """Data of a task whose inputs are a subset of a later task's is still routed to its own key."""
    th.manual_seed(0)
    core = SparcCore(INPUT, HIDDEN, n_slots=2, router_temperature=0.0, write_only_novel=False)
    narrow = 0.05 * th.randn(20, 4, INPUT)
    broad = th.cat([narrow, 3.0 * th.randn(20, 4, INPUT)])
    core.consolidate(narrow, th.zeros(20, 4))
    core.consolidate(broad, th.zeros(40, 4))
    evidence = core.running_evidence(core.key_nll(0.05 * th.randn(20, 4, INPUT), 2), th.zeros(20, 4))
    assert bool((evidence.argmin(-1) == 0).all())


def test_familiarity_is_calibrated_on_each_key_own_spread():
    th.manual_seed(0)
    core = SparcCore(INPUT, HIDDEN, n_slots=1, write_only_novel=False)
    own = th.randn(50, 4, INPUT)
    core.consolidate(own, th.zeros(50, 4))
    familiar = core.familiarity(th.randn(50, 4, INPUT), th.zeros(50, 4))
    shifted = core.familiarity(th.randn(50, 4, INPUT) + 2.0, th.zeros(50, 4))
    assert float(familiar.mean()) > 0.9 and float(shifted.mean()) < 0.05


def test_write_only_novel_skips_tasks_that_memory_already_serves():
    th.manual_seed(0)
    core = SparcCore(INPUT, HIDDEN, n_slots=3, write_only_novel=True)
    familiar = th.zeros(10, 4, INPUT) + 0.1 * th.randn(10, 4, INPUT)
    core.consolidate(familiar, th.zeros(10, 4))
    core.consolidate(familiar, th.zeros(10, 4))
    assert int(core.n_filled) == 1 and int(core.n_consolidations) == 2
    core.consolidate(th.full((10, 4, INPUT), 5.0), th.zeros(10, 4))
    assert int(core.n_filled) == 2


def test_only_familiar_contexts_train_the_routed_slot_gate():
    th.manual_seed(0)
    core = SparcCore(INPUT, HIDDEN, n_slots=3, router_temperature=0.0, write_only_novel=False)
    core.consolidate(0.1 * th.randn(20, 4, INPUT), th.zeros(20, 4))
    core.consolidate(5.0 + 0.1 * th.randn(20, 4, INPUT), th.zeros(20, 4))
    before = core.gate_weights.detach().clone()
    novel = -8.0 + 0.1 * th.randn(6, 4, INPUT)
    core.unroll(novel, core.initial_state(4), th.zeros(6, 4))[0].pow(2).sum().backward()
    assert core.gate_weights.grad is None or not bool(core.gate_weights.grad.any())
    core.zero_grad()
    like_second = 5.0 + 0.1 * th.randn(6, 4, INPUT)
    core.unroll(like_second, core.initial_state(4), th.zeros(6, 4))[0].pow(2).sum().backward()
    grad = core.gate_weights.grad
    assert grad is not None and bool(grad[1].any()) and not bool(grad[0].any()) and not bool(grad[2].any())
    assert th.equal(core.gate_weights.detach(), before)


def test_the_learned_gate_moves_gate_speed_times_faster_and_recalibrates_at_a_restart():
    th.manual_seed(0)
    core = SparcCore(INPUT, HIDDEN, n_slots=2, router_temperature=0.0, write_only_novel=False, gate_speed=50.0)
    familiar = 0.1 * th.randn(20, 4, INPUT)
    core.consolidate(familiar, th.zeros(20, 4))
    optimizer = th.optim.Adam([core.gate_weights], lr=1e-3)
    # a loss that wants less memory in the output: the familiar slot's gate closes
    core.unroll(familiar[:6], core.initial_state(4), th.zeros(6, 4))[0].pow(2).sum().backward()
    optimizer.step()
    step = (core.gate_speed * core.gate_weights.detach()[0] - SparcCore.INITIAL_GATE_LOGIT).abs()
    assert th.allclose(step[step > 0], th.tensor(50.0 * 1e-3), rtol=1e-3)  # Adam's first step: lr per weight
    core.restore_plasticity()
    assert th.allclose(core.gate_speed * core.gate_weights.detach(), th.tensor(SparcCore.INITIAL_GATE_LOGIT))


def test_normed_linear_gives_layer_norm_then_linear_and_its_gradients():
    """The input part's cheaper backward (for inputs that need no gradient) must give PyTorch's gradients."""
    th.manual_seed(0)
    norm, linear = th.nn.LayerNorm(INPUT, dtype=th.float64), th.nn.Linear(INPUT, 12, dtype=th.float64)
    with th.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = th.randn(5, 3, INPUT, dtype=th.float64)
    parameters = [norm.weight, norm.bias, linear.weight, linear.bias]

    def outputs_and_gradients(fn) -> list[th.Tensor]:
        out = fn(x, norm, linear.weight, linear.bias)
        grads = th.autograd.grad((out.pow(3) + out).sum(), parameters)
        return [out, *grads]

    cheap = outputs_and_gradients(normed_linear)
    reference = outputs_and_gradients(lambda x, n, w, b: th.nn.functional.linear(n(x), w, b))
    for a, b in zip(cheap, reference, strict=True):
        assert th.allclose(a, b, atol=1e-10)
    assert type(normed_linear(x, norm, linear.weight, linear.bias).grad_fn).__name__ == "_NormedLinearBackward"
