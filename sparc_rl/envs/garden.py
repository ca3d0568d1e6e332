"""The garden world: a watering robot whose garden changes with the seasons (the seeds' example)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Ball, Floor, Wall
from minigrid.minigrid_env import MiniGridEnv


@dataclass(frozen=True)
class Season:
    """How a season looks (ground tiles, walls) and which plant wants water."""

    thirsty_plant: str
    ground_color: str | None
    ground_tiles: int
    walls: int


SEASONS: dict[str, Season] = {
    "spring": Season(thirsty_plant="green", ground_color=None, ground_tiles=0, walls=0),
    "summer": Season(thirsty_plant="yellow", ground_color="yellow", ground_tiles=4, walls=0),
    # Autumn looks exactly like spring but the other plant is thirsty: only the reward tells.
    "autumn": Season(thirsty_plant="yellow", ground_color=None, ground_tiles=0, walls=0),
    "winter": Season(thirsty_plant="green", ground_color="blue", ground_tiles=4, walls=1),
}
PLANT_COLORS = ("green", "yellow")


class GardenEnv(MiniGridEnv):
    """A robot waters the thirsty plant in a small walled garden whose look and rules change by season.

    ## Seasons
    ``spring`` (plain ground, water the green plant), ``summer`` (yellow dry-soil tiles, water the
    yellow plant), ``autumn`` (looks exactly like spring, water the yellow plant: only reward feedback
    tells it from spring), ``winter`` (blue snow tiles and a wall, water the green plant).

    ## Observation space
    MiniGrid's dict: ``image`` (7x7x3 egocentric grid, uint8), ``direction`` (Discrete(4)),
    ``mission`` (text). Use the ``minigrid-image`` wrapper for the image alone.

    ## Action space
    ``Discrete(7)``, MiniGrid's actions; ``toggle`` (5) waters the plant in front of the robot.

    ## Rewards
    Watering the thirsty plant: ``1 - 0.9 * step_count / max_steps``. Watering the other plant:
    ``wrong_plant_penalty`` (once per episode; the episode goes on, so the robot can recover).

    ## Termination
    The thirsty plant is watered (``info["is_success"] = True``), or ``max_steps`` pass (truncation,
    ``info["is_success"] = False``).

    :param season: one of ``spring``, ``summer``, ``autumn``, ``winter``
    :param size: side of the garden including walls
    :param max_steps: step limit
    :param wrong_plant_penalty: reward for watering the plant that is not thirsty
    """

    def __init__(
        self,
        season: str = "spring",
        size: int = 6,
        max_steps: int = 50,
        wrong_plant_penalty: float = -0.2,
        **kwargs: Any,
    ) -> None:
        if season not in SEASONS:
            raise ValueError(f"Unknown season {season!r}; choose one of {sorted(SEASONS)}.")
        self.season_name = season
        self.season = SEASONS[season]
        self.wrong_plant_penalty = wrong_plant_penalty
        self._penalised = False
        super().__init__(
            mission_space=MissionSpace(mission_func=self._gen_mission),
            grid_size=size,
            max_steps=max_steps,
            see_through_walls=True,
            **kwargs,
        )

    @staticmethod
    def _gen_mission() -> str:
        return "water the thirsty plant"

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        for _ in range(self.season.walls):
            self.place_obj(Wall())
        if self.season.ground_color is not None:
            for _ in range(self.season.ground_tiles):
                self.place_obj(Floor(self.season.ground_color))
        for color in PLANT_COLORS:
            self.place_obj(Ball(color))
        self.place_agent()
        self.mission = self._gen_mission()
        self._penalised = False

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        front = self.grid.get(*self.front_pos)
        obs, reward, terminated, truncated, info = super().step(action)
        if action == self.actions.toggle and isinstance(front, Ball):
            if front.color == self.season.thirsty_plant:
                reward, terminated = self._reward(), True
            elif not self._penalised:
                reward, self._penalised = self.wrong_plant_penalty, True
        if terminated or truncated:
            info["is_success"] = bool(terminated and float(reward) > 0)
        return obs, float(reward), terminated, truncated, info
