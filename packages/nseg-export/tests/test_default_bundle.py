"""The committed default model: its bundle must still match its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_helpers import SAMPLE_DATA
from nseg_infer.engine.bundle import default_bundle_path


def _default_pair() -> tuple[Path, Path] | str:
    bundle = default_bundle_path()
    if not (bundle / "metadata.json").is_file():
        return f"no default bundle committed at {bundle}"
    from nseg_train import default_checkpoint_path

    ckpt = default_checkpoint_path()
    if not ckpt.is_file():
        return f"no default checkpoint at {ckpt} to compare the bundle at {bundle} against"
    return bundle, ckpt


PAIR = _default_pair()


@pytest.mark.skipif(isinstance(PAIR, str), reason=PAIR if isinstance(PAIR, str) else "")
def test_default_bundle_matches_its_checkpoint(tmp_path):
    from nseg_export.parity import format_report, run_parity

    bundle, ckpt = PAIR
    rep = run_parity(ckpt, bundle, data_dir=SAMPLE_DATA if SAMPLE_DATA.is_dir() else None, max_images=3)
    rep.write(tmp_path / "parity.json")
    assert rep.passed, format_report(rep)
