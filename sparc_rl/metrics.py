"""Continual-learning metrics as pure functions over the score matrix and evaluation history.

Definitions (``R[i][j]``: score of task ``j`` at the end of training stage ``i``; ``T`` tasks; scores
are success rates in [0, 1]):

* **average performance** — ``mean_j R[T-1][j]``, the final evaluation (not a mean of the last few);
* **forgetting** of task ``j < T-1`` — ``R[j][j] - R[T-1][j]`` (end of its own stage minus final,
  as Avalanche's "first minus last" but taken at the end of the task's own stage); the mean over
  ``j < T-1``. Negative values mean the task improved later. ``None`` with one task;
* **backward transfer** — ``mean_{j<T-1} (R[T-1][j] - R[j][j])`` (so ``-forgetting`` with these
  definitions; both are reported because papers use both names). ``None`` with one task;
* **forward transfer** of task ``j`` — ``(AUC_j - AUC_ref_j) / (1 - AUC_ref_j)`` where ``AUC_j`` is the
  mean of task ``j``'s scores over the evaluations during its own stage and ``AUC_ref_j`` the same for
  a single-task run from scratch with the same budget; when ``AUC_ref_j = 1`` it is ``AUC_j - 1``;
* **plasticity** — per task, the steps into its own stage at which its score first reaches the
  threshold (``None`` if never), and its score at the end of its own stage ``R[j][j]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _matrix(matrix: Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(matrix, dtype=float)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ValueError(f"the score matrix must be square and non-empty, got shape {array.shape}")
    return array


def average_performance(matrix: Sequence[Sequence[float]]) -> float:
    return float(_matrix(matrix)[-1].mean())


def forgetting_per_task(matrix: Sequence[Sequence[float]]) -> list[float]:
    r = _matrix(matrix)
    return [float(r[j, j] - r[-1, j]) for j in range(r.shape[0] - 1)]


def forgetting(matrix: Sequence[Sequence[float]]) -> float | None:
    values = forgetting_per_task(matrix)
    return float(np.mean(values)) if values else None


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float | None:
    r = _matrix(matrix)
    values = [r[-1, j] - r[j, j] for j in range(r.shape[0] - 1)]
    return float(np.mean(values)) if values else None


def forward_transfer_per_task(auc: Sequence[float], reference_auc: Sequence[float]) -> list[float]:
    if len(auc) != len(reference_auc):
        raise ValueError(f"{len(auc)} AUC values but {len(reference_auc)} reference values")
    result = []
    for value, reference in zip(auc, reference_auc, strict=True):
        gap = 1.0 - reference
        result.append(float(value - reference if gap < 1e-8 else (value - reference) / gap))
    return result


def forward_transfer(auc: Sequence[float], reference_auc: Sequence[float]) -> float:
    return float(np.mean(forward_transfer_per_task(auc, reference_auc)))


def own_stage_auc(history: Sequence[tuple[int, int, Sequence[float]]], n_tasks: int) -> list[float]:
    """Mean score of each task over the evaluations made during its own stage.

    :param history: ``(stage, steps_into_stage, scores)`` rows in the order they were recorded
    """
    auc = []
    for task in range(n_tasks):
        own = [scores[task] for stage, _, scores in history if stage == task]
        auc.append(float(np.mean(own)) if own else 0.0)
    return auc


def steps_to_threshold(
    history: Sequence[tuple[int, int, Sequence[float]]], n_tasks: int, threshold: float = 0.9
) -> list[int | None]:
    """Steps into each task's own stage at which its score first reached ``threshold``."""
    result: list[int | None] = []
    for task in range(n_tasks):
        reached = [steps for stage, steps, scores in history if stage == task and scores[task] >= threshold]
        result.append(min(reached) if reached else None)
    return result


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.9, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval (Continual World reports 90%)."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(data, size=(n_resamples, data.size), replace=True).mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    return float(data.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def summarise(
    matrix: Sequence[Sequence[float]],
    history: Sequence[tuple[int, int, Sequence[float]]],
    reference_auc: Sequence[float] | None = None,
    threshold: float = 0.9,
) -> dict[str, object]:
    """All metrics of one run as a JSON-ready dict."""
    n_tasks = len(matrix)
    auc = own_stage_auc(history, n_tasks)
    r = _matrix(matrix)
    return {
        "average_performance": average_performance(matrix),
        "forgetting": forgetting(matrix),
        "forgetting_per_task": forgetting_per_task(matrix),
        "backward_transfer": backward_transfer(matrix),
        "forward_transfer": forward_transfer(auc, reference_auc) if reference_auc is not None else None,
        "forward_transfer_per_task": forward_transfer_per_task(auc, reference_auc)
        if reference_auc is not None
        else None,
        "own_stage_auc": auc,
        "reference_auc": list(reference_auc) if reference_auc is not None else None,
        "plasticity_steps_to_threshold": steps_to_threshold(history, n_tasks, threshold),
        "plasticity_final_own_score": [float(r[j, j]) for j in range(n_tasks)],
        "threshold": threshold,
    }
