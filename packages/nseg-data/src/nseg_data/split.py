"""Deterministic, stratified, persisted splits: locked test, validation, training.

The locked split is fixed once and never trained or tuned on; every reported accuracy comes
from it. Stratifying by modality keeps rare looks (13 brightfield images in DSB stage1_train)
present in every split.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nseg_data.atomic import write_bytes_atomic
from nseg_data.errors import DataError

SPLIT_NAMES = ("locked", "val", "train")
# Below this many images (a lab's own annotations) a split made for training has no locked set:
# one or two held-out images would give an anecdotal score and cost a fifth of the training data.
# Such a lab tests the adapted model on new images instead.
SMALL_DATASET = 20


@dataclass(frozen=True)
class Splits:
    """ids per split and the modality of every id."""

    seed: int
    locked_fraction: float
    val_fraction: float
    ids: dict[str, tuple[str, ...]]
    modality: dict[str, str]
    # Several sources (nseg_data.sources): each id's source and group (slide or patient).
    source: dict[str, str] | None = None
    group: dict[str, str] | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name in SPLIT_NAMES:
            if name not in self.ids:
                raise ValueError(f"split '{name}' missing")
            overlap = seen & set(self.ids[name])
            if overlap:
                raise ValueError(f"ids in more than one split, e.g. {sorted(overlap)[0]}")
            seen |= set(self.ids[name])
        if self.group:
            where: dict[str, str] = {}
            for name in SPLIT_NAMES:
                for i in self.ids[name]:
                    g = self.group.get(i, i)
                    if where.setdefault(g, name) != name:
                        raise ValueError(f"group {g} is in both {where[g]} and {name}: a slide's images must stay together")

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name == "all":
            return tuple(i for n in SPLIT_NAMES for i in self.ids[n])
        if name not in self.ids:
            raise KeyError(f"unknown split '{name}', expected one of {', '.join((*SPLIT_NAMES, 'all'))}")
        return self.ids[name]

    def sha256(self) -> str:
        """Hash of the id lists only, so a checkpoint can prove which split it was trained on."""
        payload = json.dumps({n: sorted(self.ids[n]) for n in SPLIT_NAMES}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def table(self) -> dict[str, dict[str, int]]:
        """split -> modality (or source:modality, with several sources) -> count (plus 'total')."""
        out: dict[str, dict[str, int]] = {}
        for name in SPLIT_NAMES:
            c = Counter(self._stratum(i) for i in self.ids[name])
            out[name] = {**dict(sorted(c.items())), "total": len(self.ids[name])}
        return out

    def _stratum(self, i: str) -> str:
        return f"{self.source[i]}:{self.modality[i]}" if self.source else self.modality[i]

    def format_table(self) -> str:
        mods = sorted({self._stratum(i) for i in self.modality})
        w = max(14, *(len(m) + 2 for m in mods))
        head = f"{'split':<8}" + "".join(f"{m:>{w}}" for m in mods) + f"{'total':>8}"
        rows = [head]
        tab = self.table()
        for name in SPLIT_NAMES:
            rows.append(f"{name:<8}" + "".join(f"{tab[name].get(m, 0):>{w}}" for m in mods) + f"{tab[name]['total']:>8}")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {
            "format": "nseg-splits/1",
            "seed": self.seed,
            "locked_fraction": self.locked_fraction,
            "val_fraction": self.val_fraction,
            "sha256": self.sha256(),
            "counts": self.table(),
            "splits": {n: list(self.ids[n]) for n in SPLIT_NAMES},
            "modality": dict(sorted(self.modality.items())),
            **({"source": dict(sorted(self.source.items()))} if self.source else {}),
            **({"group": dict(sorted(self.group.items()))} if self.group else {}),
        }


def make_splits(
    modality: dict[str, str], *, seed: int = 2018, locked_fraction: float = 0.10, val_fraction: float = 0.30
) -> Splits:
    """Stratified by modality: per modality, `locked_fraction` goes to locked, then `val_fraction`
    of the rest to val. Rounding keeps at least one image per split for any modality of 3+ images
    (no locked image when `locked_fraction` is 0); when rounding leaves val or train empty across
    all modalities, one image moves over from the other, so any 2+ images give both."""
    if not 0 <= locked_fraction < 1 or not 0 < val_fraction < 1:
        raise ValueError("fractions must be in [0, 1) for locked and (0, 1) for val")
    ids: dict[str, list[str]] = {n: [] for n in SPLIT_NAMES}
    for mod in sorted(set(modality.values())):
        group = sorted(i for i, m in modality.items() if m == mod)
        # A per-modality seed derived from its name keeps each group's order independent of the others.
        rng = np.random.default_rng([seed, int(hashlib.md5(mod.encode()).hexdigest()[:8], 16)])
        order = [group[k] for k in rng.permutation(len(group))]
        n = len(order)
        n_locked = round(n * locked_fraction)
        n_val = round((n - n_locked) * val_fraction)
        if n >= 3:
            n_locked = max(n_locked, 1 if locked_fraction else 0)
            n_val = max(n_val, 1)
        ids["locked"] += order[:n_locked]
        ids["val"] += order[n_locked : n_locked + n_val]
        ids["train"] += order[n_locked + n_val :]
    for empty, full in (("val", "train"), ("train", "val")):
        if not ids[empty] and len(ids[full]) >= 2:
            rng = np.random.default_rng([seed, len(modality)])
            ids[empty].append(ids[full].pop(int(rng.integers(len(ids[full])))))
    return Splits(
        seed=seed,
        locked_fraction=locked_fraction,
        val_fraction=val_fraction,
        ids={n: tuple(sorted(v)) for n, v in ids.items()},
        modality=dict(modality),
    )


def make_group_splits(
    items: dict[str, tuple[str, str, str]], *, seed: int = 2018, locked_fraction: float = 0.10,
    val_fraction: float = 0.30, keep: Splits | None = None,
) -> Splits:
    """Split several sources by group: items maps id -> (source, group, modality).

    A group (a slide, a patient) never straddles two splits, so validation measures
    generalisation to new patients, not memory of their neighbours' tiles. Each source is split on
    its own, stratified by its groups' modality, so every source has validation and locked images.
    Ids that `keep` already assigns stay where they are (an existing locked set never moves), and
    new images of a group it holds join that group's split.
    """
    if not 0 <= locked_fraction < 1 or not 0 < val_fraction < 1:
        raise ValueError("fractions must be in [0, 1) for locked and (0, 1) for val")
    ids: dict[str, list[str]] = {n: [] for n in SPLIT_NAMES}
    kept_split = {i: n for n in SPLIT_NAMES for i in (keep.ids[n] if keep else ())}
    group_split: dict[str, str] = {}
    for i, (_src, g, _m) in items.items():
        if i in kept_split:
            group_split.setdefault(g, kept_split[i])
    strata: dict[tuple[str, str], dict[str, list[str]]] = {}
    for i, (src, g, mod) in sorted(items.items()):
        if g in group_split:
            ids[group_split[g]].append(i)
        else:
            strata.setdefault((src, mod), {}).setdefault(g, []).append(i)
    for (src, mod), groups in sorted(strata.items()):
        names = sorted(groups)
        rng = np.random.default_rng([seed, int(hashlib.md5(f"{src}:{mod}".encode()).hexdigest()[:8], 16)])
        order = [names[k] for k in rng.permutation(len(names))]
        n = sum(len(groups[g]) for g in order)
        want_locked = round(n * locked_fraction)
        if locked_fraction and len(order) >= 3:
            want_locked = max(want_locked, 1)
        taken, k = 0, 0
        while k < len(order) - 2 and taken < want_locked:  # leave at least a val and a train group
            ids["locked"] += groups[order[k]]
            taken += len(groups[order[k]])
            k += 1
        want_val = max(1, round((n - taken) * val_fraction)) if len(order) - k >= 2 else 0
        got = 0
        while k < len(order) - 1 and got < want_val:
            ids["val"] += groups[order[k]]
            got += len(groups[order[k]])
            k += 1
        for g in order[k:]:
            ids["train"] += groups[g]
    return Splits(
        seed=seed, locked_fraction=locked_fraction, val_fraction=val_fraction,
        ids={n: tuple(sorted(v)) for n, v in ids.items()},
        modality={i: m for i, (_s, _g, m) in items.items()},
        source={i: s for i, (s, _g, _m) in items.items()},
        group={i: g for i, (_s, g, _m) in items.items()},
    )


def training_splits(modality: dict[str, str], *, seed: int = 2018) -> Splits:
    """The split `nseg-train` makes when it is given none: the standard locked/val/train fractions
    (10 %, then 30 % of the rest), or, below SMALL_DATASET images, no locked set and a quarter for
    validation (at least one image). Train and val are never empty."""
    if len(modality) < 2:
        raise ValueError(f"{len(modality)} labelled image(s): training needs at least 2, one to train on and one to validate on")
    if len(modality) < SMALL_DATASET:
        return make_splits(modality, seed=seed, locked_fraction=0.0, val_fraction=0.25)
    return make_splits(modality, seed=seed)


def save_splits(splits: Splits, path: Path) -> None:
    write_bytes_atomic(path, (json.dumps(splits.to_json(), indent=1) + "\n").encode())


def load_splits(path: Path) -> Splits:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(path, "splits file does not exist (create it with `nseg-data split`)") from exc
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != "nseg-splits/1":
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(path, f"not an nseg splits file (format={fmt!r})")
    try:
        splits = Splits(
            seed=int(data["seed"]),
            locked_fraction=float(data["locked_fraction"]),
            val_fraction=float(data["val_fraction"]),
            ids={n: tuple(data["splits"][n]) for n in SPLIT_NAMES},
            modality=dict(data["modality"]),
            source=dict(data["source"]) if data.get("source") else None,
            group=dict(data["group"]) if data.get("group") else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(path, f"malformed splits file ({exc})") from exc
    if data.get("sha256") and data["sha256"] != splits.sha256():
        raise DataError(path, "split ids were edited after the file was written (sha256 mismatch)")
    return splits
