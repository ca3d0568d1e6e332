"""MiniGrid's egocentric view and one-hot encoding, computed with numpy instead of per-cell Python.

MiniGrid builds every observation by copying the view into a new ``Grid`` cell by cell, rotating it one
quarter turn at a time (a new ``Grid`` each), then encoding it cell by cell: about half of what a
step costs (8 envs, random actions: 6k env steps/s with it, 11k without). :func:`install_fast_view`
replaces that for one env by the same computation on arrays; the observations are identical
(``tests/test_envs.py`` compares them step by step on every MiniGrid task of the built-in curricula).
Sight lines are swept row by row on bit masks, each distinct row computed once: with that, a
precomputed one-hot index and numpy's rotations as plain views, 8 envs of minigrid-skills' tasks
stepped with random actions ran 1.4-1.8x as fast again (2026-11-30, medians of 3 alternating runs:
empty 6194 -> 11400 steps/s, lava-gap 5702 -> 7771, door-key 5302 -> 7818, dist-shift 6354 -> 10250).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import gymnasium as gym
import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.core.world_object import Wall
from minigrid.minigrid_env import MiniGridEnv
from minigrid.wrappers import OneHotPartialObsWrapper

_EMPTY = (OBJECT_TO_IDX["empty"], 0, 0)
_OUTSIDE = Wall().encode()  # MiniGrid shows cells beyond the grid's edge as walls


def egocentric_view(env: MiniGridEnv) -> dict[str, Any]:
    """The observation :meth:`MiniGridEnv.gen_obs` returns, computed on arrays.

    :param env: an unwrapped MiniGrid env using MiniGrid's own ``gen_obs`` and ``gen_obs_grid``
    """
    grid = env.grid
    size = env.agent_view_size
    cells = grid.grid
    codes = np.array([_EMPTY if cell is None else cell.encode() for cell in cells], dtype=np.uint8)
    # pad by a view on every side so any view window is an in-range slice; index as [x, y] like MiniGrid
    padded_codes = np.empty((grid.width + 2 * size, grid.height + 2 * size, 3), dtype=np.uint8)
    padded_codes[:] = _OUTSIDE
    padded_codes[size:-size, size:-size] = codes.reshape(grid.height, grid.width, 3).transpose(1, 0, 2)
    top_x, top_y, _, _ = env.get_view_exts()
    window = (slice(top_x + size, top_x + 2 * size), slice(top_y + size, top_y + 2 * size))
    # MiniGrid turns the view left agent_dir + 1 times; on [x, y] arrays a left turn is np.rot90(k=-1)
    turns = -(env.agent_dir + 1)
    view = _rot90(padded_codes[window], turns)
    if env.see_through_walls:
        image = view.copy()
    else:
        opaque = np.array([cell is not None and not cell.see_behind() for cell in cells], dtype=bool)
        padded_opaque = np.ones(padded_codes.shape[:2], dtype=bool)
        padded_opaque[size:-size, size:-size] = opaque.reshape(grid.height, grid.width).T
        visible = _visible_cells(_rot90(padded_opaque[window], turns))
        image = np.where(visible[..., None], view, 0).astype(np.uint8, copy=False)
    # the agent sees what it carries in its own cell (nothing: an empty cell)
    image[size // 2, size - 1] = _EMPTY if env.carrying is None else env.carrying.encode()
    return {"image": image, "direction": env.agent_dir, "mission": env.mission}


def _rot90(array: np.ndarray, turns: int) -> np.ndarray:
    """``np.rot90(array, turns)`` as one view (numpy's own takes a few microseconds per call)."""
    turns %= 4
    if turns == 1:
        return array[:, ::-1].swapaxes(0, 1)
    if turns == 2:
        return array[::-1, ::-1]
    if turns == 3:
        return array.swapaxes(0, 1)[:, ::-1]
    return array


def _visible_cells(opaque: np.ndarray) -> np.ndarray:
    """MiniGrid's ``Grid.process_vis`` on a square ``[x, y]`` view with the agent at the bottom middle:
    light spreads from the agent's cell row by row away from it, sideways and diagonally forward, and
    stops at cells that block sight. Each row is one cached sweep over bit masks."""
    size = opaque.shape[0]
    bit_values = 1 << np.arange(size)
    opaque_rows = (bit_values @ opaque).tolist()  # row y's cells as bits, x = bit
    lit_rows = [0] * size
    lit = 1 << (size // 2)
    for y in reversed(range(size)):
        lit_rows[y], lit = _sweep_row(lit, opaque_rows[y], size)
    return (np.array(lit_rows)[None, :] & bit_values[:, None]) != 0


@functools.lru_cache(maxsize=1 << 16)
def _sweep_row(lit: int, opaque: int, size: int) -> tuple[int, int]:
    """One row of ``Grid.process_vis``: the row's lit cells after its rightward then leftward sweep,
    and the cells of the next row (farther from the agent) that the sweeps light."""
    row = [bool(lit >> x & 1) for x in range(size)]
    clear = [not opaque >> x & 1 for x in range(size)]
    ahead = 0
    for x in range(size - 1):
        if row[x] and clear[x]:
            row[x + 1] = True
            ahead |= 0b11 << x
    for x in reversed(range(1, size)):
        if row[x] and clear[x]:
            row[x - 1] = True
            ahead |= 0b11 << (x - 1)
    return sum(1 << x for x in range(size) if row[x]), ahead


def install_fast_view(env: gym.Env) -> bool:
    """Make a MiniGrid env compute its observations with :func:`egocentric_view`.

    Envs that are not MiniGrid envs, or that override how MiniGrid observes, are left as they are.

    :return: whether the fast view was installed
    """
    base = env.unwrapped
    if not isinstance(base, MiniGridEnv):
        return False
    own = type(base)
    if own.gen_obs is not MiniGridEnv.gen_obs or own.gen_obs_grid is not MiniGridEnv.gen_obs_grid:
        return False
    base.gen_obs = types.MethodType(egocentric_view, base)  # type: ignore[method-assign]
    return True


class OneHotPartialObs(OneHotPartialObsWrapper):
    """MiniGrid's ``OneHotPartialObsWrapper`` (each cell's object, colour and state as one-hot bits),
    vectorised: the same observations, without a Python loop over the cells."""

    def __init__(self, env: gym.Env, tile_size: int = 8) -> None:
        super().__init__(env, tile_size)
        self._image_shape: tuple[int, int, int] = self.observation_space["image"].shape  # type: ignore[index]
        height, width, bits = self._image_shape
        # where each cell's object, colour and state bits start in the flattened output
        field_starts = np.array([0, len(OBJECT_TO_IDX), len(OBJECT_TO_IDX) + len(COLOR_TO_IDX)])
        self._field_offsets = (np.arange(height * width)[:, None] * bits + field_starts).reshape(height, width, 3)

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        out = np.zeros(self._field_offsets.size // 3 * self._image_shape[2], dtype=np.uint8)
        out[self._field_offsets + obs["image"]] = 1
        return {**obs, "image": out.reshape(self._image_shape)}
