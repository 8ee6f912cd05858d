"""A task defined here, outside auxrl, loaded by import path from a config."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from auxrl import AuxOutput, AuxTask, Needs, TaskContext, TaskMismatch
from auxrl.configfile import load_config
from auxrl.trainer import train


@dataclass
class InverseDynamicsConfig:
    hidden: int = 64


class InverseDynamics(AuxTask):
    """Predict the action a_t from the features of obs_t and obs_{t+1}."""

    name = "inverse_dynamics"
    description = "predict the action taken between two observations"
    Config = InverseDynamicsConfig
    needs = Needs(sequence_length=1, replay=False)

    def __init__(self, cfg, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.head = nn.Sequential(
            nn.Linear(2 * ctx.feature_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, ctx.action_space.n)
        )

    @classmethod
    def check(cls, ctx: TaskContext) -> None:
        if not hasattr(ctx.action_space, "n"):
            raise TaskMismatch("inverse_dynamics needs discrete actions")

    def loss(self, seq, encode) -> AuxOutput:
        batch = seq.obs.shape[0]
        features = encode(seq.obs.flatten(0, 1)).reshape(batch, -1)
        logits = self.head(features)
        mask = seq.valid[:, 0].float()
        loss = (F.cross_entropy(logits, seq.actions[:, 0], reduction="none") * mask).sum() / mask.sum().clamp(
            min=1
        )
        accuracy = ((logits.argmax(-1) == seq.actions[:, 0]).float() * mask).sum() / mask.sum().clamp(min=1)
        return AuxOutput(loss, {"accuracy": accuracy})


def test_custom_task_by_import_path_logs_its_tags(tmp_path):
    cfg = load_config(
        "cartpole",
        [
            "ppo.total_steps=2048",
            "aux.enabled=true",
            "aux.diagnostics_every=1",
            f"aux.tasks.inverse_dynamics.type={__name__}:InverseDynamics",
            "aux.tasks.inverse_dynamics.weight=0.5",
            "aux.tasks.inverse_dynamics.hidden=32",
        ],
    )
    train(cfg, tmp_path / "run", device="cpu", progress=False)
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for key in ("loss", "weight", "accuracy", "grad_cosine", "grad_norm_ratio"):
        assert f"aux/inverse_dynamics/{key}" in tags, key
    losses = [e.value for e in acc.Scalars("aux/inverse_dynamics/loss")]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert [e.value for e in acc.Scalars("aux/inverse_dynamics/weight")][0] == 0.5
