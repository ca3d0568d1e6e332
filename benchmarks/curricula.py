"""Curriculum benchmark (issue: non-stationary environments and curricula).

1. Every task of every built-in curriculum, trained alone with SparcPPO (the `sparc` preset) on its
   curriculum budget: final success and steps to 0.9 (target: >= 0.9 within the budget).
2. Interference on garden-seasons: the `lstm` preset fine-tuned season after season; the largest drop
   of an earlier season's success from the end of its own stage to any later stage (target: >= 0.5).

    python benchmarks/curricula.py --jobs 2 --out benchmarks/results/curricula.md

``--references BENCH_DIR`` adds more seeds without training: the single-task reference runs a
``sparc-rl bench`` folder cached (the `sparc` preset alone on each task, per seed), for the tasks of
the curricula given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from sparc_rl.curriculum import list_curricula, load_curriculum


def single_task(job: tuple[str, int, str, int]) -> dict:
    curriculum_name, index, out, seed = job
    torch.set_num_threads(1)
    from sparc_rl.runner import ContinualRunner

    curriculum = load_curriculum(curriculum_name)
    task = curriculum.tasks[index]
    alone = dataclasses.replace(curriculum, name=f"{curriculum.name}-{task.name}", tasks=(task,))
    start = time.time()
    runner = ContinualRunner(
        alone,
        "sparc",
        seed=seed,
        run_dir=Path(out) / f"{Path(curriculum_name).stem}-{task.name}",
        progress=False,
        command="benchmarks/curricula.py",
    )
    result = runner.run()
    reached = [steps for _, steps, scores in runner.state.history if scores[0] >= 0.9]
    return {
        "curriculum": Path(curriculum_name).stem,
        "task": task.name,
        "budget": task.steps,
        "final": result.matrix[0][0],
        "best": max(s[0] for _, _, s in runner.state.history),
        "steps_to_0.9": min(reached) if reached else None,
        "seconds": time.time() - start,
    }


def interference(job: tuple[str, int, str, int]) -> dict:
    curriculum_name, _, out, seed = job
    torch.set_num_threads(1)
    from sparc_rl.runner import ContinualRunner

    start = time.time()
    runner = ContinualRunner(
        curriculum_name,
        "lstm",
        seed=seed,
        run_dir=Path(out) / f"{Path(curriculum_name).stem}-lstm",
        progress=False,
        command="benchmarks/curricula.py",
    )
    result = runner.run()
    matrix = result.matrix
    drops = {}
    for j in range(len(matrix) - 1):
        later = min(matrix[i][j] for i in range(j + 1, len(matrix)))
        drops[result.tasks[j]] = matrix[j][j] - later
    return {
        "curriculum": curriculum_name,
        "matrix": matrix,
        "tasks": result.tasks,
        "drops": drops,
        "seconds": time.time() - start,
    }


def reference_lines(curriculum_name: str, bench_dir: Path) -> list[str]:
    """A table of the cached single-task reference curves of a bench folder for this curriculum's tasks."""
    curriculum = load_curriculum(curriculum_name)
    wanted: dict[str, str] = {}
    for task in curriculum.to_dict()["tasks"]:  # a task that returns is named by its first stage
        wanted.setdefault(json.dumps({k: v for k, v in task.items() if k != "name"}, sort_keys=True), task["name"])
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for path in sorted((bench_dir / "runs" / ".reference-cache").glob("*.json")):
        entry = json.loads(path.read_text())
        key = entry["key"]
        name = wanted.get(json.dumps(key["task"], sort_keys=True))
        if name is None or key.get("algorithm_kwargs", {}) != curriculum.algorithm_kwargs:
            continue
        curves.setdefault(name, {})[key["seed"]] = [tuple(point) for point in entry["curve"]]
    if not curves:
        return []
    seeds = sorted({seed for by_seed in curves.values() for seed in by_seed})
    lines = [
        "",
        f"## More seeds: `{bench_dir}` single-task references ({curriculum.name})",
        "",
        "The `sparc` preset trained alone on each task by `sparc-rl bench` for forward transfer (its own",
        "environment seeds and evaluation episodes); success at each evaluation of the budget:",
        "",
        "| task | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
        "|---" * (len(seeds) + 1) + "|",
    ]
    reached = total = 0
    for name in (task.name for task in curriculum.tasks):
        if name not in curves:
            continue
        cells = []
        for seed in seeds:
            curve = curves[name].get(seed)
            if curve is None:
                cells.append("-")
                continue
            total += 1
            reached += any(score >= 0.9 for _, score in curve)
            cells.append(" ".join(f"{score:.1f}" for _, score in curve))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"{reached} of {total} task-seed pairs reach 0.9 within the budget."]
    return lines


def run(job: tuple[str, int, str, int]) -> dict:
    return interference(job) if job[1] < 0 else single_task(job)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curricula", default=",".join(list_curricula()))
    parser.add_argument("--runs", default="runs/bench-curricula")
    parser.add_argument("--out", default="benchmarks/results/curricula.md")
    parser.add_argument("--skip-interference", action="store_true", help="only the single-task runs")
    parser.add_argument("--references", type=Path, help="a sparc-rl bench --out folder whose references to add")
    args = parser.parse_args()
    names = args.curricula.split(",")
    jobs = [] if args.skip_interference else [("garden-seasons", -1, args.runs, args.seed)]  # the longest first
    for name in names:
        seen = set()
        for index, task in enumerate(load_curriculum(name).tasks):
            key = (task.env_id, tuple(sorted(task.kwargs.items())))
            if key not in seen:  # a task that returns is the same task: train it alone once
                seen.add(key)
                jobs.append((name, index, args.runs, args.seed))
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        results = pool.map(run, jobs, chunksize=1)
    singles = [r for r in results if "task" in r]
    lines = [
        "# Curriculum benchmark",
        "",
        f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}. Machine: {os.cpu_count()} CPU cores, "
        f"{platform.platform()}, torch {torch.__version__}, {args.jobs} runs in parallel, 1 torch thread each. "
        f"Command: `python benchmarks/curricula.py --jobs {args.jobs} --seed {args.seed} --curricula {args.curricula}"
        + (" --skip-interference" if args.skip_interference else "")
        + (f" --references {args.references}" if args.references else "")
        + "`.",
        "",
        "## Each task alone (SparcPPO, `sparc` preset, its curriculum budget, seed "
        f"{args.seed}; success = deterministic, {''}curriculum's eval episodes)",
        "",
        "| curriculum | task | budget | steps to 0.9 | final success | best success | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in singles:
        lines.append(
            f"| {r['curriculum']} | {r['task']} | {r['budget']} | {r['steps_to_0.9'] or 'not reached'} | "
            f"{r['final']:.2f} | {r['best']:.2f} | {r['seconds']:.0f} |"
        )
    passed = sum(r["steps_to_0.9"] is not None for r in singles)
    lines += ["", f"{passed} of {len(singles)} tasks reach 0.9 within their budget."]
    for r in results:
        if "drops" in r:
            worst = max(r["drops"], key=r["drops"].get)
            lines += [
                "",
                f"## Interference: `lstm` fine-tuned through {r['curriculum']} ({r['seconds']:.0f} s)",
                "",
                "| after \\ task | " + " | ".join(r["tasks"]) + " |",
                "|---" * (len(r["tasks"]) + 1) + "|",
            ]
            lines += [
                f"| {t} | " + " | ".join(f"{v:.2f}" for v in row) + " |"
                for t, row in zip(r["tasks"], r["matrix"], strict=True)
            ]
            lines += ["", f"Largest drop of an earlier season: **{r['drops'][worst]:.2f}** ({worst}) (target >= 0.5)."]
    if args.references:
        for name in names:
            lines += reference_lines(name, args.references)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
