"""Recording evaluation games to a video file (``auxrl eval RUN --video PATH``).

Each env step becomes one frame under a banner with the episode number and the running score of
the game (drawn with Pillow). The final frame of every game shows its final score and is held for
half a second. What the frame shows:

* ``screen`` (the default, ``--video-view screen``): the game as a person sees it, the RGB
  screen the env renders (Atari's full-colour 210x160 screen, upscaled x2; MuJoCo's and classic
  control's own rendering). Envs are made with ``render=True`` for it; see ``auxrl eval``.
* ``agent`` (``--video-view agent``): the observation the agent acted on. Image stacks
  ``(stack, H, W)`` (Atari: ``(4, 84, 84)`` uint8) show their newest frame, upscaled x3; single
  images ``(H, W)`` or ``(H, W, 3|4)`` as they are; vectors ``(D,)`` (CartPole, MuJoCo) one bar
  per dimension, each scaled by the largest magnitude seen so far in that dimension, around a
  zero line.

Files: ``.mp4`` (also ``.mkv``, ``.mov``, ``.avi``) through imageio + imageio-ffmpeg (libx264,
30 fps), written as the frames come; ``.gif`` through imageio's Pillow plugin, held in memory
until :meth:`VideoRecorder.close` (fine for a few games; use mp4 for long ones). A path without a
suffix gets ``.mp4``. When no ffmpeg encoder is installed, an mp4 path falls back to a GIF next
to it (the suffix is changed, and a message says so). Both need the ``video`` extra:
``pip install "auxrl[video]"``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from auxrl.envs.base import Step

FFMPEG_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")
BANNER_HEIGHT = 24
FONT_SIZE = 15
AGENT_VIEW_SIZE = 252  # agent views are upscaled by an integer factor towards this (84 -> 252)
SCREEN_SIZE = 420  # screens too (Atari's 210x160 -> 420x320; larger renders stay as they are)
BANNER_BG = (24, 24, 24)
TEXT_WHITE = (235, 235, 235)
TEXT_YELLOW = (255, 210, 60)
LABEL_GRAY = (90, 90, 90)
BAR_POS = (70, 140, 230)
BAR_NEG = (235, 120, 50)


@functools.lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # a small bitmap font


def draw_texts(
    image: np.ndarray, texts: list[tuple[str, float, int, tuple[int, int, int], str]], size: int = FONT_SIZE
) -> np.ndarray:
    """``image`` (RGB uint8) with each ``(text, x, y, color, align)`` drawn; ``align`` says where
    ``x`` is: ``left``, ``center`` or ``right`` of the text, whose top is at ``y``."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    font = _font(size)
    for text, x, y, color, align in texts:
        left, top, right, _ = draw.textbbox((0, 0), text, font=font)
        width = right - left
        x0 = x if align == "left" else x - width / 2 if align == "center" else x - width
        draw.text((x0 - left, y - top), text, fill=color, font=font)
    return np.asarray(canvas)


def format_score(score: float) -> str:
    score = float(score)
    return f"{score:.0f}" if score.is_integer() else f"{score:.1f}"


def _missing_video_extra(what: str) -> ImportError:
    return ImportError(f'{what} is needed to record videos: pip install "auxrl[video]"')


class VideoRecorder:
    """Turns the steps of an evaluation (env 0 of the batch) into an mp4 or GIF.

    ``on_step(obs, step, screen)`` is called with the observation the agent acted on, the
    :class:`~auxrl.envs.base.Step` that followed and, for the ``screen`` view, the RGB screen the
    agent saw (None: draw the observation). With gymnasium's NEXT_STEP autoreset, a step with
    ``step.reset`` only reset the env: the observation passed with it is the last frame of the
    finished game, and ``step.episode_returns`` holds that game's score.
    """

    def __init__(self, path: str | Path, fps: int = 30, hold_final_secs: float = 0.5) -> None:
        try:
            import imageio  # noqa: F401
        except ImportError:
            raise _missing_video_extra("imageio") from None
        path = Path(path)
        if path.suffix == "":
            path = path.with_suffix(".mp4")
        suffix = path.suffix.lower()
        if suffix != ".gif" and suffix not in FFMPEG_SUFFIXES:
            raise ValueError(
                f"--video {path}: unsupported file type {path.suffix!r}. Use a path ending in .mp4 "
                f"(or {', '.join(FFMPEG_SUFFIXES[1:])}) or .gif."
            )
        self.format = "gif" if suffix == ".gif" else "ffmpeg"
        if self.format == "ffmpeg" and not _ffmpeg_available():
            gif = path.with_suffix(".gif")
            print(f'No ffmpeg encoder found (pip install "auxrl[video]"): writing {gif} instead of {path}.')
            path, self.format = gif, "gif"
        self.path = path
        self.fps = fps
        self.hold = max(0, round(hold_final_secs * fps))
        self.episode = 1
        self.score = 0.0
        self.scores: list[float] = []
        self.frames = 0
        self._writer = None
        self._gif_frames: list[np.ndarray] = []
        self._bar_scale: np.ndarray | None = None
        self._closed = False

    # ---------------------------------------------------------------------------------------
    # Recording

    def on_step(self, obs: np.ndarray, step: Step, screen: np.ndarray | None = None) -> None:
        if self._closed:
            raise RuntimeError("VideoRecorder.on_step after close()")
        picture = self._screen(screen) if screen is not None else self._picture(np.asarray(obs)[0])
        reset = bool(np.asarray(step.reset)[0])
        if reset:
            # The game of env 0 just ended; finished games are listed in env order.
            returns = np.asarray(step.episode_returns)
            final = float(returns[0]) if len(returns) else self.score
            frame = self._frame(picture, f"EP {self.episode}", f"FINAL {format_score(final)}")
            for _ in range(1 + self.hold):
                self._write(frame)
            self.scores.append(final)
            self.episode += 1
            self.score = 0.0
        else:
            self._write(self._frame(picture, f"EP {self.episode}", f"SCORE {format_score(self.score)}"))
            self.score += float(np.asarray(step.reward)[0])

    def close(self, returns: list[float] | None = None) -> tuple[Path, int]:
        """Finish the file; returns its path and the number of frames in it."""
        if self._closed:
            return self.path, self.frames
        self._closed = True
        if self.frames == 0:
            raise ValueError(f"--video {self.path}: no frames were recorded (no env steps were played).")
        if self.format == "ffmpeg":
            self._writer.close()
        else:
            self.frames = self._write_gif()
        scores = list(returns) if returns is not None else self.scores
        shown = ", ".join(format_score(s) for s in scores) if scores else "none finished"
        print(f"Recorded {len(self.scores)} game(s) to {self.path}; final scores: {shown}")
        return self.path, self.frames

    # ---------------------------------------------------------------------------------------
    # Frames

    def _screen(self, screen: np.ndarray) -> np.ndarray:
        """The env's RGB render, upscaled by an integer factor towards SCREEN_SIZE."""
        image = _to_uint8(np.asarray(screen))
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = image[..., :3]
        scale = max(1, SCREEN_SIZE // max(image.shape[:2]))
        return image.repeat(scale, axis=0).repeat(scale, axis=1)

    def _picture(self, obs: np.ndarray) -> np.ndarray:
        """An RGB uint8 image of one env's observation, upscaled."""
        if obs.ndim == 1:
            return self._bars(obs)
        if obs.ndim == 3 and obs.shape[-1] in (3, 4) and obs.shape[0] > 4:
            image = obs[..., :3]  # (H, W, RGB[A])
        elif obs.ndim == 3:
            image = obs[-1]  # a frame stack (stack, H, W): the newest frame
        elif obs.ndim == 2:
            image = obs
        else:
            raise ValueError(
                f"--video: cannot draw observations of shape {obs.shape}; video needs image "
                f"observations ((stack, H, W), (H, W) or (H, W, 3)) or vectors (D,)."
            )
        image = _to_uint8(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        scale = max(1, AGENT_VIEW_SIZE // max(image.shape[:2]))
        return image.repeat(scale, axis=0).repeat(scale, axis=1)

    def _bars(self, vector: np.ndarray) -> np.ndarray:
        values = np.nan_to_num(vector.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if self._bar_scale is None or self._bar_scale.shape != values.shape:
            self._bar_scale = np.zeros_like(values)
        self._bar_scale = np.maximum(self._bar_scale, np.abs(values))
        scaled = values / np.where(self._bar_scale > 0, self._bar_scale, 1.0)  # in [-1, 1]
        size = AGENT_VIEW_SIZE
        width = max(size, len(values))
        image = np.full((size, width, 3), 250, dtype=np.uint8)
        mid = size // 2
        half = mid - 8
        slot = width / len(values)
        pad = max(0, int(slot * 0.15))
        for i, v in enumerate(scaled):
            x0, x1 = int(i * slot) + pad, max(int(i * slot) + pad + 1, int((i + 1) * slot) - pad)
            h = int(round(abs(v) * half))
            if v >= 0:
                image[mid - h : mid, x0:x1] = BAR_POS
            else:
                image[mid : mid + h, x0:x1] = BAR_NEG
        image[mid, :] = 90  # the zero line
        if slot >= 12:  # label the dimensions when there is room
            labels = [(str(i), (i + 0.5) * slot, size - 13, LABEL_GRAY, "center") for i in range(len(values))]
            image = draw_texts(image, labels, size=10)
        return image

    def _frame(self, picture: np.ndarray, left: str, right: str) -> np.ndarray:
        h, w = picture.shape[:2]
        # Even sizes: libx264's yuv420p needs them.
        width = w + (w % 2)
        height = BANNER_HEIGHT + h + (h % 2)
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[:BANNER_HEIGHT] = BANNER_BG
        frame[BANNER_HEIGHT : BANNER_HEIGHT + h, :w] = picture
        y = (BANNER_HEIGHT - FONT_SIZE) // 2 + 1
        texts = [(left, 6, y, TEXT_WHITE, "left"), (right, width - 6, y, TEXT_YELLOW, "right")]
        return draw_texts(frame, texts)

    # ---------------------------------------------------------------------------------------
    # Files

    def _write(self, frame: np.ndarray) -> None:
        if self.format == "ffmpeg":
            if self._writer is None:
                self._writer = self._open_ffmpeg()
            self._writer.append_data(frame)
        else:
            if self._gif_frames and frame.shape != self._gif_frames[0].shape:
                first = self._gif_frames[0].shape
                raise ValueError(f"--video: the frame size changed from {first} to {frame.shape}")
            self._gif_frames.append(frame)
        self.frames += 1

    def _open_ffmpeg(self):
        import imageio.v2 as iio

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return iio.get_writer(
            self.path,
            format="FFMPEG",
            mode="I",
            fps=self.fps,
            codec="libx264",
            quality=8,
            macro_block_size=2,
            ffmpeg_log_level="error",
        )

    def _write_gif(self) -> int:
        import imageio.v3 as iio

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            iio.imwrite(
                self.path, np.stack(self._gif_frames), plugin="pillow", duration=1000 / self.fps, loop=0
            )
        self._gif_frames = []
        # Pillow merges identical consecutive frames into one longer frame (the held final frame,
        # a paused game): count what the file really holds.
        return int(iio.improps(self.path, plugin="pillow").shape[0])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    if image.size and np.nanmax(image) <= 1.0 and np.nanmin(image) >= 0.0:
        image = image * 255.0
    return np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)


def _ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg
    except ImportError:
        return False
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return False
    return True
