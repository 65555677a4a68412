"""Open a dataset in whichever form it comes, with optional caching of decoded samples."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nseg_data import cache
from nseg_data.errors import DataError
from nseg_data.readers import kaggle_folder
from nseg_data.sample import Sample


@dataclass(frozen=True)
class LoadResult:
    samples: list[Sample]
    errors: list[DataError] = field(default_factory=list)
    seconds: float = 0.0
    cached: int = 0

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}


def load_kaggle_folder(
    root: Path,
    *,
    cache_dir: Path | None = None,
    ids: list[str] | None = None,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> LoadResult:
    """Load a Kaggle-layout folder, from the cache where it is fresh.

    Errors are collected, never dropped: each names its file.
    """
    t0 = time.perf_counter()
    root = Path(root)
    all_ids = kaggle_folder.list_ids(root)
    if ids is not None:
        missing = sorted(set(ids) - set(all_ids))
        if missing:
            raise DataError(root, f"{len(missing)} requested ids are not in the dataset, e.g. {missing[0]}")
        all_ids = [i for i in all_ids if i in set(ids)]
    samples: list[Sample] = []
    errors: list[DataError] = []
    n_cached = 0
    it: Iterator = iter(all_ids)
    if progress is not None:
        it = progress(it)
    for sid in it:
        sdir = root / sid
        try:
            if cache_dir is not None:
                cpath = cache.cache_path(cache_dir, sdir)
                if cpath.exists():
                    samples.append(cache.load_sample(cpath))
                    n_cached += 1
                    continue
                s = kaggle_folder.read_sample(sdir)
                cache.save_sample(cpath, s)
            else:
                s = kaggle_folder.read_sample(sdir)
            samples.append(s)
        except DataError as err:
            errors.append(err)
    return LoadResult(samples=samples, errors=errors, seconds=time.perf_counter() - t0, cached=n_cached)
