"""Reference scores that put different envs on one scale, so a study can aggregate over them.

Atari: the human-normalised score (HNS), 0 for the random agent and 1 for the human reference
of the DQN literature. Other envs: min-max normalisation with ``[min, max]`` the study spec gives
per env (e.g. the random agent's score and the best possible one).

The table is the one the committed Atari 100k suites were scored with (the same numbers, from
the same source), and the one benchmarks/multitask.py uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# The 26 games of Atari 100k (Kaiser et al. 2019, SimPLe), as listed by rliable.
ATARI_100K_GAMES = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
    "RoadRunner", "Seaquest", "UpNDown",
)  # fmt: skip

# Random-agent and human reference scores of the DQN literature (Mnih et al. 2015; the random
# scores with up to 30 no-op starts), as used for Atari 100k by DER, CURL, DrQ and SPR. From
# RANDOM_SCORES / HUMAN_SCORES in google-research/rliable's deep_rl_precipice_colab.ipynb
# (Agarwal et al. 2021). HNS = (score - random) / (human - random).
RANDOM_SCORES: dict[str, float] = {
    "Alien": 227.8, "Amidar": 5.8, "Assault": 222.4, "Asterix": 210.0, "BankHeist": 14.2,
    "BattleZone": 2360.0, "Boxing": 0.1, "Breakout": 1.7, "ChopperCommand": 811.0,
    "CrazyClimber": 10780.5, "DemonAttack": 152.1, "Freeway": 0.0, "Frostbite": 65.2,
    "Gopher": 257.6, "Hero": 1027.0, "Jamesbond": 29.0, "Kangaroo": 52.0, "Krull": 1598.0,
    "KungFuMaster": 258.5, "MsPacman": 307.3, "Pong": -20.7, "PrivateEye": 24.9, "Qbert": 163.9,
    "RoadRunner": 11.5, "Seaquest": 68.4, "UpNDown": 533.4,
}  # fmt: skip
HUMAN_SCORES: dict[str, float] = {
    "Alien": 7127.7, "Amidar": 1719.5, "Assault": 742.0, "Asterix": 8503.3, "BankHeist": 753.1,
    "BattleZone": 37187.5, "Boxing": 12.1, "Breakout": 30.5, "ChopperCommand": 7387.8,
    "CrazyClimber": 35829.4, "DemonAttack": 1971.0, "Freeway": 29.6, "Frostbite": 4334.7,
    "Gopher": 2412.5, "Hero": 30826.4, "Jamesbond": 302.8, "Kangaroo": 3035.0, "Krull": 2665.5,
    "KungFuMaster": 22736.3, "MsPacman": 6951.6, "Pong": 14.6, "PrivateEye": 69571.3,
    "Qbert": 13455.0, "RoadRunner": 7845.0, "Seaquest": 42054.7, "UpNDown": 11693.2,
}  # fmt: skip
REFERENCE_SOURCE = "RANDOM_SCORES / HUMAN_SCORES of google-research/rliable's deep_rl_precipice_colab.ipynb"


def atari_game(env_id: str) -> str | None:
    """The game of an ALE id (``ALE/MsPacman-v5`` -> ``MsPacman``); None for other ids."""
    if not env_id.startswith("ALE/"):
        return None
    return env_id.removeprefix("ALE/").split("-")[0]


def human_normalized(game: str, score: float) -> float:
    """Human-normalised score: 0 is the random agent, 1 the human reference."""
    if game not in RANDOM_SCORES:
        raise KeyError(f"No reference scores for {game!r}; Atari 100k games: {', '.join(ATARI_100K_GAMES)}")
    return (score - RANDOM_SCORES[game]) / (HUMAN_SCORES[game] - RANDOM_SCORES[game])


def reference_range(
    env_id: str, normalize: str, ranges: Mapping[str, tuple[float, float]]
) -> tuple[float, float]:
    """The (score of 0, score of 1) of ``env_id`` under a study's normalisation."""
    if normalize == "hns":
        game = atari_game(env_id)
        if game is None or game not in RANDOM_SCORES:
            raise KeyError(f"No human / random reference scores for {env_id}")
        return RANDOM_SCORES[game], HUMAN_SCORES[game]
    if normalize == "minmax":
        low, high = ranges[env_id]
        return float(low), float(high)
    return 0.0, 1.0  # none: the raw score


def normalizer(normalize: str, ranges: Mapping[str, tuple[float, float]]) -> Callable[[str, float], float]:
    """``f(env_id, score)``: the score on the study's common scale (the raw score for ``none``)."""

    def normalized(env_id: str, score: float) -> float:
        low, high = reference_range(env_id, normalize, ranges)
        return (score - low) / (high - low)

    return normalized


SCALE_NAMES = {"hns": "human-normalised score", "minmax": "min-max normalised score", "none": "score"}
