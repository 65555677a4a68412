"""Several data sets as one: a catalogue of sources, each with its name, look, scale and grouping.

A catalogue is a small YAML file:

    format: nseg-sources/1
    sources:
      - name: dsb2018
        path: data/stage1_train           # any form nseg-data reads; relative to this file
      - name: tnbc
        path: data/tnbc                   # a folder of NAME.png + NAME.labels.tif
        modality: histology               # declared, instead of inferred per image
        pixel_size_um: 0.25
        group: '^(tnbc_\\d+)_'             # regex on the image name: its first group is the slide
        citation: Naylor et al. 2019, doi:10.1109/TMI.2018.2865709
        licence: CC BY 4.0

Any folder nseg-data reads can join without code. Each sample it yields carries its source name,
group (slide or patient; without a `group` rule every image is its own group) and pixel size in
`Sample.meta`, so splits can keep a slide's images together and training can balance sources.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import yaml

from nseg_data.errors import DataError
from nseg_data.readers.entries import Entry, make_key
from nseg_data.sample import Modality, Sample

FORMAT = "nseg-sources/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SourceSpec:
    """One data set of a catalogue."""

    name: str
    path: Path
    modality: Modality | None = None  # None: inferred from each image
    pixel_size_um: float | None = None
    group: str | None = None  # regex whose first group names an image's slide or patient
    citation: str | None = None
    licence: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"source name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if self.pixel_size_um is not None and not self.pixel_size_um > 0:
            raise ValueError(f"source {self.name}: pixel_size_um must be positive, got {self.pixel_size_um}")
        if self.group is not None:
            try:
                rx = re.compile(self.group)
            except re.error as exc:
                raise ValueError(f"source {self.name}: group is not a valid regex ({exc})") from exc
            if rx.groups < 1:
                raise ValueError(f"source {self.name}: group regex needs one capturing group (the slide name)")

    def group_of(self, sample_id: str) -> str:
        """The slide/patient an image belongs to; an image its rule does not match is an error."""
        if self.group is None:
            return f"{self.name}:{sample_id}"
        m = re.search(self.group, sample_id)
        if m is None:
            raise DataError(self.path / sample_id, f"name does not match source {self.name}'s group rule {self.group!r}")
        return f"{self.name}:{m.group(1)}"


@dataclass(frozen=True)
class Catalogue:
    path: Path
    sources: tuple[SourceSpec, ...]

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("a catalogue needs at least one source")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source name {dup[0]!r} is used twice")

    def __getitem__(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source {name!r} in {self.path} (sources: {', '.join(s.name for s in self.sources)})")


def is_catalogue(path: Path) -> bool:
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() in (".yaml", ".yml")):
        return False
    try:
        head = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(head, dict) and head.get("format") == FORMAT


_KEYS = {"name", "path", "modality", "pixel_size_um", "group", "citation", "licence"}


def load_catalogue(path: Path) -> Catalogue:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(path, "catalogue does not exist") from exc
    except yaml.YAMLError as exc:
        raise DataError(path, f"invalid YAML ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(path, f"not a sources catalogue (expected 'format: {FORMAT}')")
    items = data.get("sources")
    if not isinstance(items, list):
        raise DataError(path, "'sources' must be a list")
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item or "path" not in item:
            raise DataError(path, f"source {i + 1}: needs at least 'name' and 'path'")
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise DataError(path, f"source {item['name']}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
        try:
            mod = None if item.get("modality") is None else Modality(item["modality"])
        except ValueError as exc:
            raise DataError(path, f"source {item['name']}: modality must be one of "
                                  f"{', '.join(m.value for m in Modality)}, got {item['modality']!r}") from exc
        src_path = Path(item["path"])
        try:
            specs.append(SourceSpec(
                name=str(item["name"]), path=src_path if src_path.is_absolute() else path.parent / src_path,
                modality=mod, pixel_size_um=item.get("pixel_size_um"), group=item.get("group"),
                citation=item.get("citation"), licence=item.get("licence"),
            ))
        except ValueError as exc:
            raise DataError(path, str(exc)) from exc
    try:
        return Catalogue(path=path, sources=tuple(specs))
    except ValueError as exc:
        raise DataError(path, str(exc)) from exc


def tag_sample(spec: SourceSpec, sample: Sample) -> Sample:
    """The sample as its source describes it: source, group and pixel size in meta, declared modality."""
    meta = {**sample.meta, "source": spec.name, "group": spec.group_of(sample.id)}
    if spec.pixel_size_um is not None:
        meta["pixel_size_um"] = spec.pixel_size_um
    if spec.modality is not None:
        meta["modality"] = spec.modality.value  # kept through the decode cache, which re-infers otherwise
    return replace(sample, modality=spec.modality or sample.modality, meta=meta)


def _raise(err: DataError) -> Sample:
    raise err


def _tagged(spec: SourceSpec, load: Callable[[], Sample]) -> Sample:
    return tag_sample(spec, load())


def catalogue_entries(path: Path, list_entries: Callable[[Path], list[Entry]]) -> list[Entry]:
    """Every source's entries, tagged; an id found in two sources is refused (ids name outputs and splits)."""
    cat = load_catalogue(path)
    out: list[Entry] = []
    seen: dict[str, str] = {}
    for spec in cat.sources:
        for e in list_entries(spec.path):
            if e.id in seen:
                raise DataError(path, f"image id {e.id!r} is in both source {seen[e.id]} and source {spec.name}")
            seen[e.id] = spec.name
            if not e.key:  # an unreadable entry: its load raises the reader's error
                out.append(e)
                continue
            try:
                spec.group_of(e.id)  # a name the group rule misses fails before any decoding
            except DataError as err:
                out.append(Entry(id=e.id, key="", source=e.source, load=partial(_raise, err)))
                continue
            key = make_key(e.key, spec.name, spec.modality, spec.pixel_size_um, spec.group)
            out.append(Entry(id=e.id, key=key, source=e.source, load=partial(_tagged, spec, e.load)))
    return out


def source_of(sample: Sample) -> str:
    """The source a sample came from; samples read without a catalogue are one unnamed source."""
    return str(sample.meta.get("source", ""))


def group_of(sample: Sample) -> str:
    return str(sample.meta.get("group", sample.id))
