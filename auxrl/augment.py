"""Image augmentations for the shared torso's inputs: random shift and intensity noise.

- :func:`random_shift`: each image moves by a random whole number of pixels, at most ``pad``
  (4) in each direction, filling the border by repeating the edge pixels: the "replicate-pad by
  4, then crop back to the original size at a random offset" of DrQ (Kostrikov et al. 2020),
  RAD (Laskin et al. 2020) and SPR (Schwarzer et al. 2021). The crop is done as one gather with
  clamped indices (clamping an index to the image is what replicate padding does), vectorised
  over the batch on the frames' device; uint8 in, uint8 out.
- :func:`intensity`: SPR's brightness noise, ``x * (1 + 0.05 * clip(N(0, 1), -2, 2))`` with one
  draw per image. SPR applies it to frames already scaled to [0, 1]; auxrl's image torsos scale
  uint8 frames themselves (``auxrl.models.torsos.scale_frames``, x / 255), so it is applied to
  the unscaled frames and returns **float32 in the 0-255 scale**, neither rounded nor clipped:
  the torso's x / 255 then gives exactly SPR's input (up to 1.1 for the brightest pixels).
  Rounding back to uint8 would quantise the noise and clip what SPR does not.

An "image" is the last three dimensions ``[C, H, W]``: the ``C`` stacked frames of one
observation get one and the same shift and intensity factor, and any leading dimensions
(``[B, C, H, W]``, ``[B, T, C, H, W]``) are a batch of independent images. Random draws come from
the ``torch.Generator`` passed in (on any device; the draws are moved to the frames' device), so
one seed gives one output.
"""

from __future__ import annotations

import torch

PAD = 4  # pixels: DrQ / RAD / SPR shift Atari's 84x84 frames by up to 4 in each direction
INTENSITY_SCALE = 0.05  # SPR's Intensity(scale=0.05)
KINDS = ("none", "shift", "shift_intensity")  # the values of ppo.augment and of the task's `augment`


def _images(obs: torch.Tensor, what: str) -> tuple[int, int, int, int]:
    """(number of images, C, H, W) of ``[..., C, H, W]`` frames."""
    if obs.dim() < 3:
        raise ValueError(
            f"{what} needs image observations [..., channels, height, width], got shape {tuple(obs.shape)}"
        )
    c, h, w = obs.shape[-3:]
    return obs.numel() // max(c * h * w, 1), c, h, w


def _device(obs: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Where to draw: on the generator's device (a CPU generator may serve CUDA frames)."""
    return generator.device if generator is not None else obs.device


def random_shift(obs: torch.Tensor, pad: int = PAD, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image of ``obs`` ([..., C, H, W], any dtype) by up to ``pad`` pixels.

    ``out[..., y, x] = obs[..., clamp(y + dy), clamp(x + dx)]`` with ``dy, dx`` drawn uniformly
    from ``-pad..pad`` per image (the C channels of an image share them): replicate padding by
    ``pad`` and a random crop of the original size. Same shape and dtype as ``obs``.
    """
    n, c, h, w = _images(obs, "random_shift")
    if pad < 0:
        raise ValueError(f"random_shift: pad must be >= 0, got {pad}")
    if n == 0 or pad == 0:
        return obs.clone()
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=_device(obs, generator))
    shifts = shifts.to(obs.device) - pad  # [n, 2]: (dy, dx) in [-pad, pad]
    rows = (torch.arange(h, device=obs.device) + shifts[:, :1]).clamp_(0, h - 1)  # [n, H]
    cols = (torch.arange(w, device=obs.device) + shifts[:, 1:]).clamp_(0, w - 1)  # [n, W]
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return obs.reshape(n, c, h * w).gather(2, index).reshape(obs.shape)


def intensity(
    obs: torch.Tensor, scale: float = INTENSITY_SCALE, generator: torch.Generator | None = None
) -> torch.Tensor:
    """SPR's intensity noise: ``obs * (1 + scale * clip(z, -2, 2))``, ``z ~ N(0, 1)`` per image.

    Returns float32 in ``obs``'s own scale (0-255 for uint8 frames: not rounded, not clipped),
    which the image torsos scale by 1 / 255 like uint8 frames. Factors lie in
    ``[1 - 2 * scale, 1 + 2 * scale]``.
    """
    n, _, _, _ = _images(obs, "intensity")
    z = torch.randn((n, 1, 1, 1), generator=generator, device=_device(obs, generator))
    factor = 1.0 + scale * z.to(obs.device).clamp_(-2.0, 2.0)
    shape = obs.shape
    return (obs.reshape(n, *shape[-3:]).to(torch.float32) * factor).reshape(shape)


def augment(obs: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``kind`` (one of :data:`KINDS`) applied to image observations ``[..., C, H, W]``.

    ``none``: ``obs`` itself (no copy, no draw); ``shift``: :func:`random_shift` (same dtype);
    ``shift_intensity``: the shift, then :func:`intensity` (float32, 0-255 scale for uint8).
    """
    if kind == "none":
        return obs
    if kind == "shift":
        return random_shift(obs, generator=generator)
    if kind == "shift_intensity":
        return intensity(random_shift(obs, generator=generator), generator=generator)
    raise ValueError(f"unknown augmentation {kind!r}; valid: {', '.join(KINDS)}")
