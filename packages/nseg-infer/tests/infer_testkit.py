"""Test helpers: small torch-free ONNX models wrapped as valid bundles, real-image mosaics, fake detectors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[3]
DATA_DIRS = [REPO / "examples" / "sample" / "stage1_train", REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train"]


def _gauss(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)[None, None]


def make_unet_onnx(path: Path) -> None:
    """A UNet stand-in: probs = (sigmoid of a lightly blurred intensity, sigmoid of a strongly
    blurred one), so nuclei are foreground and their centres score highest in the distance channel.
    Receptive field radius 5 px."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w_gray"),
        numpy_helper.from_array(_gauss(5, 1.0), "w_small"),
        numpy_helper.from_array(_gauss(11, 3.0), "w_big"),
        numpy_helper.from_array(np.array(0.2, np.float32), "c_fg"),
        numpy_helper.from_array(np.array(12.0, np.float32), "k_fg"),
        numpy_helper.from_array(np.array(0.35, np.float32), "c_d"),
        numpy_helper.from_array(np.array(8.0, np.float32), "k_d"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w_gray"], ["gray"]),
        helper.make_node("Conv", ["gray", "w_small"], ["b1"], pads=[2, 2, 2, 2]),
        helper.make_node("Conv", ["gray", "w_big"], ["b2"], pads=[5, 5, 5, 5]),
        helper.make_node("Sub", ["b1", "c_fg"], ["s1"]),
        helper.make_node("Mul", ["s1", "k_fg"], ["m1"]),
        helper.make_node("Sigmoid", ["m1"], ["fg"]),
        helper.make_node("Sub", ["b2", "c_d"], ["s2"]),
        helper.make_node("Mul", ["s2", "k_d"], ["m2"]),
        helper.make_node("Sigmoid", ["m2"], ["dist"]),
        helper.make_node("Concat", ["fg", "dist"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "fake_unet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2, "height", "width"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def metadata(kind: str, sha: str, *, tile: int, halo: int, batch: int) -> dict:
    if kind == "unet":
        outputs = [{"name": "probs", "dtype": "float32", "shape": ["batch", 2, "height", "width"],
                    "channels": ["foreground", "distance"]}]
        post = {"kind": "unet_watershed", "fg_threshold": 0.5, "seed_threshold": 0.5, "min_seed_area": 3,
                "min_size": 12}
    else:
        outputs = [{"name": "boxes", "shape": ["n", 4]}, {"name": "scores", "shape": ["n"]},
                   {"name": "masks", "shape": ["n", 1, 28, 28]}]
        post = {"kind": "maskrcnn", "score_threshold": 0.5, "mask_threshold": 0.5, "nms_threshold": 0.5}
    return {
        "format": "nseg-bundle/1", "kind": kind, "model_file": "model.onnx", "sha256": sha,
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
        "outputs": outputs,
        "preprocessing": {"channel_order": "RGB", "layout": "NCHW",
                          "normalization": {"kind": "percentile", "low_percentile": 1.0, "high_percentile": 99.8},
                          "size_divisor": 16},
        "tiling": {"tile": tile, "halo": halo, "batch": batch},
        "postprocessing": post, "training": {}, "metrics": {}, "versions": {"nseg": "0.1.0"}, "engines": [],
    }


def write_bundle(root: Path, kind: str = "unet", *, tile: int = 128, halo: int = 24, batch: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    model = root / "model.onnx"
    if kind == "unet":
        make_unet_onnx(model)
    else:
        model.write_bytes(b"detector graph stand-in: tests inject a fake backend")
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    (root / "metadata.json").write_text(json.dumps(metadata(kind, sha, tile=tile, halo=halo, batch=batch)))
    return root




def synthetic_blobs(shape: tuple[int, int], n: int, seed: int = 0, rmin: int = 5, rmax: int = 9):
    """Non-overlapping bright discs on a dark background: (uint8 image, uint32 ground truth)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    gt = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[:h, :w]
    k = 0
    for _ in range(n * 20):
        if k == n:
            break
        r = int(rng.integers(rmin, rmax + 1))
        cy, cx = int(rng.integers(r + 2, h - r - 2)), int(rng.integers(r + 2, w - r - 2))
        y0, y1, x0, x1 = cy - r - 2, cy + r + 3, cx - r - 2, cx + r + 3
        if gt[y0:y1, x0:x1].any():
            continue
        disc = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        k += 1
        gt[y0:y1, x0:x1][disc] = k
    img = np.where(gt > 0, 200, 15).astype(np.float32)
    img = ndi.gaussian_filter(img, 1.0) + rng.normal(0, 3, shape)
    return np.clip(img, 0, 255).astype(np.uint8), gt


def _dark_images(limit: int) -> list[np.ndarray]:
    from PIL import Image

    for d in DATA_DIRS:
        if not d.is_dir():
            continue
        out = []
        for sample in sorted(d.iterdir()):
            pngs = sorted((sample / "images").glob("*.png"))
            if not pngs:
                continue
            a = np.asarray(Image.open(pngs[0]).convert("RGB"))
            # Fluorescence-like tiles only: the stand-in model calls bright pixels nuclei.
            if a.shape[0] >= 256 and a.shape[1] >= 256 and a.mean() < 40:
                out.append(a[:256, :256])
            if len(out) == limit:
                return out
    return []


def make_mosaic() -> np.ndarray:
    """A 3x4 mosaic (768 x 1024) of real DSB images when present, else synthetic blobs."""
    tiles = _dark_images(12)
    if len(tiles) == 12:
        rows = [np.concatenate(tiles[i * 4:(i + 1) * 4], axis=1) for i in range(3)]
        return np.concatenate(rows, axis=0)
    img, _ = synthetic_blobs((768, 1024), 900, seed=1)
    return np.repeat(img[..., None], 3, axis=2)


class CountingBackend:
    """A backend that counts its model calls (small images must share them)."""

    def __init__(self, backend) -> None:
        self.backend, self.name, self.calls = backend, backend.name, 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        return self.backend.run(batch)


class FakeDetector:
    """A Mask R-CNN stand-in: every bright blob visible in the tile is a detection (clipped at the
    tile edge, as a real detector sees it), with a 28x28 mask in box coordinates."""

    name = "fake-detector"

    def __init__(self, m: int = 28) -> None:
        self.m = m
        self.calls = 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert batch.shape[0] == 1
        self.calls += 1
        x = batch[0].mean(axis=0)
        lab, _ = ndi.label(x > 0.5)
        boxes, masks = [], []
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            crop = (lab[sl] == i).astype(np.float32)
            ry = (np.arange(self.m) + 0.5) * crop.shape[0] / self.m
            rx = (np.arange(self.m) + 0.5) * crop.shape[1] / self.m
            masks.append(crop[ry.astype(int)][:, rx.astype(int)])
            boxes.append([x0, y0, x1, y1])
        boxes_a = np.asarray(boxes, np.float32).reshape(-1, 4)
        return {"boxes": boxes_a, "scores": np.linspace(0.99, 0.9, len(boxes_a)).astype(np.float32),
                "masks": np.asarray(masks, np.float32).reshape(-1, 1, self.m, self.m)}


def f1_and_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[float, int, int]:
    from nseg_data.metrics import match

    m = match(gt, pred, 0.5)
    return m.f1, len(np.unique(gt)) - 1, len(np.unique(pred)) - 1


def same_partition(a: np.ndarray, b: np.ndarray, min_nuclei: int = 1) -> bool:
    """Equal up to label numbering: the same foreground, split into the same nuclei (a one-to-one
    correspondence between the label ids of `a` and those of `b`), of at least `min_nuclei` nuclei:
    two empty images are not the same segmentation, they are a test that saw nothing."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    if len(np.unique(a[fg])) < min_nuclei:
        return False
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def write_labels_tiff(path: Path, labels: np.ndarray, max_label: int, *, tiled: bool,
                      pixel_size_um: tuple[float, float] | None = None) -> Path:
    """`labels` written as `NAME.labels.tif` through the labels sink, as a run writes it."""
    from nseg_infer.regions import ArraySource
    from nseg_infer.sinks.base import LabelledImage
    from nseg_infer.sinks.labels import LabelsTiffSink

    image = LabelledImage(path.name, labels, max_label, ArraySource(np.zeros(labels.shape, np.uint8)), (0.0, 1.0),
                          pixel_size_um=pixel_size_um)
    LabelsTiffSink.open(path, image, tiled=tiled).close()
    return path
