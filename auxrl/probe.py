"""Linear probes of a run's frozen torso, after AtariARI (``auxrl probe``).

What the torso's features say about the game's state: frames are played, each labelled with the
state variables of that step (Atari: the RAM bytes AtariARI annotates, :mod:`auxrl.envs.atari_ram`;
any env: numeric ``info`` entries), and one linear classifier per variable is trained on the
frozen features. The F1 score of each on held-out episodes, against the same architecture
randomly initialised, measures what training put into the representation.

The protocol, after Anand et al. (2019), "Unsupervised State Representation Learning in Atari"
(repository mila-iqia/atari-representation-learning, ``atariari/benchmark``):

* **Frames.** ``frames`` steps over ``num_envs`` envs built as training builds them (Atari:
  84x84 gray, 4-frame stack, frameskip 4, through gymnasium's ALE env and ``AtariPreprocessing``,
  as :mod:`auxrl.envs.atari_modes`), whole games (no episodic life), seeded. The label of a frame
  is the RAM (``ale.getRAM()``) or ``info`` after the step that produced it. Policy: uniformly
  random actions (AtariARI's random agent never picks action 0, NOOP), or the run's agent
  sampling its actions, with a share ``epsilon`` of uniform random actions (AtariARI plays its
  PPO agents with 0.2). AtariARI's episodes are lives and it drops those of 64 frames or fewer;
  here episodes are whole games, all kept.
* **Labels.** A variable whose values have an entropy below 0.6 nats over all frames (AtariARI's
  threshold; a constant has 0) is reported and left out of every mean.
* **Split.** By episode (game), shuffled with the seed: 70% of the episodes train, 10% validate,
  20% test, so frames of one episode never straddle two splits. Test frames identical to a
  training or validation frame are dropped (AtariARI does both).
* **Classifier.** One linear softmax classifier per variable on the features, over the values
  the training split shows (256 byte values at most; a value never seen in training cannot be
  learnt by any probe). The features are whitened with the training split's mean and covariance
  (:func:`whitening`: an invertible linear map, so the probe can fit what it could on the raw
  features, but Adam converges in tens of epochs instead of hundreds). All classifiers train at
  once as one batched linear layer with Adam (lr 3e-3, batches of 256), each keeping its weights
  of best validation accuracy, until none has improved for ``patience`` (5) epochs or after
  ``epochs`` (40). AtariARI trains each probe alone (lr 3e-4 in its scripts, batches of 64, up to
  100 epochs, patience 15).
* **Score.** Per variable, F1 on the test split averaged over classes weighted by their support
  (scikit-learn's ``average="weighted"``, AtariARI's choice). Per category, the mean over its
  variables; per game, the mean over the category means (AtariARI's headline number,
  ``f1_mean``), and the plain mean over variables (``f1_all``).
* **Floor.** The same for the run's architecture randomly initialised (seeded), and a majority
  classifier (the most frequent training value).

``info`` labels that are not integer-valued with at most 256 distinct values are fitted by ridge
regression instead (the ridge chosen on the validation split) and scored by R^2 on the test split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from auxrl import checkpoint, rundir
from auxrl.envs import atari_ram
from auxrl.inference import TrainedAgent, load_agent
from auxrl.models.agent import build_agent
from auxrl.perf import set_torch_threads, torch_threads
from auxrl.rundir import read_checkpoint

DEFAULT_FRAMES = 30_000
SPLIT = (0.7, 0.1, 0.2)  # train, valid, test: fractions of the episodes
ENTROPY_THRESHOLD = 0.6  # nats; AtariARI's remove_low_entropy_labels
AGENT_EPSILON = 0.2  # AtariARI's share of random actions when its PPO agents play
MAX_CLASSES = 256
RESULT_FILES = ("probe.md", "probe.json")


# ----------------------------------------------------------------------------------------------
# What to probe
# ----------------------------------------------------------------------------------------------


@dataclass
class Labels:
    """The variables to probe: RAM bytes of an annotated Atari game, or ``info`` entries."""

    names: list[str]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ram_indices: list[int] | None = None  # RAM labels
    info_keys: list[str] | None = None  # info labels
    game: str | None = None

    def source(self, name: str) -> dict[str, Any]:
        i = self.names.index(name)
        return {"ram_index": self.ram_indices[i]} if self.ram_indices is not None else {"info_key": name}


def choose_labels(env_id: str, labels: list[str] | None) -> Labels:
    """The table's RAM variables of ``env_id``'s game, or the ``info:KEY`` entries asked for.

    Raises ValueError (one line, with the fix) for a non-Atari env or an Atari game without
    annotations when no labels are given, and for a label that is not ``info:KEY``."""
    from auxrl.envs.atari import is_atari_id, rom_name

    if labels:
        keys = []
        for label in labels:
            kind, _, key = label.partition(":")
            if kind != "info" or not key:
                raise ValueError(
                    f"--label {label!r}: give info:KEY, the name of a numeric entry of the env's info dict "
                    f"(e.g. --label info:lives)."
                )
            if key not in keys:
                keys.append(key)
        return Labels(names=keys, info_keys=keys)
    if not is_atari_id(env_id):
        raise ValueError(
            f"{env_id} is not an Atari game, so it has no RAM labels: name what to probe with "
            f"--label info:KEY (a numeric entry of the env's info dict; repeatable)."
        )
    game = atari_ram.game_of(env_id)
    if game is None:
        raise ValueError(
            f"{env_id}: AtariARI has no RAM annotations for {rom_name(env_id)!r} (annotated games: "
            f"{', '.join(atari_ram.games())}); probe info entries with --label info:KEY instead."
        )
    variables = atari_ram.variables(game)
    return Labels(
        names=[v.name for v in variables],
        categories={v.name: v.categories for v in variables},
        ram_indices=[v.index for v in variables],
        game=game,
    )


# ----------------------------------------------------------------------------------------------
# Collecting frames, labels and features
# ----------------------------------------------------------------------------------------------


@dataclass
class Collected:
    """Per frame: its labels (float64, [N, V]), its episode's id, a digest of the observation,
    and the features of each torso ([N, D] float32)."""

    labels: np.ndarray
    episodes: np.ndarray
    digests: np.ndarray
    features: dict[str, np.ndarray]
    episodes_finished: int
    seconds: float


def make_env(agent: TrainedAgent) -> gym.Env:
    """One env producing the observations the run trained on (Atari: gymnasium's ALE env with
    auxrl's preprocessing, whole games; others: ``gymnasium.make`` with the run's kwargs)."""
    cfg = agent.config.env
    from auxrl.envs.atari import check_rom, is_atari_id

    if is_atari_id(cfg.id):
        from auxrl.envs.atari_modes import _make_one

        check_rom(cfg.id)
        return _make_one(cfg)()
    from auxrl.envs.gym import find_spec

    find_spec(cfg.id)  # imports the module of a module:Env-v0 id, or says why it cannot
    return gym.make(cfg.id, **dict(cfg.kwargs))


def _info_value(info: dict[str, Any], key: str, env_id: str) -> float:
    if key not in info:
        known = ", ".join(sorted(map(str, info))) or "none"
        raise ValueError(
            f"--label info:{key}: {env_id}'s info has no entry {key!r} (its entries: {known}); name one "
            f"of those."
        )
    value = info[key]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | numbers.Integral | numbers.Real) and math.isfinite(float(value)):
        return float(value)
    what = f"array of shape {value.shape}" if isinstance(value, np.ndarray) else repr(value)[:60]
    raise ValueError(
        f"--label info:{key}: {env_id}'s info[{key!r}] is {what}, not a finite number; probe a numeric "
        f"scalar entry."
    )


class _Features:
    """Runs the torsos on batches of observations as they come (frames are not kept)."""

    def __init__(self, agent: TrainedAgent, torsos: dict[str, torch.nn.Module], batch: int = 256) -> None:
        self.agent, self.torsos, self.batch = agent, torsos, batch
        self.pending: list[np.ndarray] = []
        self.out: dict[str, list[np.ndarray]] = {name: [] for name in torsos}

    def add(self, obs: np.ndarray) -> None:
        self.pending.append(obs)
        if len(self.pending) >= self.batch:
            self.flush()

    @torch.inference_mode()
    def flush(self) -> None:
        if not self.pending:
            return
        array = np.stack(self.pending)
        self.pending = []
        cfg = self.agent.config.env
        if cfg.normalize_obs:
            array = self.agent.stats.normalize_obs(array, cfg.clip_obs)
        dtype = torch.uint8 if self.agent.observation_space.dtype == np.uint8 else torch.float32
        x = torch.as_tensor(np.ascontiguousarray(array)).to(self.agent.device, dtype)
        for name, torso in self.torsos.items():
            self.out[name].append(torso(x).float().cpu().numpy())

    def result(self) -> dict[str, np.ndarray]:
        self.flush()
        return {name: np.concatenate(parts) for name, parts in self.out.items()}


def collect(
    agent: TrainedAgent,
    torsos: dict[str, torch.nn.Module],
    labels: Labels,
    frames: int,
    *,
    policy: str = "random",
    epsilon: float = AGENT_EPSILON,
    num_envs: int = 8,
    seed: int = 0,
    progress: Any = None,
) -> Collected:
    """Play ``frames`` steps over ``num_envs`` envs (env i seeded ``seed + i``) and label each
    step's observation; the torsos' features are computed in batches as frames come."""
    start = time.perf_counter()
    envs = [make_env(agent) for _ in range(num_envs)]
    env_id = agent.config.env.id
    space = envs[0].action_space
    space.seed(seed)
    rng = np.random.default_rng(seed)
    feats = _Features(agent, torsos)
    rows: list[np.ndarray] = []
    episode_of: list[int] = []
    digests: list[bytes] = []
    ram = np.asarray(labels.ram_indices) if labels.ram_indices is not None else None
    cuda = [agent.device] if agent.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)  # the agent's sampled actions
            if cuda:
                with torch.cuda.device(agent.device):
                    torch.cuda.manual_seed(seed)
            obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
            episode = list(range(num_envs))
            next_episode, finished = num_envs, 0
            while len(rows) < frames:
                if policy == "agent":
                    actions = list(agent.predict(np.stack(obs)))
                    for i in range(num_envs):
                        if rng.random() < epsilon:
                            actions[i] = space.sample()
                else:
                    actions = [space.sample() for _ in range(num_envs)]
                for i, env in enumerate(envs):
                    if len(rows) >= frames:
                        break
                    o, _, terminated, truncated, info = env.step(actions[i])
                    if ram is not None:
                        rows.append(env.unwrapped.ale.getRAM()[ram].astype(np.float64))
                    else:
                        rows.append(np.array([_info_value(info, k, env_id) for k in labels.info_keys]))
                    episode_of.append(episode[i])
                    array = np.asarray(o)
                    digests.append(hashlib.blake2b(array.tobytes(), digest_size=16).digest())
                    feats.add(array)
                    if terminated or truncated:
                        o, _ = env.reset()
                        episode[i], next_episode, finished = next_episode, next_episode + 1, finished + 1
                    obs[i] = o
                if progress is not None:
                    progress(len(rows))
    finally:
        for env in envs:
            env.close()
    return Collected(
        labels=np.stack(rows),
        episodes=np.asarray(episode_of, dtype=np.int64),
        digests=np.asarray(digests, dtype="S16"),
        features=feats.result(),
        episodes_finished=finished,
        seconds=time.perf_counter() - start,
    )


def random_torso(agent: TrainedAgent, seed: int) -> torch.nn.Module:
    """The run's torso architecture, freshly initialised as ``auxrl train`` builds it, seeded
    (torch's global generator is left as it was)."""
    cfg = agent.config
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only (the model is built on the CPU): torch.manual_seed would also
        # reseed every CUDA generator, which fork_rng(devices=[]) does not restore.
        torch.default_generator.manual_seed(seed)
        fresh = build_agent(
            cfg.model.torso,
            cfg.model.hidden_sizes,
            agent.observation_space,
            agent.action_space,
            cfg.model.separate_value,
        )
    return fresh.torso.to(agent.device).eval()


# ----------------------------------------------------------------------------------------------
# Split, scores
# ----------------------------------------------------------------------------------------------


def split_episodes(
    episodes: np.ndarray, seed: int, fractions: tuple[float, float, float] = SPLIT
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks (train, valid, test) over frames, whole episodes to one split each.

    The episode ids are shuffled with ``seed``; the first 70% of them train, the next 10%
    validate, the rest test (each split gets at least one episode). Raises ValueError with fewer
    than 3 episodes."""
    ids = np.unique(episodes)
    n = len(ids)
    if n < 3:
        raise ValueError(
            f"the frames hold {n} episode(s), and the train/valid/test split needs 3 or more: raise "
            f"--frames or --num-envs."
        )
    order = np.random.default_rng(seed).permutation(ids)
    n_train = min(max(1, int(round(fractions[0] * n))), n - 2)
    n_valid = min(max(1, int(round(fractions[1] * n))), n - n_train - 1)
    parts = order[:n_train], order[n_train : n_train + n_valid], order[n_train + n_valid :]
    return tuple(np.isin(episodes, part) for part in parts)  # type: ignore[return-value]


def weighted_f1(true: np.ndarray, pred: np.ndarray) -> np.ndarray | float:
    """F1 averaged over classes weighted by each class's support in ``true`` (scikit-learn's
    ``f1_score(true, pred, average="weighted")``; a class never predicted, or only predicted,
    scores 0 and the latter weighs nothing). 1-D inputs give a float; [N, V] inputs one score
    per column."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"weighted_f1: shapes {true.shape} and {pred.shape} differ")
    if true.ndim == 1:
        return float(weighted_f1(true[:, None], pred[:, None])[0])
    scores = np.full(true.shape[1], np.nan)
    n = true.shape[0]
    for v in range(true.shape[1]):
        if n == 0:
            continue
        _, codes = np.unique(np.concatenate([true[:, v], pred[:, v]]), return_inverse=True)
        t, p = codes[:n], codes[n:]
        k = int(codes.max()) + 1
        support = np.bincount(t, minlength=k)
        predicted = np.bincount(p, minlength=k)
        hits = np.bincount(t[t == p], minlength=k)
        f1 = 2 * hits / np.maximum(support + predicted, 1)
        scores[v] = float((f1 * support).sum() / n)
    return scores


def entropy(values: np.ndarray) -> float:
    """Entropy (nats) of the empirical distribution of ``values``."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------------------------
# Linear probes
# ----------------------------------------------------------------------------------------------


@dataclass
class ProbeSettings:
    epochs: int = 40
    patience: int = 5
    lr: float = 3e-3
    batch_size: int = 256


def train_classifiers(
    x: dict[str, torch.Tensor],
    y: dict[str, np.ndarray],
    settings: ProbeSettings,
    seed: int,
) -> tuple[np.ndarray, int]:
    """One linear softmax classifier per column of ``y["train"]`` on ``x["train"]``, all trained
    at once; each keeps its weights of best accuracy on ``x["valid"]``. Returns the test
    predictions ([N_test, V], in label values) and the epochs run.

    The classes of a variable are the values its training labels take: the layer's outputs are
    one block per variable, and each variable's softmax runs over its own block."""
    device = x["train"].device
    classes = [np.unique(col) for col in y["train"].T]  # sorted values per variable
    sizes = np.array([len(c) for c in classes])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    total, widest, num_vars = int(sizes.sum()), int(sizes.max()), len(classes)
    # [V, widest] -> a column of the flat output, or `total` (a padding column of -inf).
    pad = np.full((num_vars, widest), total, dtype=np.int64)
    for v, (size, offset) in enumerate(zip(sizes, offsets, strict=True)):
        pad[v, :size] = offset + np.arange(size)
    pad_t = torch.as_tensor(pad, device=device)
    column_var = torch.as_tensor(np.repeat(np.arange(num_vars), sizes), device=device)

    def targets(labels: np.ndarray) -> torch.Tensor:
        """Class index per variable; -100 (ignored by the loss, never predicted) for a value the
        training split does not show."""
        out = np.full(labels.shape, -100, dtype=np.int64)
        for v, cls in enumerate(classes):
            pos = np.searchsorted(cls, labels[:, v]).clip(0, len(cls) - 1)
            out[:, v] = np.where(cls[pos] == labels[:, v], pos, -100)
        return torch.as_tensor(out, device=device)

    generator = torch.Generator(device="cpu").manual_seed(seed)
    dim = x["train"].shape[1]
    weight = torch.empty(dim, total)
    torch.nn.init.normal_(weight, std=1.0 / math.sqrt(dim), generator=generator)
    weight = weight.to(device).requires_grad_(True)
    bias = torch.zeros(total, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=settings.lr, eps=1e-5)
    minus_inf = torch.full((1,), -math.inf, device=device)

    def logits(features: torch.Tensor) -> torch.Tensor:  # [B, V, widest]
        flat = torch.addmm(bias, features, weight)
        return torch.cat([flat, minus_inf.expand(flat.shape[0], 1)], dim=1)[:, pad_t]

    @torch.no_grad()
    def predict(features: torch.Tensor) -> torch.Tensor:  # class indices [N, V]
        return torch.cat([logits(chunk).argmax(-1) for chunk in features.split(4096)])

    y_train, y_valid = targets(y["train"]), targets(y["valid"])
    best_acc = torch.full((num_vars,), -1.0, device=device)
    best_w, best_b = weight.detach().clone(), bias.detach().clone()
    stale = torch.zeros(num_vars, dtype=torch.long, device=device)
    n = x["train"].shape[0]
    epochs = 0
    while epochs < settings.epochs:
        epochs += 1
        order = torch.randperm(n, generator=generator).to(device)
        for idx in order.split(settings.batch_size):
            out = logits(x["train"][idx])  # [B, V, widest]
            loss = F.cross_entropy(out.permute(0, 2, 1), y_train[idx], ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            (loss * num_vars).backward()  # each variable's loss a mean over the batch
            optimizer.step()
        acc = (predict(x["valid"]) == y_valid).float().mean(0)
        better = acc > best_acc
        best_acc = torch.where(better, acc, best_acc)
        stale = torch.where(better, torch.zeros_like(stale), stale + 1)
        cols = better[column_var]
        with torch.no_grad():
            best_w[:, cols] = weight[:, cols]
            best_b[cols] = bias[cols]
        if bool((stale >= settings.patience).all()):
            break
    with torch.no_grad():
        weight.copy_(best_w)
        bias.copy_(best_b)
    index = predict(x["test"]).cpu().numpy()
    pred = np.stack([classes[v][index[:, v]] for v in range(num_vars)], axis=1)
    return pred, epochs


def fit_regression(x: dict[str, torch.Tensor], y: dict[str, np.ndarray]) -> np.ndarray:
    """Ridge regression of each column of ``y`` on the features (with a bias), the ridge of each
    chosen among 1e-3..1e3 (times the number of training frames) by validation R^2. Returns R^2 on
    the test split per column."""

    def design(features: torch.Tensor) -> torch.Tensor:
        f = features.double()
        return torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], dim=1)

    a = {split: design(x[split]) for split in ("train", "valid", "test")}
    t = {split: torch.as_tensor(y[split], dtype=torch.float64, device=a[split].device) for split in a}
    gram, rhs = a["train"].T @ a["train"], a["train"].T @ t["train"]
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    eye[-1, -1] = 0  # no penalty on the bias

    def r2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        residual = ((target - pred) ** 2).sum(0)
        spread = ((target - target.mean(0)) ** 2).sum(0)
        return 1 - residual / spread.clamp_min(1e-12)

    best_r2 = torch.full((t["train"].shape[1],), -math.inf, dtype=torch.float64, device=gram.device)
    best = torch.zeros_like(rhs)
    for ridge in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0):
        coef = torch.linalg.solve(gram + ridge * len(a["train"]) * eye, rhs)
        score = r2(a["valid"] @ coef, t["valid"])
        better = score > best_r2
        best_r2 = torch.where(better, score, best_r2)
        best[:, better] = coef[:, better]
    return r2(a["test"] @ best, t["test"]).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# The whole probe
# ----------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """Everything ``probe.json`` holds (:meth:`to_dict`)."""

    meta: dict[str, Any]
    variables: dict[str, dict[str, Any]]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.meta, "summary": self.summary, "variables": self.variables}


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def summarise(variables: dict[str, dict[str, Any]], categories: list[str]) -> dict[str, Any]:
    """Category means, the mean over categories and over variables, for each encoder; variables
    marked ``excluded`` count in none."""
    out: dict[str, Any] = {}
    kept = {k: v for k, v in variables.items() if not v.get("excluded")}
    for prefix in ("", "random_", "majority_"):
        f1s = {k: v[f"{prefix}f1"] for k, v in kept.items() if v["task"] == "classification"}
        cats = {}
        for cat in categories:
            values = [f1s[k] for k in f1s if cat in variables[k]["categories"]]
            if values:
                cats[cat] = round(float(np.mean(values)), 4)
        out[f"{prefix}f1_all"] = _mean(list(f1s.values()))
        out[f"{prefix}f1_categories"] = cats
        # AtariARI's per-game number: the mean of the category means (no category outweighs
        # another); without categories (info labels) the mean over variables.
        out[f"{prefix}f1_mean"] = _mean(list(cats.values())) if cats else out[f"{prefix}f1_all"]
        if prefix != "majority_":
            r2s = [v[f"{prefix}r2"] for v in kept.values() if v["task"] == "regression"]
            out[f"{prefix}r2_mean"] = _mean(r2s)
    return out


def probe(
    run: str | Path,
    *,
    frames: int = DEFAULT_FRAMES,
    policy: str = "random",
    labels: list[str] | None = None,
    seed: int = 0,
    num_envs: int = 8,
    epsilon: float = AGENT_EPSILON,
    device: str = "auto",
    settings: ProbeSettings | None = None,
    entropy_threshold: float = ENTROPY_THRESHOLD,
    log: Any = None,
) -> ProbeResult:
    """Probe the torso of ``run`` (a run directory or a checkpoint file): see the module's
    docstring for the protocol. ``log(message)`` receives progress lines."""
    settings = settings or ProbeSettings()
    say = log or (lambda message: None)
    check_settings(frames, policy, num_envs, epsilon, settings)
    started = time.perf_counter()
    saved = read_checkpoint(run, "config", "spaces", "model")
    agent = load_agent(run, device)
    step = int((saved.get("state") or {}).get("global_step", 0))
    chosen = choose_labels(agent.config.env.id, labels)
    torsos = {"trained": agent.model.torso.eval(), "random": random_torso(agent, seed)}
    say(
        f"Collecting {frames:,} frames of {agent.config.env.id} ({policy} policy, {num_envs} envs, seed "
        f"{seed}); labels: {_describe_labels(chosen)}"
    )
    restore_threads = set_torch_threads(torch_threads(agent.config))  # as the run trained
    try:
        data = collect(
            agent, torsos, chosen, frames, policy=policy, epsilon=epsilon, num_envs=num_envs, seed=seed
        )
    finally:
        restore_threads()
    say(
        f"Collected {len(data.labels):,} frames, {len(np.unique(data.episodes))} episodes "
        f"({data.episodes_finished} finished) in {data.seconds:.0f} s; training the probes"
    )
    train, valid, test = split_episodes(data.episodes, seed)
    duplicate = test & np.isin(data.digests, data.digests[train | valid])
    test = test & ~duplicate
    if not test.any():
        raise ValueError(
            "every test frame repeats a training frame (the game barely changes under this policy): "
            "raise --frames, or probe with another --policy."
        )
    masks = {"train": train, "valid": valid, "test": test}
    variables = describe_variables(chosen, data.labels, entropy_threshold)
    epochs_run: dict[str, int] = {}
    ranks: dict[str, int] = {}
    train_started = time.perf_counter()
    with _fast_cpu_math():
        for encoder, feats in data.features.items():
            prefix = "" if encoder == "trained" else "random_"
            scores, epochs, ranks[encoder] = score_features(
                feats, data.labels, masks, chosen.names, variables, settings, seed, agent.device
            )
            if epochs is not None:
                epochs_run[encoder] = epochs
            for name, values in scores.items():
                variables[name].update({prefix + metric: value for metric, value in values.items()})
    for j, name in enumerate(chosen.names):  # the majority floor: the most frequent training value
        if variables[name]["task"] == "classification" and "excluded" not in variables[name]:
            values, counts = np.unique(data.labels[train, j], return_counts=True)
            guess = np.full(int(test.sum()), values[counts.argmax()])
            variables[name]["majority_f1"] = round(float(weighted_f1(data.labels[test, j], guess)), 4)

    run_dir, checkpoint_path = locate(run, step)
    meta = {
        "run": str(run_dir) if run_dir is not None else None,
        "checkpoint": str(checkpoint_path),
        "global_step": step,
        "env_id": agent.config.env.id,
        "game": chosen.game,
        "labels": "ram" if chosen.ram_indices is not None else "info",
        "policy": policy,
        "epsilon": epsilon if policy == "agent" else None,
        "frames": int(len(data.labels)),
        "num_envs": num_envs,
        "seed": seed,
        "torso": agent.config.model.torso,
        "feature_dim": int(next(iter(data.features.values())).shape[1]),
        # Directions of the training frames' features with variance (above 1e-5 of the largest).
        "feature_rank": ranks,
        "split": {
            "fractions": list(SPLIT),
            "episodes": {s: int(len(np.unique(data.episodes[m]))) for s, m in masks.items()},
            "frames": {s: int(m.sum()) for s, m in masks.items()},
            "test_duplicates_dropped": int(duplicate.sum()),
        },
        "entropy_threshold": entropy_threshold,
        "classifier": {**vars(settings), "epochs_run": epochs_run, "optimizer": "adam"},
        "seconds": {
            "collect": round(data.seconds, 1),
            "probes": round(time.perf_counter() - train_started, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    summary = summarise(variables, list(atari_ram.CATEGORIES))
    return ProbeResult(meta, variables, summary)


def whitening(features: np.ndarray, rtol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(mean, W) such that ``(features - mean) @ W`` has identity covariance: the eigenvectors of
    the features' covariance scaled by 1/sqrt(eigenvalue), leaving out directions of variance
    below ``rtol`` times the largest (dead units, exact linear dependencies).

    An invertible linear map of the span of the features, so a linear probe on the whitened
    features can fit exactly what one on the raw features can; but gradient descent converges
    in a few epochs instead of crawling along the feature covariance's small directions."""
    x = features.astype(np.float64)
    mean = x.mean(0)
    centred = x - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))
    keep = values > rtol * max(float(values.max()), 1e-30)
    if not keep.any():  # every feature constant: one direction of zeros
        return mean, np.zeros((x.shape[1], 1))
    return mean, vectors[:, keep] / np.sqrt(values[keep])


@contextlib.contextmanager
def _fast_cpu_math() -> Iterator[None]:
    """While the probes train: subnormal floats flushed to zero (a softmax's tiny probabilities
    are subnormal, and a CPU multiplies those ~50x slower), and one torch thread (the matrices
    are small: more threads mostly wait on each other, the more so on a busy machine)."""
    restore = set_torch_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        restore()


def describe_variables(
    chosen: Labels, labels: np.ndarray, entropy_threshold: float = ENTROPY_THRESHOLD
) -> dict[str, dict[str, Any]]:
    """Per variable: where it comes from, its categories, ``task`` (classification for integers
    with at most 256 values, else regression), its number of values, the entropy of its values
    (classification) and, for a constant or one of entropy below the threshold, why it is
    ``excluded`` from the probes."""
    variables: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(chosen.names):
        column = labels[:, j]
        distinct = np.unique(column)
        integral = bool(np.all(column == np.round(column)))
        task = "classification" if integral and len(distinct) <= MAX_CLASSES else "regression"
        info: dict[str, Any] = {
            **chosen.source(name),
            "categories": list(chosen.categories.get(name, ())),
            "task": task,
            "distinct_values": int(len(distinct)),
        }
        if task == "classification":
            info["entropy"] = round(entropy(column), 4)
        if len(distinct) == 1:
            info["excluded"] = f"constant (always {distinct[0]:g})"
        elif task == "classification" and info["entropy"] < entropy_threshold:
            info["excluded"] = f"low entropy ({info['entropy']:.2f} < {entropy_threshold} nats)"
        variables[name] = info
    return variables


def score_features(
    features: np.ndarray,
    labels: np.ndarray,
    masks: dict[str, np.ndarray],
    names: list[str],
    variables: dict[str, dict[str, Any]],
    settings: ProbeSettings,
    seed: int,
    device: torch.device,
) -> tuple[dict[str, dict[str, float]], int | None, int]:
    """Train the probes of one encoder's features on the train/valid masks and score them on the
    test mask: ``({variable: {"f1": ...} or {"r2": ...}}, epochs the classifiers ran (None
    without classified variables), directions of the features with variance)``."""
    mean, whiten = whitening(features[masks["train"]])
    x = {
        split: torch.as_tensor((features[mask] - mean) @ whiten, dtype=torch.float32, device=device)
        for split, mask in masks.items()
    }
    kept = [j for j, name in enumerate(names) if "excluded" not in variables[name]]
    scores: dict[str, dict[str, float]] = {}
    epochs = None
    for task, metric in (("classification", "f1"), ("regression", "r2")):
        cols = [j for j in kept if variables[names[j]]["task"] == task]
        if not cols:
            continue
        y = {split: labels[mask][:, cols] for split, mask in masks.items()}
        if task == "classification":
            pred, epochs = train_classifiers(x, y, settings, seed)
            values = weighted_f1(y["test"], pred)
        else:
            values = fit_regression(x, y)
        for k, j in enumerate(cols):
            scores[names[j]] = {metric: round(float(values[k]), 4)}
    return scores, epochs, int(whiten.shape[1])


def check_settings(frames: int, policy: str, num_envs: int, epsilon: float, settings: ProbeSettings) -> None:
    if frames < 30:
        raise ValueError(f"--frames {frames}: give 30 or more (default {DEFAULT_FRAMES:,}).")
    if num_envs < 1:
        raise ValueError(f"--num-envs {num_envs}: give 1 or more.")
    if policy not in ("random", "agent"):
        raise ValueError(f"--policy {policy!r}: random or agent.")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"--epsilon {epsilon}: a probability in [0, 1], e.g. {AGENT_EPSILON}.")
    if settings.epochs < 1 or settings.patience < 1 or settings.batch_size < 1 or not settings.lr > 0:
        raise ValueError("--epochs, --patience and the batch size must be >= 1 and the learning rate > 0.")


def _describe_labels(labels: Labels) -> str:
    if labels.ram_indices is not None:
        return f"{len(labels.names)} RAM variables of {labels.game} (AtariARI)"
    return ", ".join(f"info[{k!r}]" for k in labels.names)


def locate(run: str | Path, step: int) -> tuple[Path | None, Path]:
    """The run directory of ``run`` (None for a checkpoint file outside a run) and the checkpoint
    file that was probed."""
    path = Path(run)
    if path.is_file():
        parent = path.parent.parent
        in_run = path.parent.name == checkpoint.CHECKPOINT_DIR and (
            (parent / rundir.MARKER).is_file() or (parent / rundir.CONFIG_FILE).is_file()
        )
        return (parent if in_run else None), path
    named = path / checkpoint.CHECKPOINT_DIR / f"step_{step:012d}.pt"
    return path, named if named.is_file() else checkpoint.find(path)


def output_dir(run: str | Path, out: str | Path | None) -> Path:
    """Where probe.md, probe.json and the TensorBoard scalars go: ``out``, else the run directory,
    else the folder of the checkpoint file."""
    if out is not None:
        return Path(out)
    path = Path(run)
    if path.is_dir():
        return path
    run_dir, _ = locate(path, 0) if path.is_file() else (None, path)
    return run_dir if run_dir is not None else path.parent


def check_writable(folder: Path, option: str) -> None:
    """Fail before any work when ``folder`` cannot be made or written (creates nothing)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(
            f"{option}{folder}: cannot write there ({err.strerror or err}); give --out DIR, a folder you "
            f"can write to."
        ) from None


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------

_SHORT = {
    atari_ram.AGENT: "agent loc.",
    atari_ram.SMALL: "small obj. loc.",
    atari_ram.OTHER: "other loc.",
    atari_ram.SCORE: "score/clock/lives",
    atari_ram.MISC: "misc.",
}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_rows(result: ProbeResult) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, one row per variable, one row per summary line) for the terminal and probe.md."""
    header = ["variable", "source", "category", "values", "trained", "random", "majority", "note"]
    rows = []
    for name, v in result.variables.items():
        source = f"RAM {v['ram_index']}" if "ram_index" in v else f"info[{v['info_key']!r}]"
        cats = ", ".join(_SHORT.get(c, c) for c in v["categories"]) or "-"
        if v["task"] == "regression":
            scores = [f"R2 {_fmt(v.get('r2'))}", f"R2 {_fmt(v.get('random_r2'))}", "-"]
        else:
            scores = [_fmt(v.get(k)) for k in ("f1", "random_f1", "majority_f1")]
        rows.append([name, source, cats, str(v["distinct_values"]), *scores, v.get("excluded", "")])
    s = result.summary
    summary = []
    for cat, value in s["f1_categories"].items():
        summary.append(
            [
                f"mean {_SHORT.get(cat, cat)}",
                _fmt(value),
                _fmt(s["random_f1_categories"].get(cat)),
                _fmt(s["majority_f1_categories"].get(cat)),
            ]
        )
    if s["f1_all"] is not None:
        summary.append(
            [
                "mean F1 over variables",
                _fmt(s["f1_all"]),
                _fmt(s["random_f1_all"]),
                _fmt(s["majority_f1_all"]),
            ]
        )
        what = "mean over categories (AtariARI)" if s["f1_categories"] else "mean F1"
        summary.append([what, _fmt(s["f1_mean"]), _fmt(s["random_f1_mean"]), _fmt(s["majority_f1_mean"])])
    if s["r2_mean"] is not None:
        summary.append(["mean R2", _fmt(s["r2_mean"]), _fmt(s["random_r2_mean"]), "-"])
    return header, rows, summary


def _protocol_line(result: ProbeResult) -> str:
    m = result.meta
    sp = m["split"]
    policy = m["policy"] + (f" (epsilon {m['epsilon']})" if m["policy"] == "agent" else "")
    return (
        f"{m['env_id']} at step {m['global_step']:,} ({m['checkpoint']}); {m['frames']:,} frames, {policy} "
        f"policy, {m['num_envs']} envs, seed {m['seed']}; episodes train/valid/test "
        f"{sp['episodes']['train']}/{sp['episodes']['valid']}/{sp['episodes']['test']} (frames "
        f"{sp['frames']['train']:,}/{sp['frames']['valid']:,}/{sp['frames']['test']:,}, "
        f"{sp['test_duplicates_dropped']} test duplicates dropped); {m['torso']} features "
        f"({m['feature_dim']}); {m['seconds']['total']:.0f} s."
    )


def compact_names(names: list[str]) -> str:
    """``block_bit_map_1``, ``_2``, ``_3``, ``_7`` -> ``block_bit_map_{1-3,7}``."""
    groups: dict[str, list[int]] = {}
    out: list[str] = []
    for name in names:
        stem, _, number = name.rpartition("_")
        if stem and number.isdigit():
            if stem not in groups:
                groups[stem] = []
                out.append(stem)
            groups[stem].append(int(number))
        else:
            out.append(name)
    parts = []
    for item in out:
        if item not in groups:
            parts.append(item)
            continue
        numbers, runs = sorted(groups[item]), []
        for n in numbers:
            if runs and n == runs[-1][1] + 1:
                runs[-1][1] = n
            else:
                runs.append([n, n])
        spans = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
        parts.append(f"{item}_{spans}" if len(numbers) == 1 else f"{item}_{{{spans}}}")
    return ", ".join(parts)


def print_report(result: ProbeResult) -> None:
    """The probed variables and the means as a table on the terminal; the variables left out
    listed below it."""
    from rich.console import Console
    from rich.table import Table

    _, rows, summary = report_rows(result)
    table = Table(title=f"Test F1 of linear probes on the torso: {result.meta['env_id']}")
    table.add_column("variable")
    table.add_column("category")
    for name in ("values", "trained", "random", "majority"):
        table.add_column(name, justify="right")
    left_out: dict[str, list[str]] = {}
    for name, _source, cats, values, *scores, note in rows:
        if note:
            left_out.setdefault(note.split(" (")[0], []).append(name)
        else:
            table.add_row(name, cats, values, *scores)
    table.add_section()
    for label, *scores in summary:
        table.add_row(label, "", "", *scores, style="bold")
    console = Console(markup=False)  # names and info keys are printed as they are
    console.print(table)
    if left_out:
        what = "; ".join(f"{reason}: {compact_names(names)}" for reason, names in left_out.items())
        console.print(
            f"Left out of the means (value entropy below {result.meta['entropy_threshold']} nats, as "
            f"AtariARI; probe.md lists them): {what}"
        )
    console.print(_protocol_line(result))


def markdown(result: ProbeResult) -> str:
    header, rows, summary = report_rows(result)
    lines = [
        f"# Linear probes of the torso: {result.meta['env_id']}",
        "",
        _protocol_line(result),
        "",
        "Test F1 (weighted over classes) of one linear classifier per variable on the frozen "
        "features (`trained`), on a randomly initialised torso of the same architecture "
        "(`random`), and of always guessing the most frequent training value (`majority`). "
        "Variables with a note are left out of the means. Protocol: `auxrl probe --help` and "
        'the README section "Probing the torso".',
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| summary | trained | random | majority |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary]
    return "\n".join(lines) + "\n"


def scalars(result: ProbeResult) -> dict[str, float]:
    """The TensorBoard scalars: ``probe/f1/<var>``, ``probe/f1_mean``, ``probe/f1_<category>``
    (and ``probe/random_...``), ``probe/r2/<var>`` for regressed labels."""
    out: dict[str, float] = {}
    for name, v in result.variables.items():
        if v.get("excluded"):
            continue
        for prefix in ("", "random_"):
            for metric in ("f1", "r2"):
                if f"{prefix}{metric}" in v:
                    out[f"probe/{prefix}{metric}/{name}"] = v[f"{prefix}{metric}"]
    s = result.summary
    for prefix in ("", "random_"):
        for key in ("f1_mean", "f1_all", "r2_mean"):
            if s.get(f"{prefix}{key}") is not None:
                out[f"probe/{prefix}{key}"] = s[f"{prefix}{key}"]
        for cat, value in s[f"{prefix}f1_categories"].items():
            out[f"probe/{prefix}f1_{cat}"] = value
    if s.get("majority_f1_mean") is not None:
        out["probe/majority_f1_mean"] = s["majority_f1_mean"]
    return out


def write_outputs(result: ProbeResult, folder: Path) -> list[Path]:
    """probe.md, probe.json and the TensorBoard scalars at the checkpoint's step into ``folder``."""
    from auxrl.logger import Logger

    folder.mkdir(parents=True, exist_ok=True)
    md, js = (folder / name for name in RESULT_FILES)
    md.write_text(markdown(result))
    js.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    logger = Logger(folder)
    try:
        logger.scalars(scalars(result), result.meta["global_step"])
    finally:
        logger.close()
    return [md, js]
