"""Which RAM bytes hold which state variable, for the 24 Atari games AtariARI annotates.

The facts (RAM indices and the category of each variable) are those of AtariARI: Anand et al.
(2019), "Unsupervised State Representation Learning in Atari", repository
``mila-iqia/atari-representation-learning``, files ``atariari/benchmark/ram_annotations.py``
(indices) and ``atariari/benchmark/categorization.py`` (categories). The layout is auxrl's own:
games are keyed by ale-py's ROM names (``rom_name("ALE/MsPacman-v5") == "ms_pacman"``), and each
entry is ``(name, ram index or indices, category)``.

* An entry with several indices (``score`` of Frostbite is RAM 72, 73, 74) expands to one
  variable per index, ``score_0``, ``score_1``, ... as AtariARI's ``name_i`` does.
* Categories are AtariARI's five summary groups. AtariARI assigns them from the variable's name
  (``_x``/``_y``/``_z``/``_column`` are localisation; with ``player``/``agent`` and without
  ``ball``/``missile`` it is the agent's, with ``ball``/``missile`` a small object's, otherwise
  other; ``score``/``clock``/``lives``/``meter``/``display`` is the score group; ``count``,
  ``bit_map``/``existence``, ``level``/``room``/``game_state`` and ``direction`` are misc.).
  The result of those rules is written out below. Asteroids' ``num_lives_direction`` is in two
  groups (score and misc.), and seven variables are in none (Battle Zone's angles, treads and
  crosshairs colour, Q*bert's tile colours): AtariARI counts them in its plain mean over all
  variables but in no category mean, and so does ``auxrl probe``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

AGENT = "agent_localization"
SMALL = "small_object_localization"
OTHER = "other_localization"
SCORE = "score_clock_lives_display"
MISC = "misc"
CATEGORIES = (AGENT, SMALL, OTHER, SCORE, MISC)
NONE: tuple[str, ...] = ()

# game (ale-py ROM name) -> ((variable, RAM index or indices, category or categories), ...)
_Entry = tuple[str, "int | Sequence[int]", "str | tuple[str, ...]"]
RAM_TABLE: dict[str, tuple[_Entry, ...]] = {
    "asteroids": (
        ("enemy_asteroids_y", (3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19), OTHER),
        ("enemy_asteroids_x", (21, 22, 23, 24, 25, 26, 27, 30, 31, 32, 33, 34, 35, 36, 37), OTHER),
        ("player_x", 73, AGENT),
        ("player_y", 74, AGENT),
        ("num_lives_direction", 60, (SCORE, MISC)),
        ("player_score_high", 61, SCORE),
        ("player_score_low", 62, SCORE),
        ("player_missile_x1", 83, SMALL),
        ("player_missile_x2", 84, SMALL),
        ("player_missile_y1", 86, SMALL),
        ("player_missile_y2", 87, SMALL),
        ("player_missile1_direction", 89, MISC),
        ("player_missile2_direction", 90, MISC),
    ),
    "battle_zone": (
        ("blue_tank_facing_direction", 46, MISC),
        ("blue_tank_size_y", 47, OTHER),
        ("blue_tank_x", 48, OTHER),
        ("blue_tank2_facing_direction", 52, MISC),
        ("blue_tank2_size_y", 53, OTHER),
        ("blue_tank2_x", 54, OTHER),
        ("num_lives", 58, SCORE),
        ("missile_y", 105, SMALL),
        ("compass_needles_angle", 84, NONE),
        ("angle_of_tank", 4, NONE),
        ("left_tread_position", 59, NONE),
        ("right_tread_position", 60, NONE),
        ("crosshairs_color", 108, NONE),
        ("score", 29, SCORE),
    ),
    "berzerk": (
        ("player_x", 19, AGENT),
        ("player_y", 11, AGENT),
        ("player_direction", 14, MISC),
        ("player_missile_x", 22, SMALL),
        ("player_missile_y", 23, SMALL),
        ("player_missile_direction", 21, MISC),
        ("robot_missile_direction", 26, MISC),
        ("robot_missile_x", 29, SMALL),
        ("robot_missile_y", 30, SMALL),
        ("num_lives", 90, SCORE),
        ("robots_killed_count", 91, MISC),
        ("game_level", 92, MISC),
        ("enemy_evilOtto_x", 46, OTHER),
        ("enemy_evilOtto_y", 89, OTHER),
        ("enemy_robots_x", range(65, 73), OTHER),
        ("enemy_robots_y", range(56, 65), OTHER),
        ("player_score", range(93, 96), SCORE),
    ),
    "bowling": (
        ("ball_x", 30, SMALL),
        ("ball_y", 41, SMALL),
        ("player_x", 29, AGENT),
        ("player_y", 40, AGENT),
        ("frame_number_display", 36, SCORE),
        ("pin_existence", range(57, 67), MISC),
        ("score", 33, SCORE),
    ),
    "boxing": (
        ("player_x", 32, AGENT),
        ("player_y", 34, AGENT),
        ("enemy_x", 33, OTHER),
        ("enemy_y", 35, OTHER),
        ("enemy_score", 19, SCORE),
        ("clock", 17, SCORE),
        ("player_score", 18, SCORE),
    ),
    "breakout": (
        ("ball_x", 99, SMALL),
        ("ball_y", 101, SMALL),
        ("player_x", 72, AGENT),
        ("blocks_hit_count", 77, MISC),
        ("block_bit_map", range(30), MISC),
        ("score", 84, SCORE),
    ),
    "demon_attack": (
        ("level", 62, MISC),
        ("player_x", 22, AGENT),
        ("enemy_x1", 17, OTHER),
        ("enemy_x2", 18, OTHER),
        ("enemy_x3", 19, OTHER),
        ("missile_y", 21, SMALL),
        ("enemy_y1", 69, OTHER),
        ("enemy_y2", 70, OTHER),
        ("enemy_y3", 71, OTHER),
        ("num_lives", 114, SCORE),
    ),
    "freeway": (
        ("player_y", 14, AGENT),
        ("score", 103, SCORE),
        ("enemy_car_x", range(108, 118), OTHER),
    ),
    "frostbite": (
        ("top_row_iceflow_x", 34, OTHER),
        ("second_row_iceflow_x", 33, OTHER),
        ("third_row_iceflow_x", 32, OTHER),
        ("fourth_row_iceflow_x", 31, OTHER),
        ("enemy_bear_x", 104, OTHER),
        ("num_lives", 76, SCORE),
        ("igloo_blocks_count", 77, MISC),
        ("enemy_x", range(84, 88), OTHER),
        ("player_x", 102, AGENT),
        ("player_y", 100, AGENT),
        ("player_direction", 4, MISC),
        ("score", (72, 73, 74), SCORE),
    ),
    "hero": (
        ("player_x", 27, AGENT),
        ("player_y", 31, AGENT),
        ("power_meter", 43, SCORE),
        ("room_number", 28, MISC),
        ("level_number", 117, MISC),
        ("dynamite_count", 50, MISC),
        ("score", (56, 57), SCORE),
    ),
    "montezuma_revenge": (
        ("room_number", 3, MISC),
        ("player_x", 42, AGENT),
        ("player_y", 43, AGENT),
        ("player_direction", 52, MISC),
        ("enemy_skull_x", 47, OTHER),
        ("enemy_skull_y", 46, OTHER),
        ("key_monster_x", 44, OTHER),
        ("key_monster_y", 45, OTHER),
        ("level", 57, MISC),
        ("num_lives", 58, SCORE),
        ("items_in_inventory_count", 61, MISC),
        ("room_state", 62, MISC),
        ("score_0", 19, SCORE),
        ("score_1", 20, SCORE),
        ("score_2", 21, SCORE),
    ),
    "ms_pacman": (
        ("enemy_sue_x", 6, OTHER),
        ("enemy_inky_x", 7, OTHER),
        ("enemy_pinky_x", 8, OTHER),
        ("enemy_blinky_x", 9, OTHER),
        ("enemy_sue_y", 12, OTHER),
        ("enemy_inky_y", 13, OTHER),
        ("enemy_pinky_y", 14, OTHER),
        ("enemy_blinky_y", 15, OTHER),
        ("player_x", 10, AGENT),
        ("player_y", 16, AGENT),
        ("fruit_x", 11, OTHER),
        ("fruit_y", 17, OTHER),
        ("ghosts_count", 19, MISC),
        ("player_direction", 56, MISC),
        ("dots_eaten_count", 119, MISC),
        ("player_score", 120, SCORE),
        ("num_lives", 123, SCORE),
    ),
    "pitfall": (
        ("player_x", 97, AGENT),
        ("player_y", 105, AGENT),
        ("enemy_logs_x", 98, OTHER),
        ("enemy_scorpion_x", 99, OTHER),
        ("bottom_of_rope_y", 18, OTHER),
        ("clock_sec", 89, SCORE),
        ("clock_min", 88, SCORE),
    ),
    "pong": (
        ("player_y", 51, AGENT),
        ("player_x", 46, AGENT),
        ("enemy_y", 50, OTHER),
        ("enemy_x", 45, OTHER),
        ("ball_x", 49, SMALL),
        ("ball_y", 54, SMALL),
        ("enemy_score", 13, SCORE),
        ("player_score", 14, SCORE),
    ),
    "private_eye": (
        ("player_x", 63, AGENT),
        ("player_y", 86, AGENT),
        ("room_number", 92, MISC),
        ("clock", (67, 69), SCORE),
        ("player_direction", 58, MISC),
        ("score", (73, 74), SCORE),
        ("dove_x", 48, OTHER),
        ("dove_y", 39, OTHER),
    ),
    "qbert": (
        ("player_x", 43, AGENT),
        ("player_y", 67, AGENT),
        ("player_column", 35, AGENT),
        ("red_enemy_column", 69, OTHER),
        ("green_enemy_column", 105, OTHER),
        ("score", (89, 90, 91), SCORE),
        (
            "tile_color",
            (21, 52, 54, 83, 85, 87, 98, 100, 102, 104, 1, 3, 5, 7, 9, 32, 34, 36, 38, 40, 42),
            NONE,
        ),
    ),
    "riverraid": (
        ("player_x", 51, AGENT),
        ("missile_x", 117, SMALL),
        ("missile_y", 50, SMALL),
        ("fuel_meter_high", 55, SCORE),
        ("fuel_meter_low", 56, SCORE),
    ),
    "seaquest": (
        ("enemy_obstacle_x", range(30, 34), OTHER),
        ("player_x", 70, AGENT),
        ("player_y", 97, AGENT),
        ("diver_or_enemy_missile_x", range(71, 75), SMALL),
        ("player_direction", 86, MISC),
        ("player_missile_direction", 87, MISC),
        ("oxygen_meter_value", 102, SCORE),
        ("player_missile_x", 103, SMALL),
        ("score", (57, 58), SCORE),
        ("num_lives", 59, SCORE),
        ("divers_collected_count", 62, MISC),
    ),
    "skiing": (
        ("player_x", 25, AGENT),
        ("clock_m", 104, SCORE),
        ("clock_s", 105, SCORE),
        ("clock_ms", 106, SCORE),
        ("score", 107, SCORE),
        ("object_y", range(87, 94), OTHER),
    ),
    "space_invaders": (
        ("invaders_left_count", 17, MISC),
        ("player_score", 104, SCORE),
        ("num_lives", 73, SCORE),
        ("player_x", 28, AGENT),
        ("enemies_x", 26, OTHER),
        ("missiles_y", 9, SMALL),
        ("enemies_y", 24, OTHER),
    ),
    "tennis": (
        ("enemy_x", 27, OTHER),
        ("enemy_y", 25, OTHER),
        ("enemy_score", 70, SCORE),
        ("ball_x", 16, SMALL),
        ("ball_y", 17, SMALL),
        ("player_x", 26, AGENT),
        ("player_y", 24, AGENT),
        ("player_score", 69, SCORE),
    ),
    "venture": (
        ("sprite0_y", 20, OTHER),
        ("sprite1_y", 21, OTHER),
        ("sprite2_y", 22, OTHER),
        ("sprite3_y", 23, OTHER),
        ("sprite4_y", 24, OTHER),
        ("sprite5_y", 25, OTHER),
        ("sprite0_x", 79, OTHER),
        ("sprite1_x", 80, OTHER),
        ("sprite2_x", 81, OTHER),
        ("sprite3_x", 82, OTHER),
        ("sprite4_x", 83, OTHER),
        ("sprite5_x", 84, OTHER),
        ("player_x", 85, AGENT),
        ("player_y", 26, AGENT),
        ("current_room", 90, MISC),
        ("num_lives", 70, SCORE),
        ("score_1_2", 71, SCORE),
        ("score_3_4", 72, SCORE),
    ),
    "video_pinball": (
        ("ball_x", 67, SMALL),
        ("ball_y", 68, SMALL),
        ("player_left_paddle_y", 98, AGENT),
        ("player_right_paddle_y", 102, AGENT),
        ("score_1", 48, SCORE),
        ("score_2", 50, SCORE),
    ),
    "yars_revenge": (
        ("player_x", 32, AGENT),
        ("player_y", 31, AGENT),
        ("player_missile_x", 38, SMALL),
        ("player_missile_y", 37, SMALL),
        ("enemy_x", 43, OTHER),
        ("enemy_y", 42, OTHER),
        ("enemy_missile_x", 47, SMALL),
        ("enemy_missile_y", 46, SMALL),
    ),
}


@dataclass(frozen=True)
class RamVariable:
    """One state variable: its name, the RAM byte (0..127) that holds it, its categories."""

    name: str
    index: int
    categories: tuple[str, ...]


def games() -> list[str]:
    """The annotated games, by ale-py ROM name."""
    return sorted(RAM_TABLE)


def variables(game: str) -> list[RamVariable]:
    """The state variables of ``game`` (an ale-py ROM name), entries with several indices
    expanded to ``name_0``, ``name_1``, ...; KeyError for a game without annotations."""
    out = []
    for name, where, cats in RAM_TABLE[game]:
        cats = (cats,) if isinstance(cats, str) else tuple(cats)
        if isinstance(where, int):
            out.append(RamVariable(name, where, cats))
        else:
            out += [RamVariable(f"{name}_{i}", int(index), cats) for i, index in enumerate(where)]
    return out


def game_of(env_id: str) -> str | None:
    """The table's game for an Atari env id (``ALE/Breakout-v5`` -> ``breakout``), None when the
    game has no annotations (or the id is not an Atari one)."""
    from auxrl.envs.atari import is_atari_id, rom_name

    if not is_atari_id(env_id):
        return None
    name = rom_name(env_id)
    return name if name in RAM_TABLE else None
