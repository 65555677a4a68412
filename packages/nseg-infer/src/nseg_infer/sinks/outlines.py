"""Outlines of every nucleus of a block at once: for each label, the ring that skimage's
`find_contours(mask, 0.5)` gives for its padded mask (the longest contour, only its turning
vertices kept, counter-clockwise as GeoJSON wants), traced for all labels in a few array passes.

Calling `find_contours` once per nucleus cost more than every other measurement of the products
together (a Python loop over each contour's segments); the rings here are the same points in the
same order, so the GeoJSON and ROI files are unchanged byte for byte. How they match:

- marching squares on a 0/1 mask at level 0.5 puts every point on the midpoint of a pixel edge, so
  points are integers in half-pixel units, and each square's segments follow skimage's case table
  (`fully_connected="low"`: diagonal pixels of a label are two contours);
- skimage joins a square's segments in raster order, so a closed contour starts at the end point of
  its last segment in raster order, and of a label's contours the first longest (in the order of
  their first segment) is kept.
"""

from __future__ import annotations

import numpy as np

# Edge midpoints of a square with top-left pixel (r, c), in half-pixel units (2r + dy, 2c + dx).
_TOP, _BOTTOM, _LEFT, _RIGHT = (0, 1), (2, 1), (1, 0), (1, 2)
# skimage's segments (from, to) per square case (bits: 1 top-left, 2 top-right, 4 bottom-left,
# 8 bottom-right pixel inside), saddles (6, 9) as two corners cut off, in skimage's order.
_CASES = {
    1: [(_TOP, _LEFT)], 2: [(_RIGHT, _TOP)], 3: [(_RIGHT, _LEFT)], 4: [(_LEFT, _BOTTOM)],
    5: [(_TOP, _BOTTOM)], 6: [(_RIGHT, _TOP), (_LEFT, _BOTTOM)], 7: [(_RIGHT, _BOTTOM)],
    8: [(_BOTTOM, _RIGHT)], 9: [(_TOP, _LEFT), (_BOTTOM, _RIGHT)], 10: [(_BOTTOM, _TOP)],
    11: [(_BOTTOM, _LEFT)], 12: [(_LEFT, _RIGHT)], 13: [(_TOP, _RIGHT)], 14: [(_LEFT, _TOP)],
}
# Per case and segment slot j: (from dy, from dx, to dy, to dx), and whether the slot is used.
_SEG = np.zeros((16, 2, 4), np.int64)
_USED = np.zeros((16, 2), bool)
for _case, _segs in _CASES.items():
    for _j, (_a, _b) in enumerate(_segs):
        _SEG[_case, _j] = (*_a, *_b)
        _USED[_case, _j] = True


def _segments(p: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every contour segment of every label of `p` (0: background), a label array framed by one
    row and column of background: (label, raster order, from y, from x, to y, to x) in half-pixel
    units of `p`."""
    corners = (p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:])
    # In place: a product block's temporaries stay a few bytes per pixel (the 16k memory budget).
    mixed = corners[0] != corners[1]
    mixed |= corners[0] != corners[2]
    mixed |= corners[0] != corners[3]
    rs, cs = np.nonzero(mixed)
    vals = [c[rs, cs] for c in corners]
    out = []
    for i, v in enumerate(vals):
        # Each label of the square once: at its first corner.
        first = v != 0
        for prev in vals[:i]:
            first &= v != prev
        case = sum(((w == v) * (1 << j) for j, w in enumerate(vals)), np.zeros(len(v), np.int64))[first]
        r, c, label = rs[first], cs[first], v[first].astype(np.int64)  # keys below need 64 bits
        for j in (0, 1):
            use = _USED[case, j]
            s = _SEG[case[use], j]
            ry, cx = 2 * r[use], 2 * c[use]
            order = (r[use] * p.shape[1] + c[use]) * 2 + j
            out.append((label[use], order, ry + s[:, 0], cx + s[:, 1], ry + s[:, 2], cx + s[:, 3]))
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _cycle_min(succ: np.ndarray, value: np.ndarray) -> np.ndarray:
    """For each element of the permutation `succ` (disjoint cycles), the least `value` on its cycle.
    Pointer doubling: after pass k each element holds the least of the 2^k from it on; once a pass
    changes nothing, longer windows cannot either."""
    best, step = value, succ
    while True:
        nxt = np.minimum(best, best[step])
        if np.array_equal(nxt, best):
            return best
        best, step = nxt, step[step]


def _rank_from(succ: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Steps from the start of its cycle to each element of the permutation `succ` (one element of
    each cycle in `start`): list ranking by pointer doubling on the cycles cut before each start."""
    n = len(succ)
    up = np.empty(n, np.int64)
    up[succ] = np.arange(n)
    up[start] = start
    rank = np.ones(n, np.int64)
    rank[start] = 0
    while not np.array_equal(up[up], up):
        rank, up = rank + rank[up], up[up]
    return rank


def block_outlines(lab: np.ndarray, wanted: np.ndarray, offset: tuple[int, int] = (0, 0)) -> dict[int, list]:
    """The ring of each label in `wanted` (labels of `lab`, a 2-D label array), as traced from the
    label's own mask by `find_contours` (module docstring): closed [x, y] points in QuPath pixel coordinates (pixel
    (r, c) covers [c, c+1) x [r, r+1)) shifted by `offset` (the (y, x) of `lab`'s first pixel),
    counter-clockwise, only turning vertices. The labels index a table of the wanted ones, so
    they should be a block's compact labels (`nuclei.measure_block` passes them), not global ids."""
    top = int(lab.max(initial=0))
    keep = np.zeros(top + 1, bool)
    keep[np.asarray(wanted, np.int64)] = True
    keep[0] = False
    # The wanted labels framed by background, in one array.
    framed = np.zeros((lab.shape[0] + 2, lab.shape[1] + 2), lab.dtype)
    np.copyto(framed[1:-1, 1:-1], lab, where=keep[lab])
    label, order, fy, fx, ty, tx = _segments(framed)
    del framed  # freed before the sorts below, which need a few arrays of the segments
    if not len(label):
        return {}
    # Each point of a label's contours starts exactly one of its segments and ends exactly one, so
    # the k-th smallest end point is the k-th smallest start point: two sorts link every segment.
    span = 2 * max(lab.shape) + 4
    n = len(label)
    succ = np.empty(n, np.int64)
    succ[np.argsort((label * span + ty) * span + tx)] = np.argsort((label * span + fy) * span + fx)
    cycle = _cycle_min(succ, np.arange(n))       # a contour's id: its least segment index
    first = _cycle_min(succ, order)              # its first segment in raster order (skimage's order)
    size = np.bincount(cycle, minlength=n)
    # Of a label's contours the first longest: size descending, then first segment.
    ids = np.flatnonzero(cycle == np.arange(n))
    pick = ids[np.lexsort((first[ids], -size[ids], label[ids]))]
    heads = pick[np.append(True, label[pick][1:] != label[pick][:-1])]
    chosen = np.zeros(n, bool)
    chosen[heads] = True
    sel = np.flatnonzero(chosen[cycle])
    sub = np.full(n, -1)
    sub[sel] = np.arange(len(sel))
    s_succ, s_order = sub[succ[sel]], order[sel]
    # skimage closes a contour with its last segment in raster order: the ring starts where it ends.
    last = -_cycle_min(s_succ, -s_order)
    rank = _rank_from(s_succ, s_succ[np.flatnonzero(s_order == last)])
    # Rings in label order (heads are), each from its start: a scatter, no sort.
    at = np.zeros(n, np.int64)
    at[heads] = np.cumsum(size[heads]) - size[heads]
    seq = np.empty(len(sel), np.int64)
    seq[at[cycle[sel]] + rank] = sel
    g, y, x = _turning_rings(label[seq], fy[seq], fx[seq])
    starts = np.flatnonzero(np.append(True, g[1:] != g[:-1]))
    ends = np.append(starts[1:], len(g))
    oy, ox = offset
    # Half-pixel units of the framed block to image coordinates: exact halves, as skimage's are.
    points = np.stack([(x + (2 * ox - 1)) / 2, (y + (2 * oy - 1)) / 2], axis=1).tolist()
    return {lbl: points[a:b] for lbl, a, b in zip(g[starts].tolist(), starts.tolist(), ends.tolist(), strict=True)
            if b - a >= 4}


def _groups(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group index of each element, start, length of each group) of runs of equal `g`."""
    new = np.append(True, g[1:] != g[:-1])
    starts = np.flatnonzero(new)
    return np.cumsum(new) - 1, starts, np.diff(np.append(starts, len(g)))


def _cyclic_next(gi: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    pos = np.arange(len(gi))
    return np.where(pos + 1 == starts[gi] + sizes[gi], starts[gi], pos + 1)


def _turning_rings(g: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group g (points in ring order, not closed): the ring of its turning vertices when it has
    at least 4 points and 3 turns (else the whole ring), closed (first point repeated) and oriented
    counter-clockwise in the (x, y) plane by reversing it from its first point."""
    gi, starts, sizes = _groups(g)
    nxt = _cyclic_next(gi, starts, sizes)
    prv = np.empty_like(nxt)
    prv[nxt] = np.arange(len(g))
    turn = (y - y[prv]) * (x[nxt] - x) != (x - x[prv]) * (y[nxt] - y)
    use_turns = (sizes >= 4) & (np.bincount(gi, weights=turn, minlength=len(sizes)) >= 3)
    kept = turn | ~use_turns[gi]
    g, y, x = g[kept], y[kept], x[kept]
    gi, starts, sizes = _groups(g)
    nxt = _cyclic_next(gi, starts, sizes)
    # RFC 7946 orientation is judged in the coordinate plane (not on screen, where y points down).
    signed = np.bincount(gi, weights=x * y[nxt] - x[nxt] * y, minlength=len(sizes))
    j = np.arange(len(g)) - starts[gi]
    back = signed[gi] < 0
    src = starts[gi] + np.where(back, (sizes[gi] - j) % sizes[gi], j)
    # Closed: each group's first point once more at its end.
    closed = np.insert(src, [*starts[1:].tolist(), len(g)], starts)
    return g[closed], y[closed], x[closed]
