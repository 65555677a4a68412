"""tools/source_report.py: the per-source table against a reference model, and its chart."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("source_report", ROOT / "tools" / "source_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(folder: Path, dsb: dict[str, float]) -> Path:
    folder.mkdir(parents=True)
    per = {s: {"dsb": v, "f1_50": v + 0.2, "aji": v + 0.1, "n_images": 3} for s, v in dsb.items()}
    (folder / "metrics.json").write_text(json.dumps({
        "overall": {"dsb": 0.5, "f1_50": 0.7, "aji": 0.6, "n_images": 6},
        "per_modality": {"fluorescence": {"dsb": 0.5, "f1_50": 0.7, "aji": 0.6, "n_images": 6}},
        "per_source": per,
    }))
    return folder


def test_table_gives_each_sources_change_and_the_mean(tmp_path):
    ref = _report(tmp_path / "ref", {"dsb": 0.55, "tissue": 0.10})
    new = _report(tmp_path / "new", {"dsb": 0.54, "tissue": 0.30})
    out = tmp_path / "rep" / "val"
    assert _tool().main([f"default={ref}", f"multi={new}", "--out", str(out), "--title", "val"]) == 0
    md = out.with_suffix(".md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert rows["dsb"].rstrip(" |").endswith("-0.010")
    assert rows["tissue"].rstrip(" |").endswith("+0.200")
    assert "0.325" in rows["mean of sources"] and "0.420" in rows["mean of sources"]
    assert out.with_suffix(".png").stat().st_size > 1000
