"""Plasticity probe: does a SPARC agent learn the next task from a task-end checkpoint?

Loads a bench run's task-end checkpoint (taken after consolidation and the plastic path's
shrink-and-perturb restart), then trains the curriculum's next task side by side in five ways: as the
runner would (``as-is``), with the plastic GRUs re-initialised and the optimiser state dropped
(``reinit``), with memory not read at all (``memory-off``: the plastic path alone, as the runner
restarted it), with no memory read and the action and value heads trained directly from a fresh
start instead of each task's heads through the first task's frozen ones (``direct-heads``), with the
task's value head started at zero (``critic-zero``, what a consolidation does since 2026-11-30) or
with SB3's orthogonal gain 1 (``critic-gain-1``, what it did before), and, as a control, the same
agent untrained (``scratch``). Success (10 episodes) and
the gate mean are recorded every fifth of the budget. Every variant starts from a fresh random state
(``--seed``), unlike a run that trains on in memory and carries its random state into the stage.

    python benchmarks/plasticity_probe.py --curriculum minigrid-skills --task dist-shift \\
        --checkpoint benchmarks/results/bench-minigrid/runs/sparc-seed1/checkpoints/task-2-door-key.zip \\
        --seed 1   # appends to benchmarks/results/plasticity_probe.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from stable_baselines3.common.env_util import make_vec_env

from sparc_rl.cores import SparcCore
from sparc_rl.curriculum import load_curriculum
from sparc_rl.evaluation import evaluate_task
from sparc_rl.ppo import SparcPPO

VARIANTS = ("as-is", "reinit", "memory-off", "direct-heads", "critic-zero", "critic-gain-1", "scratch")


def sparc_cores(model: SparcPPO) -> tuple[SparcCore, SparcCore]:
    """The actor's and the critic's SPARC core."""
    actor, critic = model.policy.actor_core, model.policy.critic_core
    assert isinstance(actor, SparcCore) and isinstance(critic, SparcCore)
    return actor, critic


def probe(variant: str, curriculum: str, task_name: str, checkpoint: str, seed: int, steps: int) -> list[str]:
    torch.set_num_threads(1)
    loaded = load_curriculum(curriculum)
    index = loaded.task_names.index(task_name)
    task = loaded.tasks[index]
    env = make_vec_env(task.make_env, n_envs=8, seed=seed * 7919 + 5)
    if variant == "scratch":  # the control: the checkpoint's agent settings, untrained, on the same envs
        model = SparcPPO.load(checkpoint, device="cpu")
        model = SparcPPO(
            type(model.policy),
            env,
            **{key: getattr(model, key) for key in ("n_steps", "batch_size", "n_epochs", "seq_len", "ent_coef")},
            policy_kwargs=model.policy_kwargs,
            seed=seed,
        )
    else:
        model = SparcPPO.load(checkpoint, env=env, device="cpu")
    model.set_random_seed(seed)
    if variant == "reinit":
        for core in sparc_cores(model):
            core.cell.reset_parameters()
        model.policy._forget_optimizer_state()
    if variant in ("memory-off", "direct-heads"):  # the slots stay, but no core reads them
        for core in sparc_cores(model):
            core.n_filled.fill_(0)
        model._stored_skills = []  # nor does a transfer trial try them
    if variant == "direct-heads":  # and the action and value heads train directly, fresh, as from scratch
        actor, critic = sparc_cores(model)
        with torch.no_grad():
            for core, head, gain in ((actor, model.policy.action_net, 0.01), (critic, model.policy.value_net, 1)):
                assert isinstance(head, torch.nn.Linear) and core.task_head is not None
                core.readout_attached.fill_(False)
                core.task_head.requires_grad_(False)
                torch.nn.init.orthogonal_(head.weight, gain=gain)
                head.bias.zero_()
                head.requires_grad_(True)
                for param in head.parameters():
                    model.policy.optimizer.state.pop(param, None)
    if variant in ("critic-zero", "critic-gain-1"):
        critic = sparc_cores(model)[1]
        assert critic.task_head is not None
        with torch.no_grad():
            torch.nn.init.orthogonal_(critic.task_head.weight, gain=float(variant == "critic-gain-1"))
            critic.task_head.bias.zero_()
    model.start_task(task.name)
    cells = []
    for _ in range(5):
        model.learn(steps // 5, reset_num_timesteps=False)
        model.policy.diagnostics()  # restart the gate average for the evaluation
        score = evaluate_task(model, task, 10, 3000 + seed).success_rate
        gate = model.policy.diagnostics().get("gate_mean", 0.0)
        cells.append(f"{score:.1f} (gate {gate:.2f})")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curriculum", default="minigrid-skills")
    parser.add_argument("--task", default="dist-shift", help="the task to learn next")
    parser.add_argument("--checkpoint", required=True, help="a bench run's checkpoints/task-*.zip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=61440)
    parser.add_argument("--out", default="benchmarks/results/plasticity_probe.md")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    args = parser.parse_args()
    start = time.time()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    jobs = [(v, args.curriculum, args.task, args.checkpoint, args.seed, args.steps) for v in variants]
    with multiprocessing.get_context("fork").Pool(len(variants)) as pool:
        results = pool.starmap(probe, jobs)
    out = Path(args.out)
    lines = []
    if not out.exists():
        lines += [
            "# Plasticity probe: learning the next task from a task-end checkpoint",
            "",
            "Success over 10 episodes (gate mean) at each fifth of the budget; `as-is` trains as the runner",
            "does, `reinit` re-initialises the plastic GRUs and drops the optimiser state first, `memory-off`",
            "reads no memory slot, `direct-heads` also trains fresh action and value heads directly,",
            "`scratch` trains the same agent untrained.",
            "",
        ]
    lines += [
        f"## {args.task} from `{args.checkpoint}`, seed {args.seed}",
        "",
        f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}. Machine: {platform.platform()}, "
        f"torch {torch.__version__}, {time.time() - start:.0f} s for all. Command: `python "
        f"benchmarks/plasticity_probe.py --curriculum {args.curriculum} --task {args.task} --checkpoint "
        f"{args.checkpoint} --seed {args.seed} --steps {args.steps} --variants {args.variants}`",
        "",
        "| variant | " + " | ".join(f"{args.steps * k // 5} steps" for k in range(1, 6)) + " |",
        "|---|" + "---|" * 5,
    ]
    lines += [f"| {variant} | " + " | ".join(cells) + " |" for variant, cells in zip(variants, results, strict=True)]
    with out.open("a") as file:
        file.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
