"""The README's examples stay true: its YAML files parse as what they claim to be."""

import re
from pathlib import Path

import yaml

from sparc_rl.agents import parse_agent
from sparc_rl.curriculum import check_task_spaces, parse_curriculum

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readmes_curriculum_and_agent_files_are_valid():
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL)]
    curricula = [block for block in blocks if "tasks" in block]
    agents = [block for block in blocks if "algorithm" in block]
    assert len(curricula) == 2 and len(agents) == 1 and len(blocks) == 3
    for curriculum in curricula:
        check_task_spaces(parse_curriculum(curriculum, "README"))
    assert parse_agent(agents[0], "README").plugins == (("ewc", {"strength": 100.0}),)
