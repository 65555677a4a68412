"""Which channels of a file the model sees.

The model takes three channels (RGB, as trained on the DSB images: gray fluorescence repeated,
H&E in colour). A colour image (interleaved samples) goes in as it is, alpha dropped. A file with
separate channels (fluorescence: OME-TIFF, ImageJ hyperstacks, CZI, ND2) needs a choice:
`--channel N` (the nuclear stain, repeated as gray) or `--channels R,G,B` (up to three channels
onto the model's red, green and blue; missing ones are zero). With no choice, a channel named
like a nuclear stain (DAPI, Hoechst, ...) is used if exactly one is; otherwise the file is
refused with the axes and channel names it holds, rather than guessing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from nseg_data.errors import DataError

from nseg_infer.regions import ImageSource, Window

log = logging.getLogger(__name__)

NUCLEAR_STAINS = re.compile(r"dapi|hoechst|draq5|draq7|sytox|nucblue|nuclear|nuclei|nucleus|h2b|propidium",
                            re.IGNORECASE)


@dataclass(frozen=True)
class Wording:
    """How errors name the two choices, in the words of the interface the user is in: the command
    line's flags, the Python API's keywords, or the napari widget's fields. "{}" is the value."""

    channel: str
    channels: str
    where: str = ""

    @property
    def how(self) -> str:
        return (f"choose the nuclear channel with {self.channel.format('N')} (0-based) or map up to three "
                f"channels with {self.channels.format('R,G,B')}{self.where}")


CLI = Wording("--channel {}", "--channels {}")
PYTHON = Wording("channel={}", "channels=({})")
NAPARI = Wording("'channel' {}", "'channels' {}", " in the Segment nuclei widget")


@dataclass(frozen=True)
class ChannelChoice:
    """`channel`: one 0-based channel, repeated as gray; `channels`: up to three, onto R, G, B.
    `wording`: how errors name these choices (default: the command line's flags)."""

    channel: int | None = None
    channels: tuple[int, ...] | None = None
    wording: Wording = field(default=CLI, compare=False)

    def __post_init__(self) -> None:
        if self.channel is not None and self.channels is not None:
            raise ValueError("give either channel or channels, not both")
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"channel must be >= 0 (0-based), got {self.channel}")
        if self.channels is not None:
            if not 1 <= len(self.channels) <= 3:
                raise ValueError(f"channels maps 1 to 3 channels onto R,G,B, got {len(self.channels)}")
            if any(c < 0 for c in self.channels):
                raise ValueError(f"channels must be >= 0 (0-based), got {self.channels}")

    @classmethod
    def parse(cls, channel: int | None = None, channels: str | Sequence[int] | None = None, *,
              wording: Wording = CLI) -> ChannelChoice:
        """From the command line's `--channel 2` / `--channels 0,2,1` (or a sequence of ints)."""
        if isinstance(channels, str):
            try:
                channels = tuple(int(c) for c in channels.split(",") if c.strip())
            except ValueError as e:
                raise ValueError(f"channels must be comma-separated 0-based integers like 0,2,1, got {channels!r}") from e
        return cls(channel, tuple(int(c) for c in channels) if channels is not None else None, wording)

    @property
    def is_default(self) -> bool:
        return self.channel is None and self.channels is None


class ChannelView(ImageSource):
    """The channels the model sees: one (HxWx1, made gray later) or up to three (HxWx3)."""

    def __init__(self, src: ImageSource, channels: tuple[int, ...]) -> None:
        self.src = src
        self.path, self.height, self.width, self.dtype = src.path, src.height, src.width, src.dtype
        self.is_region_reader = src.is_region_reader
        self.info = src.info
        self.picked = channels
        self.channels = 1 if len(channels) == 1 else 3

    def read(self, window: Window) -> np.ndarray:
        a = self.src.read_channels(window, self.picked)
        if a.shape[2] == self.channels:
            return a
        out = np.zeros((*a.shape[:2], 3), a.dtype)
        out[..., : a.shape[2]] = a
        return out


def _check_range(src: ImageSource, picked: tuple[int, ...], option: str) -> None:
    bad = [c for c in picked if c >= src.channels]
    if bad:
        raise DataError(src.path, f"{option.format(','.join(map(str, picked)))}: channel {bad[0]} does not exist; "
                                  f"the image has {src.channels} channel(s), 0 to {src.channels - 1} "
                                  f"({src.info.describe()})")


def model_view(src: ImageSource, choice: ChannelChoice = ChannelChoice()) -> ImageSource:
    """`src` as the model should see it, or a DataError naming the file, what it holds and how to
    choose. Plain gray and colour images with no choice come back unchanged."""
    words = choice.wording
    if choice.channel is not None:
        _check_range(src, (choice.channel,), words.channel)
        return ChannelView(src, (choice.channel,))
    if choice.channels is not None:
        _check_range(src, choice.channels, words.channels)
        return ChannelView(src, choice.channels)
    if src.channels == 1:
        return src
    if src.info.channel_axis == "C":
        named = [i for i, n in enumerate(src.info.channel_names) if NUCLEAR_STAINS.search(n)]
        if len(named) == 1:
            log.info("%s: using channel %d (%r) as the nuclear channel (%s)", src.path, named[0],
                     src.info.channel_names[named[0]], src.info.describe())
            return ChannelView(src, (named[0],))
        raise DataError(src.path, f"{src.channels} channels found ({src.info.describe()}) and none is "
                                  f"clearly the nuclear stain: {words.how}")
    if src.channels > 4:
        raise DataError(src.path, f"{src.channels} colour samples per pixel ({src.info.describe()}): {words.how}")
    return src

