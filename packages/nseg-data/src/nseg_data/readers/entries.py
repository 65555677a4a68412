"""A listed-but-not-yet-decoded sample: what the dataset loader caches by."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from nseg_data.errors import DataError
from nseg_data.sample import Sample


@dataclass(frozen=True)
class Entry:
    """One sample a reader found. `key` changes whenever any file it is decoded from may have."""

    id: str
    key: str
    source: str
    load: Callable[[], Sample]


def make_key(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def iter_entries(entries: Iterable[Entry]) -> Iterator[Sample | DataError]:
    """Decode each entry; a bad one yields its DataError so one bad file does not stop a batch."""
    for e in entries:
        try:
            yield e.load()
        except DataError as err:
            yield err
