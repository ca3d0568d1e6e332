"""Figures and the human-readable report of a run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sparc_rl.io import atomic_write_text  # noqa: E402

if TYPE_CHECKING:
    from sparc_rl.agents import AgentSpec
    from sparc_rl.curriculum import Curriculum


def retention_figure(tasks: Sequence[str], matrix: Sequence[Sequence[float]]) -> Figure:
    """Heatmap of ``R[i][j]``: rows are training stages, columns evaluated tasks."""
    size = max(3.0, 0.9 * len(tasks) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    data = np.full((len(tasks), len(tasks)), np.nan)
    for i, row in enumerate(matrix):
        data[i, : len(row)] = row
    image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), [f"after {t}" for t in tasks])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("training stage")
    for i in range(len(matrix)):
        for j in range(len(tasks)):
            if not np.isnan(data[i, j]):
                ax.text(
                    j,
                    i,
                    f"{data[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white" if data[i, j] < 0.6 else "black",
                    fontsize=8,
                )
    fig.colorbar(image, ax=ax, label="success rate")
    ax.set_title("Retention matrix")
    fig.tight_layout()
    return fig


def learning_curve_figure(
    tasks: Sequence[str], history: Sequence[tuple[int, int, Sequence[float]]], budgets: Sequence[int]
) -> Figure:
    """Score of every task over the whole run; dashed lines mark task boundaries."""
    fig, ax = plt.subplots(figsize=(8, 4))
    offsets = np.concatenate([[0], np.cumsum(budgets)])
    x = [offsets[stage] + steps for stage, steps, _ in history]
    for j, name in enumerate(tasks):
        ax.plot(x, [scores[j] for _, _, scores in history], marker="o", markersize=3, label=name)
    for boundary in offsets[1:-1]:
        ax.axvline(boundary, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Every task, evaluated throughout training")
    fig.tight_layout()
    return fig


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_report(
    run_dir: Path, curriculum: Curriculum, agent: AgentSpec, seed: int, metrics: dict[str, Any], partial: bool
) -> None:
    tasks = curriculum.task_names
    lines = [
        f"# Continual run: agent `{agent.name}` on curriculum `{curriculum.name}` (seed {seed})",
        "",
        f"Written {datetime.now(timezone.utc).isoformat(timespec='seconds')}."
        + (" **Partial: the run was interrupted; resume it with `sparc-rl train --resume`.**" if partial else ""),
        "",
        "## Summary",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("average_performance", "forgetting", "backward_transfer", "forward_transfer"):
        lines.append(f"| {key.replace('_', ' ')} | {_fmt(metrics.get(key))} |")
    lines += ["", "## Score matrix (success rate; row = after training on, column = task)", ""]
    lines.append("| after \\ task | " + " | ".join(tasks) + " |")
    lines.append("|---" * (len(tasks) + 1) + "|")
    for name, row in zip(tasks, metrics.get("matrix", []), strict=False):
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    steps = metrics.get("plasticity_steps_to_threshold")
    if steps:
        lines += ["", f"## Plasticity (steps into its own stage to reach {metrics.get('threshold', 0.9)})", ""]
        lines += [f"- {name}: {_fmt(s)}" for name, s in zip(tasks, steps, strict=False)]
    lines += [
        "",
        "Definitions: see `sparc_rl/metrics.py`. Forgetting = score at the end of a task's own stage minus "
        "its final score, averaged over all but the last task.",
        "",
        "![retention](retention.png)",
        "",
        "![learning curves](learning_curves.png)",
        "",
        f"TensorBoard: `tensorboard --logdir {run_dir / 'tb'}`",
    ]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
