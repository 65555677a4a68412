"""Label images as OME-Zarr (NGFF 0.4, Zarr format 2), written chunk by chunk: the `zarr`
product, and the label image a cluster assembles.

The store `NAME.ome.zarr` is an NGFF labels group: its attributes list one label image,
`nuclei`, whose single resolution level `nuclei/0` holds the labels (uint16 when they fit, else
uint32) in chunks of one instance block, so each chunk is written by one task and no process
ever holds the whole image. napari (napari-ome-zarr) and ome-zarr-py open the store itself as a
labels layer. Zarr is imported on use: it comes with the `dask` extra.

A store is a folder: it is made under a hidden temp name beside its target and moved into place
when complete (`nseg_data.atomic.atomic_dir` / `publish_dir`), so no reader sees half of one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nseg_data.atomic import atomic_dir

from nseg_infer.sinks.base import BlockData, LabelledImage, Sink
from nseg_infer.sinks.labels import label_dtype

LABEL_NAME = "nuclei"
NGFF_VERSION = "0.4"


def array_path(store: Path) -> Path:
    """The full-resolution label array inside a store made by `create_labels`."""
    return store / LABEL_NAME / "0"


def multiscales(shape: tuple[int, int], pixel_size_um: tuple[float, float] | None) -> dict:
    """NGFF attributes of the label image: one level, scaled to µm when the pixel size is known."""
    unit = {"unit": "micrometer"} if pixel_size_um is not None else {}
    scale = [float(s) for s in pixel_size_um] if pixel_size_um is not None else [1.0, 1.0]
    return {
        "multiscales": [{
            "version": NGFF_VERSION, "name": LABEL_NAME,
            "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }],
        "image-label": {"version": NGFF_VERSION},
    }


def create_labels(store: Path, shape: tuple[int, int], chunk: int, dtype: np.dtype, *,
                  pixel_size_um: tuple[float, float] | None = None) -> Path:
    """An empty (all-zero) labels store at `store`, replacing one there; returns its array path."""
    import numcodecs
    import zarr

    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    root.attrs.update({"labels": [LABEL_NAME]})
    group = root.create_group(LABEL_NAME)
    group.attrs.update(multiscales(shape, pixel_size_um))
    group.create_array("0", shape=shape, chunks=(chunk, chunk), dtype=dtype, fill_value=0,
                       compressors=numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE),
                       chunk_key_encoding={"name": "v2", "separator": "/"})
    return array_path(store)


def open_labels(array: Path, mode: str = "r"):
    """The label array (a `zarr.Array`: sliced like numpy, `np.asarray` reads it whole)."""
    import zarr

    return zarr.open_array(str(array), mode=mode)


def require_zarr() -> None:
    """Refuse early, naming the extra, where zarr is missing."""
    try:
        import numcodecs  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as e:
        raise ImportError(f"OME-Zarr labels (--products zarr) need the zarr library ({e}): "
                          "pip install 'nseg-infer[dask]'") from e


class ZarrSink(Sink):
    """`NAME.ome.zarr` in chunks of `chunk` (the instance block); each block writes its core."""

    product = "zarr"

    def start(self, image: LabelledImage, *, chunk: int = 2048) -> None:
        require_zarr()
        # An existing folder is replaced only if it is a zarr store (a mistyped name deletes nothing).
        tmp = self.enter(atomic_dir(self.path, marker=".zattrs"))
        self.array = open_labels(create_labels(tmp, image.shape, chunk, label_dtype(image.max_label),
                                               pixel_size_um=image.pixel_size_um), mode="r+")

    def write(self, block: BlockData) -> None:
        b = block.block
        core = b.core
        y0, x0 = core.y0 - b.outer.y0, core.x0 - b.outer.x0
        part = block.labels[y0:y0 + core.shape[0], x0:x0 + core.shape[1]]
        self.array[core.slices] = part.astype(self.array.dtype, copy=False)
