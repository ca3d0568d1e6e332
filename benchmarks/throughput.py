"""Throughput benchmark (issue: SPARC recurrent actor-critic and SparcPPO).

MiniGrid DoorKey-5x5, image observations (flattened for the MLP policies), 8 envs in a DummyVecEnv,
n_steps=128, hidden size 64, side by side in one process:

  random actions (the ceiling), SB3 PPO (MLP), sb3-contrib RecurrentPPO (LSTM, its defaults, the same
  with sparc_rl's whole-sequence LSTM policy, and with SparcPPO's epochs/batch), SparcPPO with the lstm
  core and with the sparc core (0, 1 and 8 filled memory slots).

With --solve instead: the training time SparcPPO-sparc and RecurrentPPO need to reach 0.9 success.

    python benchmarks/throughput.py --steps 20480 --rounds 4   # -> benchmarks/results/throughput.md
    python benchmarks/throughput.py --solve            # -> benchmarks/results/time_to_solve.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

import sparc_rl
from sparc_rl import SparcPPO
from sparc_rl.envs import MinigridImageTask
from sparc_rl.lstm_policies import MlpLstmPolicy as WholeSequenceMlpLstmPolicy

ENV_ID = "MiniGrid-DoorKey-5x5-v0"
HIDDEN = 64
N_ENVS = 8
N_STEPS = 128


def make_env() -> gym.Env:
    return MinigridImageTask(gym.make(ENV_ID))


def vec_env(seed: int = 0):
    return make_vec_env(make_env, n_envs=N_ENVS, seed=seed)


class RandomActions:
    """Env stepping alone, with random actions: the ceiling of every learner's speed."""

    def __init__(self, seed: int) -> None:
        self.env = vec_env(seed)
        self.env.reset()

    def run(self, steps: int) -> tuple[int, float]:
        """Step ``steps`` env steps: (steps done, seconds)."""
        start = time.perf_counter()
        for _ in range(steps // N_ENVS):
            self.env.step(np.array([self.env.action_space.sample() for _ in range(N_ENVS)]))
        return steps // N_ENVS * N_ENVS, time.perf_counter() - start


class Learner:
    """A model timed on ``learn`` after one warm-up rollout and update."""

    def __init__(self, model) -> None:
        self.model = model
        model.learn(N_STEPS * N_ENVS)

    def run(self, steps: int) -> tuple[int, float]:
        """Learn for ``steps`` more env steps: (steps done, seconds)."""
        before, start = self.model.num_timesteps, time.perf_counter()
        self.model.learn(steps, reset_num_timesteps=False)
        return self.model.num_timesteps - before, time.perf_counter() - start


def builders(seed: int) -> dict[str, callable]:
    # every consolidation writes a slot here (by default a task that memory already serves writes none)
    sparc_kwargs = dict(core="sparc", hidden_size=HIDDEN, n_slots=8, core_kwargs=dict(write_only_novel=False))
    return {
        "SB3 PPO (MLP 64x64)": lambda: PPO("MlpPolicy", vec_env(seed), n_steps=N_STEPS, seed=seed, device="cpu"),
        "RecurrentPPO LSTM-64 (its defaults: 10 epochs, batch 128)": lambda: RecurrentPPO(
            "MlpLstmPolicy",
            vec_env(seed),
            n_steps=N_STEPS,
            seed=seed,
            device="cpu",
            policy_kwargs=dict(lstm_hidden_size=HIDDEN),
        ),
        "RecurrentPPO LSTM-64 (its defaults), whole-sequence LSTM (the recurrent-ppo preset's)": lambda: RecurrentPPO(
            WholeSequenceMlpLstmPolicy,
            vec_env(seed),
            n_steps=N_STEPS,
            seed=seed,
            device="cpu",
            policy_kwargs=dict(lstm_hidden_size=HIDDEN),
        ),
        "RecurrentPPO LSTM-64 (4 epochs, batch 256, as SparcPPO)": lambda: RecurrentPPO(
            "MlpLstmPolicy",
            vec_env(seed),
            n_steps=N_STEPS,
            n_epochs=4,
            batch_size=256,
            seed=seed,
            device="cpu",
            policy_kwargs=dict(lstm_hidden_size=HIDDEN),
        ),
        "SparcPPO lstm core": lambda: SparcPPO(
            "MlpSparcPolicy",
            vec_env(seed),
            n_steps=N_STEPS,
            seed=seed,
            policy_kwargs=dict(core="lstm", hidden_size=HIDDEN),
        ),
        "SparcPPO sparc core, 0 slots filled": lambda: SparcPPO(
            "MlpSparcPolicy", vec_env(seed), n_steps=N_STEPS, seed=seed, policy_kwargs=sparc_kwargs
        ),
        "SparcPPO sparc core, 1 slot filled": lambda: filled(
            SparcPPO("MlpSparcPolicy", vec_env(seed), n_steps=N_STEPS, seed=seed, policy_kwargs=sparc_kwargs), 1
        ),
        "SparcPPO sparc core, 8 slots filled": lambda: filled(
            SparcPPO("MlpSparcPolicy", vec_env(seed), n_steps=N_STEPS, seed=seed, policy_kwargs=sparc_kwargs), 8
        ),
    }


def filled(model: SparcPPO, slots: int) -> SparcPPO:
    model.learn(N_STEPS * N_ENVS)
    for _ in range(slots):
        model.consolidate()
    filled_slots = int(model.policy.actor_core.n_filled)
    assert filled_slots == slots, f"{filled_slots} slots filled instead of {slots}"
    return model


def time_to_solve(
    name: str, model, budget: int, max_seconds: float, chunk: int = 8192
) -> tuple[float | None, int, float]:
    """Wall seconds (training only) until deterministic success on 50 episodes reaches 0.9."""
    trained, train_time, best = 0, 0.0, 0.0
    eval_env = make_vec_env(make_env, n_envs=10, seed=999)
    while trained < budget and train_time < max_seconds:
        start = time.perf_counter()
        model.learn(chunk, reset_num_timesteps=trained == 0)
        train_time += time.perf_counter() - start
        trained = model.num_timesteps
        rewards, _ = evaluate_policy(model, eval_env, n_eval_episodes=50, return_episode_rewards=True)
        success = float(np.mean(np.array(rewards) > 0))
        best = max(best, success)
        print(f"  {name}: {trained} steps, {train_time:.0f} s training, success {success:.2f}", flush=True)
        if success >= 0.9:
            return train_time, trained, success
    return None, trained, best


def header(title: str, command: str) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}. Machine: {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}, {platform.platform()}, torch {torch.__version__}, "
        f"sparc-rl {sparc_rl.__version__}, torch threads 1. Command: `{command}`.",
        "",
    ]


def throughput_report(steps: int, seed: int, rounds: int) -> list[str]:
    """Every contender's ``steps`` timed in ``rounds`` chunks, the contenders taking turns (in an order
    rotating by one per round): this machine's speed drifts by up to 2x within minutes, and taking
    turns spreads that drift over all contenders alike. Speed = steps / seconds, summed over rounds."""
    contenders = {"random actions (ceiling)": RandomActions(seed).run}
    contenders |= {name: Learner(build()).run for name, build in builders(seed).items()}
    names = list(contenders)
    chunk = max(N_STEPS * N_ENVS, steps // rounds // (N_STEPS * N_ENVS) * N_STEPS * N_ENVS)
    done = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    for round_index in range(rounds):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            chunk_steps, chunk_seconds = contenders[name](chunk)
            done[name] += chunk_steps
            seconds[name] += chunk_seconds
            print(f"round {round_index + 1}/{rounds}, {name}: {chunk_steps / chunk_seconds:.0f} steps/s", flush=True)
    sps = {name: done[name] / seconds[name] for name in names}

    rppo = sps["RecurrentPPO LSTM-64 (its defaults: 10 epochs, batch 128)"]
    rppo_same = sps["RecurrentPPO LSTM-64 (4 epochs, batch 256, as SparcPPO)"]
    rppo_whole = sps["RecurrentPPO LSTM-64 (its defaults), whole-sequence LSTM (the recurrent-ppo preset's)"]
    ppo = sps["SB3 PPO (MLP 64x64)"]
    sparc0 = sps["SparcPPO sparc core, 0 slots filled"]
    sparc1 = sps["SparcPPO sparc core, 1 slot filled"]
    sparc8 = sps["SparcPPO sparc core, 8 slots filled"]
    lines = header(
        "Throughput: MiniGrid DoorKey-5x5, 8 envs, n_steps=128, hidden 64",
        f"python benchmarks/throughput.py --steps {steps} --rounds {rounds}",
    )
    lines += [
        f"Env steps per second of `learn` (after one warm-up rollout), one process: every contender built first, "
        f"then {steps} steps each, timed in {rounds} rounds of {chunk} steps with the contenders taking turns "
        "(the order rotating by one per round), so the machine's drift falls on all of them alike.",
        "",
        "| what | env steps/s | vs RecurrentPPO (defaults) | vs SB3 PPO |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {value:.0f} | {value / rppo:.2f}x | {value / ppo:.2f}x |" for name, value in sps.items()]
    lines += [
        "",
        f"- SparcPPO-sparc (8 slots filled) / RecurrentPPO defaults: **{sparc8 / rppo:.2f}x** (target >= 4x); "
        f"/ RecurrentPPO with the same epochs and batch: {sparc8 / rppo_same:.2f}x.",
        f"- SparcPPO-sparc (0 slots) / SB3 PPO: **{sparc0 / ppo:.2f}x**; with 8 slots filled: "
        f"**{sparc8 / ppo:.2f}x** (target >= 0.5x).",
        f"- Step cost growth from 1 to 8 filled slots: **{sparc1 / sparc8:.2f}x** (target <= 1.5x).",
        f"- RecurrentPPO with `sparc_rl.lstm_policies` (same computation, one LSTM call per sequence) / "
        f"sb3-contrib's policy: {rppo_whole / rppo:.2f}x.",
    ]
    return lines


def solve_report(seed: int, budget: int, max_seconds: float) -> list[str]:
    lines = header(
        "Time to 0.9 success on MiniGrid DoorKey-5x5 (8 envs, n_steps=128, hidden 64)",
        f"python benchmarks/throughput.py --solve --solve-budget {budget} --solve-seconds {max_seconds:.0f}",
    )
    lines += [
        f"Deterministic success over 50 episodes, checked every 8192 steps; each contender stops at 0.9, at "
        f"{budget} env steps, or after {max_seconds:.0f} s of training (evaluation time not counted).",
        "",
        "| agent | training seconds to 0.9 | env steps | success at stop |",
        "|---|---|---|---|",
    ]
    contenders = {
        "SparcPPO sparc core": lambda: SparcPPO(
            "MlpSparcPolicy",
            vec_env(seed),
            n_steps=N_STEPS,
            seed=seed,
            policy_kwargs=dict(core="sparc", hidden_size=HIDDEN, n_slots=8),
        ),
        "RecurrentPPO LSTM-64 (defaults)": lambda: RecurrentPPO(
            "MlpLstmPolicy",
            vec_env(seed),
            n_steps=N_STEPS,
            seed=seed,
            device="cpu",
            policy_kwargs=dict(lstm_hidden_size=HIDDEN),
        ),
    }
    for name, build in contenders.items():
        seconds, steps, success = time_to_solve(name, build(), budget, max_seconds)
        shown = f"{seconds:.0f}" if seconds is not None else f"not reached in {max_seconds:.0f} s"
        lines.append(f"| {name} | {shown} | {steps} | {success:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20480, help="env steps timed per contender, over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="timing rounds, each contender once per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solve", action="store_true", help="measure time to 0.9 success instead of throughput")
    parser.add_argument("--solve-budget", type=int, default=300_000)
    parser.add_argument("--solve-seconds", type=float, default=480.0, help="training-time cap per contender")
    parser.add_argument("--out", default=None, help="default: results/throughput.md or results/time_to_solve.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same for every contender; 1 thread is fastest for these small networks
    if args.solve:
        lines = solve_report(args.seed, args.solve_budget, args.solve_seconds)
        out = Path(args.out or "benchmarks/results/time_to_solve.md")
    else:
        lines = throughput_report(args.steps, args.seed, args.rounds)
        out = Path(args.out or "benchmarks/results/throughput.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
