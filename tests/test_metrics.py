import pytest

from sparc_rl import metrics

# R[i][j]: task j after stage i
MATRIX = [
    [0.9, 0.1, 0.0],
    [0.5, 0.8, 0.2],
    [0.3, 0.6, 1.0],
]


def test_average_performance_is_the_final_row_mean():
    assert metrics.average_performance(MATRIX) == pytest.approx((0.3 + 0.6 + 1.0) / 3)


def test_forgetting_and_backward_transfer_by_hand():
    assert metrics.forgetting_per_task(MATRIX) == pytest.approx([0.9 - 0.3, 0.8 - 0.6])
    assert metrics.forgetting(MATRIX) == pytest.approx(0.4)
    assert metrics.backward_transfer(MATRIX) == pytest.approx(-0.4)


def test_one_task_has_no_forgetting_or_backward_transfer():
    assert metrics.forgetting([[0.7]]) is None
    assert metrics.backward_transfer([[0.7]]) is None
    assert metrics.average_performance([[0.7]]) == pytest.approx(0.7)


def test_a_task_never_learned_but_learned_later_gives_negative_forgetting():
    matrix = [[0.0, 0.0], [0.5, 1.0]]
    assert metrics.forgetting(matrix) == pytest.approx(-0.5)


def test_forward_transfer_by_hand():
    assert metrics.forward_transfer_per_task([0.6, 0.5], [0.5, 0.5]) == pytest.approx([0.2, 0.0])
    assert metrics.forward_transfer_per_task([0.2], [0.6]) == pytest.approx([-1.0])
    # a reference that is already perfect: the gap is the plain difference
    assert metrics.forward_transfer_per_task([0.8], [1.0]) == pytest.approx([-0.2])
    with pytest.raises(ValueError):
        metrics.forward_transfer([0.1], [0.1, 0.2])


HISTORY = [
    (0, 100, [0.2, 0.0]),
    (0, 200, [0.95, 0.0]),
    (1, 100, [0.5, 0.4]),
    (1, 200, [0.4, 0.8]),
]


def test_own_stage_auc_and_steps_to_threshold():
    assert metrics.own_stage_auc(HISTORY, 2) == pytest.approx([(0.2 + 0.95) / 2, (0.4 + 0.8) / 2])
    assert metrics.steps_to_threshold(HISTORY, 2, 0.9) == [200, None]
    assert metrics.steps_to_threshold(HISTORY, 2, 0.4) == [200, 100]


def test_bootstrap_interval_contains_the_mean_and_handles_one_value():
    mean, low, high = metrics.bootstrap_ci([0.1, 0.5, 0.9, 0.4])
    assert low <= mean <= high and mean == pytest.approx(0.475)
    assert metrics.bootstrap_ci([0.3]) == pytest.approx((0.3, 0.3, 0.3))


def test_bad_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        metrics.average_performance([[0.1, 0.2]])


def test_summarise_collects_everything():
    summary = metrics.summarise([[0.95, 0.0], [0.4, 0.8]], HISTORY, reference_auc=[0.5, 0.5])
    assert summary["forgetting"] == pytest.approx(0.55)
    assert summary["forward_transfer_per_task"] == pytest.approx([(0.575 - 0.5) / 0.5, (0.6 - 0.5) / 0.5])
    assert summary["plasticity_steps_to_threshold"] == [200, None]
    assert summary["plasticity_final_own_score"] == pytest.approx([0.95, 0.8])
