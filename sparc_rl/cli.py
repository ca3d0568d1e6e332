"""The ``sparc-rl`` command: train, eval, play, bench, list."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from sparc_rl.errors import SparcError

#: train's options that define a run, with their defaults: ``--resume`` takes them from the run's config.json
RUN_OPTIONS: dict[str, Any] = {
    "curriculum": "cartpole-drift",
    "agent": "sparc",
    "steps_per_task": None,
    "seed": 0,
    "run_dir": None,
    "eval_episodes": None,
    "reference": False,
    "vec_env": "dummy",
}


def _train(args: argparse.Namespace) -> int:
    import torch

    from sparc_rl.runner import ContinualRunner

    if args.threads < 1:
        raise SparcError(f"--threads must be at least 1, got {args.threads}.")
    torch.set_num_threads(args.threads)
    if args.resume:
        given = [
            f"--{name.replace('_', '-')}" for name, default in RUN_OPTIONS.items() if getattr(args, name) != default
        ]
        if given:
            raise SparcError(
                f"--resume continues the run in {args.resume!r} as its config.json says; {', '.join(given)} "
                "cannot change it: leave them out, or start a new run without --resume."
            )
        runner = ContinualRunner.resume(args.resume, progress=not args.no_progress)
    else:
        runner = ContinualRunner(
            args.curriculum,
            args.agent,
            steps_per_task=args.steps_per_task,
            seed=args.seed,
            run_dir=args.run_dir,
            eval_episodes=args.eval_episodes,
            reference=args.reference,
            progress=not args.no_progress,
            vec_env=args.vec_env,
        )
    result = runner.run()
    metrics = result.metrics
    print(f"Run finished in {result.wall_time_s:.0f} s ({result.env_steps} env steps): {result.run_dir}")
    for key in ("average_performance", "forgetting", "backward_transfer", "forward_transfer"):
        value = metrics.get(key)
        print(f"  {key:20s} {'n/a' if value is None else f'{value:.3f}'}")
    print(f"Report: {result.run_dir / 'report.md'}   TensorBoard: tensorboard --logdir {result.run_dir / 'tb'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from sparc_rl.runner import evaluate_saved_model

    curriculum, scores = evaluate_saved_model(args.model, args.curriculum, args.episodes, args.seed)
    print(f"curriculum: {curriculum.name} ({curriculum.source})")
    width = max(len(name) for name in scores)
    print(f"{'task':{width}s}  success  mean return  episodes")
    for name, score in scores.items():
        print(f"{name:{width}s}  {score.success_rate:7.2f}  {score.mean_return:11.2f}  {score.episodes:8d}")
    mean = sum(s.success_rate for s in scores.values()) / len(scores)
    print(f"{'average':{width}s}  {mean:7.2f}")
    return 0


def _play(args: argparse.Namespace) -> int:
    from sparc_rl.play import play

    try:
        env_kwargs = json.loads(args.env_kwargs) if args.env_kwargs else {}
    except json.JSONDecodeError as error:
        raise SparcError(
            f'--env-kwargs is not valid JSON ({error}): write a JSON object, e.g. \'{{"season": "winter"}}\'.'
        ) from None
    if not isinstance(env_kwargs, dict):
        raise SparcError(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}.")
    wrappers = [w for w in (args.wrappers or "").split(",") if w]
    returns = play(
        args.model,
        args.env,
        args.episodes,
        env_kwargs,
        wrappers,
        args.record,
        args.seed,
        deterministic=not args.stochastic,
        task=args.task,
        curriculum=args.curriculum,
    )
    for index, value in enumerate(returns):
        print(f"episode {index}: return {value:.2f}")
    print(f"mean return over {len(returns)} episodes: {sum(returns) / len(returns):.2f}")
    if args.record:
        print(f"recorded: {args.record}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sparc_rl.bench import run_bench

    agents = [a for a in args.agents.split(",") if a]
    out = Path(args.out) if args.out else Path("runs") / f"bench-{Path(args.curriculum).stem}"
    try:
        result_dir = run_bench(
            args.curriculum,
            agents,
            args.seeds,
            out,
            args.steps_per_task,
            args.eval_episodes,
            args.jobs,
            reference=not args.no_reference,
            reference_agent=args.reference_agent,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            f"sparc-rl: bench interrupted; the same command continues it: the finished runs in {str(out)!r} are "
            "reused and the others resume from their last checkpoint.",
            file=sys.stderr,
        )
        return 130
    print((result_dir / "results.md").read_text())
    print(f"Every run's retention curves: tensorboard --logdir {result_dir / 'runs'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from sparc_rl.agents import PLUGINS, list_agents, load_agent
    from sparc_rl.config import builtin_dir
    from sparc_rl.curriculum import NAMED_WRAPPERS, list_curricula, load_curriculum

    # where the files are, so that a preset can be copied and edited into the user's own
    print(f"Curricula (--curriculum; the files are in {builtin_dir('envs')}):")
    for name in list_curricula():
        curriculum = load_curriculum(name, check_spaces=False)
        print(
            f"  {name:18s} {len(curriculum.tasks)} tasks, {curriculum.boundary} boundaries: "
            + ", ".join(curriculum.task_names)
        )
    print(f"Agents (--agent; the files are in {builtin_dir('agents')}):")
    for name in list_agents():
        print(f"  {name:18s} {load_agent(name).description}")
    print('Environments (and any registered Gymnasium id, or "module:EnvId" for your own):')
    for env_id in sorted(i for i in gym.registry if i.startswith("SparcRL/")):
        print(f"  {env_id}")
    print("Wrappers (a curriculum task's wrappers, applied in order):")
    for name, wrapper in sorted(NAMED_WRAPPERS.items()):
        print(f"  {name:24s} {_summary(wrapper)}")
    print('Plugins (in an agent file, or "module:ClassName" for your own):')
    for name, plugin in sorted(PLUGINS.items()):
        print(f"  {name:24s} {_summary(plugin)}")
    return 0


def _summary(cls: type, width: int = 100) -> str:
    """The first sentence of a class's docstring on one line, without markup, cut at ``width``."""
    sentence = " ".join((cls.__doc__ or cls.__name__).replace("``", "").split()).split(". ")[0].rstrip(".")
    return sentence + "." if len(sentence) < width else sentence[: width - 3].rsplit(" ", 1)[0] + " ..."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparc-rl", description="Continual RL with SPARC recurrent policies.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('sparc-rl')}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an agent through a curriculum, evaluating every task")
    train.add_argument(
        "--curriculum", default=RUN_OPTIONS["curriculum"], help="built-in name or YAML path (default %(default)s)"
    )
    train.add_argument(
        "--agent", default=RUN_OPTIONS["agent"], help="built-in preset name or YAML path (default %(default)s)"
    )
    train.add_argument("--steps-per-task", type=int, default=None, help="override every task's budget")
    train.add_argument(
        "--seed",
        type=int,
        default=RUN_OPTIONS["seed"],
        help="fixes the whole run: model, envs and evaluation episodes (default %(default)s)",
    )
    train.add_argument("--run-dir", default=None, help="output folder (default: runs/<curriculum>-<agent>-...)")
    train.add_argument(
        "--eval-episodes", type=int, default=None, help="episodes per task per evaluation (default: the curriculum's)"
    )
    train.add_argument(
        "--reference",
        action="store_true",
        help="also train single-task references (cached) to measure forward transfer",
    )
    train.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: fastest for these small networks on a laptop CPU)",
    )
    train.add_argument(
        "--vec-env",
        choices=["dummy", "subproc"],
        default=RUN_OPTIONS["vec_env"],
        help="dummy (default): the training envs step one after another in this process; subproc: each in its "
        "own process (SB3's SubprocVecEnv), meant for slow envs on machines with cores to spare; the same "
        "results, but a run resumed inside a task continues with fresh random draws",
    )
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("eval", help="score a saved model on every task of a curriculum")
    evaluate.add_argument("--model", required=True, help="a checkpoint zip, e.g. RUN_DIR/checkpoints/task-0-<name>.zip")
    evaluate.add_argument(
        "--curriculum",
        default=None,
        help="built-in name or YAML path (default: the curriculum of the run the checkpoint is from, else "
        "cartpole-drift)",
    )
    evaluate.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the curriculum's)")
    evaluate.add_argument("--seed", type=int, default=12345, help="fixes the evaluation episodes")
    evaluate.set_defaults(func=_eval)

    play = sub.add_parser("play", help="run a saved policy in a registered env, optionally recording it")
    play.add_argument("--model", required=True, help="a checkpoint zip, e.g. RUN_DIR/checkpoints/task-0-<name>.zip")
    play.add_argument(
        "--env",
        default=None,
        help='registered Gymnasium id, or "module:EnvId" to import the module that registers it (default: a '
        "task of the curriculum, see --task)",
    )
    play.add_argument(
        "--task",
        default=None,
        help="play in this task of the curriculum, with its kwargs and wrappers (default: the task a "
        "task-<i>-<name>.zip checkpoint ended)",
    )
    play.add_argument(
        "--curriculum", default=None, help="built-in name or YAML path of --task's curriculum (default: the run's)"
    )
    play.add_argument("--env-kwargs", default=None, help='JSON object, e.g. \'{"season": "winter"}\'')
    play.add_argument("--wrappers", default=None, help="comma-separated wrapper names, as in curriculum files")
    play.add_argument("--episodes", type=int, default=3, help="default %(default)s")
    play.add_argument("--record", default=None, help="write an animation (.gif or .mp4)")
    play.add_argument("--seed", type=int, default=0, help="fixes the episodes")
    play.add_argument("--stochastic", action="store_true", help="sample actions instead of the most likely")
    play.set_defaults(func=_play)

    bench = sub.add_parser("bench", help="compare agents x seeds on one curriculum")
    bench.add_argument(
        "--curriculum", default="garden-seasons", help="built-in name or YAML path (default %(default)s)"
    )
    bench.add_argument(
        "--agents",
        default="sparc,sparc-no-memory,sparc-no-gate,lstm,gru,lstm-ewc,lstm-clone,recurrent-ppo",
        help="comma-separated presets or agent YAML paths (default: all eight presets)",
    )
    bench.add_argument("--seeds", type=int, default=3, help="runs per agent, seeds 0 to N-1")
    bench.add_argument("--steps-per-task", type=int, default=None, help="override every task's budget")
    bench.add_argument(
        "--eval-episodes", type=int, default=None, help="episodes per task per evaluation (default: the curriculum's)"
    )
    bench.add_argument("--jobs", type=int, default=None, help="parallel processes (default: one per core)")
    bench.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/bench-<curriculum>); runs already in it are reused when finished "
        "and continued when interrupted",
    )
    bench.add_argument("--no-reference", action="store_true", help="skip single-task references")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar of finished runs")
    bench.add_argument(
        "--reference-agent",
        help="agent trained from scratch on each task as every agent's forward-transfer reference (default: the first)",
    )
    bench.set_defaults(func=_bench)

    listing = sub.add_parser("list", help="list built-in curricula, agents and environments")
    listing.set_defaults(func=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # env ids and plugins in "module:Name" form may name a module in the current folder; appended, not
    # first as under `python -m`, so that a stray file there cannot shadow an installed package
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    with warnings.catch_warnings():  # puts the warning display back when done (tests call main in-process)
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            return int(args.func(args))
        except SparcError as error:
            print(f"sparc-rl: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("sparc-rl: interrupted", file=sys.stderr)
            return 130


def _one_line_warnings(show: Any) -> Any:
    """The package's own warnings as ``sparc-rl: warning: ...`` lines, like its errors; others' warnings
    (their source line helps there) as ``show`` prints them. Either way on lines of their own, with a
    progress bar drawn again below them."""
    from tqdm import tqdm

    package = Path(__file__).resolve().parent

    def show_warning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        with tqdm.external_write_mode(file=file or sys.stderr):
            if Path(filename).resolve().is_relative_to(package):
                print(f"sparc-rl: warning: {message}", file=file or sys.stderr)
            else:
                show(message, category, filename, lineno, file, line)

    return show_warning


if __name__ == "__main__":
    sys.exit(main())
