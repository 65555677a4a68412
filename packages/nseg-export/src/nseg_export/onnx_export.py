"""Checkpoint -> ONNX bundle (model.onnx + metadata.json [+ model.fp16.onnx]).

UNet: the graph ends in a sigmoid so the runtime receives probabilities, exactly what training's
validation (the runtime's Predictor over a torch backend) hands the instance step. Mask R-CNN: one fixed tile, batch 1, and the graph stops
before mask pasting, which needs per-detection loops that TensorRT's ONNX parser rejects; the
runtime pastes in numpy (`nseg_infer.engine.detections`).

The TorchScript-based exporter (`dynamo=False`) is used for both kinds: it handles torchvision's
detection models, which the dynamo exporter cannot trace in torch 2.14, and needs no onnxscript.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nseg_data.atomic import atomic_dir
from nseg_train import deploy

from nseg_export.metadata import (
    METADATA,
    MetadataError,
    build_metadata,
    write_json_atomic,
)

DEFAULT_OPSET = 17
MODEL_FILE = "model.onnx"
FP16_FILE = "model.fp16.onnx"
# Ops TensorRT's ONNX parser rejects (sequences) or cannot give static-rank outputs for (Loop/Scan).
TRT_UNSUPPORTED_OPS = frozenset({
    "Loop", "Scan", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
    "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence",
})


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    simplify: bool = False
    batch: int = 4  # tiles per model call the runtime uses (and TensorRT profiles optimise for)
    tile: int | None = None  # default: the checkpoint's eval tile
    halo: int | None = None

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ExportError(f"opset must be >= 17 (LayerNorm/RoiAlign semantics we rely on), got {self.opset}")
        if self.batch < 1:
            raise ExportError("batch must be >= 1")


def _torch_export(module: Any, args: tuple, path: Path, *, opset: int, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict | None) -> None:
    import torch

    with warnings.catch_warnings():
        # The legacy exporter warns about itself and about every traced shape-to-int; both are expected here.
        warnings.simplefilter("ignore")
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                module, args, str(path), input_names=input_names, output_names=output_names,
                dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )


def check_onnx(path: Path) -> Any:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ExportError(f"{path}: onnx.checker rejected the exported graph: {e}") from e
    return onnx.load(str(path))


def graph_ops(model: Any) -> set[str]:
    ops: set[str] = set()

    def walk(g: Any) -> None:
        for n in g.node:
            ops.add(n.op_type)
            for a in n.attribute:
                if a.g is not None and len(a.g.node):
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)

    walk(model.graph)
    return ops


def simplify_onnx(path: Path) -> None:
    try:
        import onnxslim
    except ImportError as e:
        raise ExportError("--simplify needs onnxslim: pip install 'nseg-export[simplify]'") from e
    import onnx

    with contextlib.redirect_stdout(io.StringIO()):
        slim = onnxslim.slim(onnx.load(str(path)))
    if slim is None:
        raise ExportError(f"{path}: onnxslim failed to simplify the graph")
    onnx.save(slim, str(path))


def fp16_variant(src: Path, dst: Path) -> None:
    """FP16 weights and activations inside, float32 at the boundary, so the runtime feeds one dtype."""
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise ExportError("--fp16 needs onnxconverter-common: pip install 'nseg-export[fp16]'") from e
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every value clipped to the fp16 range
        # BatchNormalization stays fp32: trained running variances reach ~2e4, and ORT's fp16 BN then
        # moves probabilities by up to 0.2 (measured on a real nseg checkpoint); with BN in fp32, 1e-3.
        m16 = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                               op_block_list=["BatchNormalization"])
    onnx.save(m16, str(dst))
    check_onnx(dst)


# ---------------------------------------------------------------- UNet


def unet_graph(model: Any) -> Any:
    import torch

    class UNetProbs(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(image))

    # eval() on the wrapper too: a wrapper left in train mode would run BatchNorm on batch statistics in torch.
    return UNetProbs(model).eval()


def export_unet_onnx(model: Any, path: Path, *, size_divisor: int, opset: int = DEFAULT_OPSET) -> None:
    import torch

    gen = torch.Generator().manual_seed(1234)
    # Non-square and batch 2 so no axis can be specialised to a traced constant without the checks noticing.
    sample = torch.rand(2, 3, 4 * size_divisor, 6 * size_divisor, generator=gen)
    dyn = {0: "batch", 2: "height", 3: "width"}
    _torch_export(unet_graph(model), (sample,), path, opset=opset, input_names=["image"],
                  output_names=["probs"], dynamic_axes={"image": dyn, "probs": dyn})


# ---------------------------------------------------------------- Mask R-CNN


def maskrcnn_graph(model: Any) -> Any:
    """torchvision MaskRCNN -> module(image [1,3,T,T]) -> boxes [N,4], scores [N], masks [N,1,M,M].

    The model's own transform (normalisation, resize) stays in the graph; its postprocess (box
    rescale + pasting) is replaced by the box rescale alone.
    """
    import torch
    from torchvision.models.detection.transform import resize_boxes

    class MaskRCNNTile(torch.nn.Module):
        def __init__(self, det: torch.nn.Module) -> None:
            super().__init__()
            self.det = det

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            d = self.det
            size = (int(image.shape[-2]), int(image.shape[-1]))
            images, _ = d.transform([image[0]])
            features = d.backbone(images.tensors)
            proposals, _ = d.rpn(images, features)
            detections, _ = d.roi_heads(features, proposals, images.image_sizes)
            det = detections[0]
            boxes = resize_boxes(det["boxes"], images.image_sizes[0], size)
            return boxes, det["scores"], det["masks"]

    import copy

    model = copy.deepcopy(model)  # the GroupNorm swap is for the graph, not the caller's model
    _roi_safe_group_norm(model.roi_heads)
    return MaskRCNNTile(model).eval()


def _roi_safe_group_norm(module: Any) -> None:
    """Swap GroupNorm in the ROI heads for the same arithmetic without a reshape over the ROI
    axis: the exported GroupNorm reshapes to (N, groups, -1), which ONNX Runtime cannot do when a
    tile has no detections (N = 0). Group statistics come from per-channel moments through a
    channel-to-group averaging matrix instead. Weights are shared with the model."""
    import torch

    class RoiGroupNorm(torch.nn.Module):
        def __init__(self, gn: torch.nn.GroupNorm) -> None:
            super().__init__()
            c, g = gn.num_channels, gn.num_groups
            self.eps = gn.eps
            self.weight, self.bias = gn.weight, gn.bias
            member = torch.zeros(c, g)
            member[torch.arange(c), torch.arange(c) // (c // g)] = 1.0
            self.register_buffer("to_group", member / (c // g), persistent=False)
            self.register_buffer("to_channel", member.t().contiguous(), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=(2, 3)) @ self.to_group               # [N, groups]
            sq = (x * x).mean(dim=(2, 3)) @ self.to_group
            var = (sq - mean * mean).clamp_min(0.0)
            mean_c = (mean @ self.to_channel)[:, :, None, None]      # [N, C, 1, 1]
            inv_c = torch.rsqrt(var + self.eps) @ self.to_channel
            return (x - mean_c) * inv_c[:, :, None, None] * self.weight[None, :, None, None] + self.bias[None, :, None, None]

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.GroupNorm):
            setattr(module, name, RoiGroupNorm(child))
        else:
            _roi_safe_group_norm(child)


def export_maskrcnn_onnx(model: Any, path: Path, *, tile: int, opset: int = DEFAULT_OPSET) -> None:
    import torch

    gen = torch.Generator().manual_seed(1234)
    sample = torch.rand(1, 3, tile, tile, generator=gen)
    _torch_export(maskrcnn_graph(model), (sample,), path, opset=opset, input_names=["image"],
                  output_names=["boxes", "scores", "masks"],
                  dynamic_axes={"boxes": {0: "detections"}, "scores": {0: "detections"},
                                "masks": {0: "detections"}})
    bad = graph_ops(check_onnx(path)) & TRT_UNSUPPORTED_OPS
    if bad:
        raise ExportError(f"{path}: Mask R-CNN graph contains {sorted(bad)}, which TensorRT cannot build; "
                          "something with a dynamic loop or sequence leaked into the graph")


def maskrcnn_mask_size(model: Any) -> int:
    # MaskRCNN upsamples the mask head's RoIAlign output by 2 (ConvTranspose stride 2).
    out = model.roi_heads.mask_roi_pool.output_size
    return 2 * int(out[0] if isinstance(out, (tuple, list)) else out)


# ---------------------------------------------------------------- bundle


def export_model(
    model: Any, cfg: Any, ckpt: dict[str, Any], out_dir: Path, options: ExportOptions = ExportOptions()
) -> dict[str, Any]:
    """Write a complete bundle for an already built model.

    The bundle is built in a hidden temp folder beside `out_dir` and published in one step
    (`nseg_data.atomic.atomic_dir`): under `out_dir` there is the previous bundle, whole, or the
    new one, never a folder without metadata.json or with a model its metadata does not describe.
    Replacing a bundle replaces all of it, so engines, variants and reports of the old model go
    with it. A folder that is not a bundle (no metadata.json) and not empty is refused."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a folder")
    kind = cfg.model.kind
    if kind not in ("unet", "maskrcnn"):
        raise ExportError(f"unknown model kind {kind!r}")
    model.eval()
    # The one description of the deployment (nseg_train.deploy), validation's too, with the
    # export's tile/halo/batch applied.
    sections = deploy.deployment_sections(cfg, tile=options.tile, halo=options.halo, batch=options.batch)
    tile, div = sections["tiling"]["tile"], sections["preprocessing"]["size_divisor"]
    if tile % div:
        raise ExportError(f"tile {tile} must be a multiple of the model's size divisor {div}")
    extra: dict[str, Any] = {"precision": "fp32", **({"scale": sections["scale"]} if "scale" in sections else {})}
    if kind == "maskrcnn":
        if options.fp16:
            raise ExportError("--fp16 ONNX variants are UNet-only; build a TensorRT engine with "
                              "`nseg-export trt --fp16` for Mask R-CNN")
        if maskrcnn_mask_size(model) != deploy.mask_size(cfg):
            raise ExportError(f"the model's masks are {maskrcnn_mask_size(model)} px, its config says "
                              f"{deploy.mask_size(cfg)}: the checkpoint and its config disagree")
        extra["maskrcnn"] = {"graph_score_threshold": float(model.roi_heads.score_thresh),
                             "detections_per_image": int(model.roi_heads.detections_per_img)}
    try:
        with atomic_dir(out_dir, marker=METADATA) as tmp:
            onnx_path = tmp / MODEL_FILE
            if kind == "unet":
                export_unet_onnx(model, onnx_path, size_divisor=div, opset=options.opset)
                check_onnx(onnx_path)
            else:
                # Mask R-CNN pads to multiples of 32 internally (its size divisor); a fixed tile that
                # is already one keeps the graph free of padding arithmetic.
                export_maskrcnn_onnx(model, onnx_path, tile=tile, opset=options.opset)
            if options.simplify:
                simplify_onnx(onnx_path)
                check_onnx(onnx_path)
                extra["simplified"] = "onnxslim"
            if options.fp16:
                fp16_path = tmp / FP16_FILE
                fp16_variant(onnx_path, fp16_path)
                from nseg_infer.engine.bundle import sha256_file

                extra["variants"] = [{"file": FP16_FILE, "precision": "fp16", "sha256": sha256_file(fp16_path),
                                      "io_dtype": "float32"}]
            meta = build_metadata(
                kind=kind, ckpt=ckpt, model_path=onnx_path, inputs=sections["inputs"], outputs=sections["outputs"],
                preprocessing=sections["preprocessing"], tiling=sections["tiling"],
                postprocessing=sections["postprocessing"], opset=options.opset, extra=extra,
            )
            write_json_atomic(tmp / METADATA, meta)
    except (MetadataError, OSError) as e:  # OSError: WriteFailed (a full disk), or a folder not to replace
        raise ExportError(str(e)) from e
    return meta


def export_checkpoint(checkpoint: Path, out_dir: Path, options: ExportOptions = ExportOptions()) -> dict[str, Any]:
    from nseg_train.checkpoint import load_model

    try:
        model, cfg, ckpt = load_model(Path(checkpoint))
    except KeyError as e:
        raise ExportError(f"{checkpoint}: no model builder registered for kind {e} in nseg_train") from e
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(str(e)) from e
    return export_model(model, cfg, ckpt, out_dir, options)
