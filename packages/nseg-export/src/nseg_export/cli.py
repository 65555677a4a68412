"""`nseg-export`: checkpoint -> bundle, parity proof, TensorRT engines. Heavy imports happen inside commands."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Export nseg checkpoints to deployable bundles and prove they match.")


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"nseg-export: error: {msg}", err=True)
    raise typer.Exit(code)


@app.command("onnx")
def onnx_cmd(
    checkpoint: Path = typer.Argument(..., help="nseg checkpoint (*.pt)"),
    out: Path = typer.Option(..., "--out", "-o", help="bundle folder to write"),
    opset: int = typer.Option(17, help="ONNX opset (>= 17)"),
    fp16: bool = typer.Option(False, "--fp16", help="also write model.fp16.onnx (UNet)"),
    simplify: bool = typer.Option(False, "--simplify", help="simplify the graph with onnxslim"),
    batch: int = typer.Option(4, help="tiles per model call the runtime should use"),
    tile: int = typer.Option(None, help="tile size (default: the checkpoint's eval tile)"),
    halo: int = typer.Option(None, help="tile halo (default: the checkpoint's eval halo)"),
) -> None:
    """Write BUNDLE_DIR/model.onnx and metadata.json for CHECKPOINT."""
    from nseg_export.onnx_export import ExportError, ExportOptions, export_checkpoint

    try:
        meta = export_checkpoint(checkpoint, out, ExportOptions(opset=opset, fp16=fp16, simplify=simplify,
                                                                batch=batch, tile=tile, halo=halo))
    except ExportError as e:
        _fail(str(e))
    typer.echo(f"wrote {out}/{meta['model_file']} ({meta['kind']}, sha256 {meta['sha256'][:12]}...) "
               f"and {out}/metadata.json" + ("; variants: " + ", ".join(v["file"] for v in meta.get("variants", []))
                                              if meta.get("variants") else ""))


@app.command("parity")
def parity_cmd(
    checkpoint: Path = typer.Argument(..., help="the checkpoint the bundle was exported from"),
    bundle: Path = typer.Argument(..., help="bundle folder"),
    engine: Path = typer.Option(None, "--engine", help="also check this TensorRT engine against ONNX Runtime"),
    data: Path = typer.Option(None, "--data", help="dataset folder for real images (e.g. Kaggle stage1_train)"),
    max_images: int = typer.Option(6, help="real images to use from --data"),
    seed: int = typer.Option(0, help="seed of the random tiles"),
    report: Path = typer.Option(None, "--report", help="JSON report path (default: BUNDLE/parity.json)"),
    threads: int = typer.Option(None, help="ONNX Runtime CPU threads"),
) -> None:
    """Compare torch and the bundle on unseen inputs; exit 1 unless every check passes."""
    from nseg_export.parity import format_report, run_parity

    if engine is not None:
        from nseg_export.trt import TrtUnavailable, require_trt

        try:
            require_trt()  # before minutes of ONNX parity, not after
        except TrtUnavailable as e:
            _fail(f"--engine {engine} cannot be checked: {e}", 2)
    rep = run_parity(checkpoint, bundle, data_dir=data, max_images=max_images, seed=seed, threads=threads)
    if engine is not None:
        from nseg_export.trt import TrtUnavailable, engine_parity

        try:
            rep.targets.append(engine_parity(bundle, engine, data_dir=data, max_images=max_images, seed=seed))
        except TrtUnavailable as e:
            rep.errors.append(f"--engine {engine}: {e}")
    path = report or (bundle / "parity.json")
    try:
        rep.write(path)
    except OSError as e:
        _fail(f"cannot write report {path}: {e}")
    typer.echo(format_report(rep))
    typer.echo(f"report: {path}")
    if not rep.passed:
        raise typer.Exit(1)



@app.command("parity-openvino")
def parity_openvino_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder (its parity.json gains the OpenVINO target)"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 (bf16 is what CPUs with AMX or AVX-512 BF16 run)"),
    data: Path = typer.Option(None, "--data", help="dataset folder for real images (the parity run's)"),
    max_images: int = typer.Option(6, help="real images to use from --data"),
    seed: int = typer.Option(0, help="seed of the random tiles"),
    threads: int = typer.Option(None, help="CPU threads of both backends"),
) -> None:
    """OpenVINO against ONNX Runtime fp32 on the bundle's parity set, recorded in BUNDLE/parity.json
    (what `nseg-infer --device auto` reads before it trusts OpenVINO); exit 1 unless it passes."""
    from nseg_export.openvino_parity import openvino_parity, record

    if precision not in ("fp32", "bf16"):
        _fail(f"--precision must be fp32 or bf16, got {precision!r}", 2)
    target = openvino_parity(bundle, precision, data_dir=data, max_images=max_images, seed=seed, threads=threads)
    path = bundle / "parity.json"
    try:
        record(path, target)
    except (OSError, ValueError) as e:
        _fail(f"cannot record in {path}: {e}")
    s = target.summary()
    typer.echo(f"{target.target}: {'passed' if target.passed else 'FAILED'}; max abs {s['max_abs']:.3g}, "
               f"instance F1@0.5 min {s['min_f1']}, equal counts {s['equal_count_fraction']:.0%}")
    for f in target.failures():
        typer.echo(f"  {f}")
    typer.echo(f"report: {path}")
    if not target.passed:
        raise typer.Exit(1)


@app.command("trt")
def trt_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder made by `nseg-export onnx`"),
    fp16: bool = typer.Option(False, "--fp16", help="allow FP16 kernels"),
    int8: bool = typer.Option(False, "--int8", help="INT8 with calibration on real images (needs --calib)"),
    calib: Path = typer.Option(None, "--calib", help="folder of calibration images (any form nseg-data reads)"),
    calib_images: int = typer.Option(32, help="calibration images to use"),
    data: Path = typer.Option(None, "--data", help="dataset folder for the parity check's real images"),
    max_images: int = typer.Option(6, help="real images for the parity check"),
    workspace_gib: float = typer.Option(4.0, help="TensorRT builder workspace"),
    report: Path = typer.Option(None, "--report", help="JSON parity report (default: BUNDLE/<engine>.parity.json)"),
) -> None:
    """Build a TensorRT engine for BUNDLE, check it against ONNX Runtime, and register it in metadata.json."""
    from nseg_export.trt import TrtUnavailable, build_bundle_engine

    if int8 and calib is None:
        _fail("--int8 needs --calib DIR with real images to calibrate on")
    try:
        res = build_bundle_engine(bundle, fp16=fp16, int8=int8, calib_dir=calib, calib_images=calib_images,
                                  data_dir=data, max_images=max_images, workspace_gib=workspace_gib,
                                  report_path=report)
    except TrtUnavailable as e:
        _fail(f"TensorRT engine not built: {e}", 2)
    except (RuntimeError, ValueError, OSError) as e:
        _fail(str(e))
    typer.echo(res.message)
    if not res.passed:
        raise typer.Exit(1)


@app.command("bioimageio")
def bioimageio_cmd(
    bundle: str = typer.Argument(..., help="UNet bundle folder, or a packaged bundle name (default)"),
    out: Path = typer.Option(..., "--out", "-o", help="MODEL.zip (a zip package) or a folder (unpacked)"),
    image: list[Path] = typer.Option(None, "--image", help="real image for the test tensor and cover (up to two; "
                                     "default: the repository's DSB sample)"),
    name: str = typer.Option(None, help="package name (default: from the bundle)"),
    description: str = typer.Option(None, help="one-paragraph summary (default: nseg's)"),
    author: list[str] = typer.Option(None, "--author", help="author name (repeatable; default: the nseg authors)"),
    version: str = typer.Option("0.1.0", help="the package's version"),
    test: bool = typer.Option(False, "--test", help="also run bioimageio.core's test_model on it (needs the extra)"),
) -> None:
    """Write a bioimage.io model package (spec 0.5) of a UNet BUNDLE: ONNX weights, tensor
    descriptions, scale_range normalisation, test tensors, cover, documentation."""
    from nseg_data.errors import DataError

    from nseg_export.bioimageio_export import (
        BioimageioExportError,
        PackageOptions,
        build_package,
        run_test_model,
    )

    try:
        opts = PackageOptions(name=name, description=description, images=tuple(image or ()), version=version,
                              **({"authors": tuple(author)} if author else {}))
        res = build_package(bundle, out, opts)
    except (BioimageioExportError, DataError, ValueError, OSError) as e:
        _fail(str(e))
    typer.echo(f"wrote {res.path} ({', '.join(res.files)})\n{res.validation}")
    if test:
        try:
            passed, report = run_test_model(res.path)
        except BioimageioExportError as e:
            _fail(str(e), 2)
        typer.echo(report)
        if not passed:
            _fail(f"bioimageio.core test_model failed on {res.path}")


def main() -> None:  # pragma: no cover
    app()
