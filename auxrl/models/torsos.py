"""Torsos: observation -> feature vector, shared by every head.

Image torsos take uint8 observations and scale them to [0, 1] themselves, so frames cross to the
training device as bytes (4x less traffic than float32).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from auxrl.envs.dictobs import DictLayout
from auxrl.perf import set_torch_threads


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights, constant bias (PPO implementation detail #2).

    The QR decomposition behind ``orthogonal_`` rounds differently with another number of torch
    threads; run on one, the same seed gives the same weights on every machine."""
    restore_threads = set_torch_threads(1)
    try:
        nn.init.orthogonal_(layer.weight, std)
    finally:
        restore_threads()
    nn.init.constant_(layer.bias, bias)
    return layer


def scale_frames(obs: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [0, 1], scaled in place on the one float copy (``float() / 255``
    would allocate a second full-size tensor; torch.compile fuses either form)."""
    return obs.to(torch.float32, copy=True).mul_(1.0 / 255.0)  # copy: never scale the caller's tensor


class Torso(nn.Module):
    """Base class: ``forward(obs) -> features`` of shape (batch, feature_dim)."""

    feature_dim: int


class NatureCNN(Torso):
    """Mnih et al. (2015) as in CleanRL: 3 convs + 512-unit dense layer, ReLU, orthogonal init."""

    def __init__(self, in_channels: int, height: int = 84, width: int = 84) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            layer_init(nn.Conv2d(in_channels, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, in_channels, height, width)).shape[1]
        self.fc = nn.Sequential(layer_init(nn.Linear(flat, 512)), nn.ReLU())
        self.feature_dim = 512

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(scale_frames(obs)))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class _ImpalaStack(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = _ResidualBlock(out_channels)
        self.res1 = _ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class ImpalaCNN(Torso):
    """Espeholt et al. (2018): three conv stacks (16, 32, 32) of 2 residual blocks + 256 dense."""

    def __init__(self, in_channels: int, height: int = 84, width: int = 84) -> None:
        super().__init__()
        stacks, channels = [], in_channels
        for out in (16, 32, 32):
            stacks.append(_ImpalaStack(channels, out))
            channels = out
        self.stacks = nn.Sequential(*stacks, nn.Flatten(), nn.ReLU())
        with torch.no_grad():
            flat = self.stacks(torch.zeros(1, in_channels, height, width)).shape[1]
        self.fc = nn.Sequential(layer_init(nn.Linear(flat, 256)), nn.ReLU())
        self.feature_dim = 256

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stacks(scale_frames(obs)))


class GridCNN(Torso):
    """Small symbolic grids (MiniGrid's 7x7x3 object / colour / state codes), as in the
    rl-starter-files model of the MiniGrid authors: three 2x2 convs with a max-pool, on the codes as
    numbers (not scaled as brightness)."""

    def __init__(self, in_channels: int, height: int = 7, width: int = 7) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 16, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            self.feature_dim = self.convs(torch.zeros(1, in_channels, height, width)).shape[1]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.convs(obs.float())


class MLP(Torso):
    """Vector observations: tanh MLP (CleanRL's classic-control network)."""

    def __init__(self, in_features: int, hidden_sizes: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = in_features
        for hidden in hidden_sizes:
            layers += [layer_init(nn.Linear(size, hidden)), nn.Tanh()]
            size = hidden
        self.net = nn.Sequential(*layers)
        self.feature_dim = size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float())


class DictTorso(Torso):
    """Dict observations (auxrl/envs/dictobs.py): each image key through its own conv torso
    (``model.torso``), the vector keys together through an MLP (``model.hidden_sizes``), the
    features concatenated. Takes the packed uint8 rows and unpacks them on the device."""

    def __init__(self, layout: DictLayout, name: str, hidden_sizes: list[int]) -> None:
        super().__init__()
        self.layout = layout
        images = [k for k in layout.keys if k.image]
        if images and name not in CONV_TORSOS:
            raise ValueError(
                f"model.torso={name!r}, but this env's observations hold images ({layout.describe()}); "
                f"use model.torso=nature_cnn, impala or grid_cnn (the conv torso of each image key)."
            )
        self.images = nn.ModuleDict({k.name: make_torso(name, k.shape, hidden_sizes) for k in images})
        size = layout.vector_size
        self.vector = MLP(size, hidden_sizes) if size else None
        self.feature_dim = sum(t.feature_dim for t in self.images.values()) + (
            self.vector.feature_dim if self.vector is not None else 0
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        parts = self.layout.unpack(obs)
        features = [torso(parts[name]) for name, torso in self.images.items()]
        if self.vector is not None:
            vectors = [parts[k.name] for k in self.layout.keys if not k.image]
            features.append(self.vector(torch.cat(vectors, dim=-1)))
        return torch.cat(features, dim=-1)


CONV_TORSOS = ("nature_cnn", "impala", "grid_cnn")


def make_torso(name: str, obs_shape: tuple[int, ...], hidden_sizes: list[int]) -> Torso:
    """Build a torso by name, checking that it fits the observation shape."""
    if name in CONV_TORSOS:
        if len(obs_shape) != 3:
            raise ValueError(
                f"model.torso={name!r} needs image observations (channels, height, width), but "
                f"this env's observations have shape {obs_shape}. Use model.torso=mlp."
            )
        if obs_shape[-1] <= 4 < obs_shape[0]:
            raise ValueError(
                f"model.torso={name!r} needs (channels, height, width) images, but this env's are "
                f"channel-last, {obs_shape}. For Atari use env.id=ALE/<Game>-v5 (e.g. ALE/Pong-v5 for "
                f"PongNoFrameskip-v4), which preprocesses frames for the CNN; for another image env, "
                f"register a version of it that returns channels first."
            )
        cls = {"nature_cnn": NatureCNN, "impala": ImpalaCNN, "grid_cnn": GridCNN}[name]
        try:
            return cls(*obs_shape)
        except RuntimeError as err:  # a conv's kernel larger than what is left of the frame
            raise ValueError(
                f"model.torso={name!r} does not fit frames of {obs_shape[1]}x{obs_shape[2]} ({err}); "
                f"use impala (any size) or grid_cnn (small grids)."
            ) from None
    if name == "mlp":
        if len(obs_shape) == 3:
            raise ValueError(f"model.torso=mlp on image observations {obs_shape}: use nature_cnn or impala.")
        return MLP(math.prod(obs_shape), hidden_sizes)
    raise ValueError(f"Unknown torso {name!r}. Valid torsos: nature_cnn, impala, grid_cnn, mlp.")
