from __future__ import annotations

from nseg_data.paths import recorded_path


def test_paths_inside_the_base_are_relative_and_others_keep_only_their_name(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "runs" / "x").mkdir(parents=True)
    assert recorded_path(repo / "runs" / "x" / "best.pt", repo) == "runs/x/best.pt"
    assert recorded_path(repo, repo) == "."
    assert recorded_path(tmp_path / "elsewhere" / "stage1_train", repo) == "stage1_train"
    assert recorded_path(repo / ".." / "shared" / "data", repo) == "data"  # `..` leaves the base
    monkeypatch.chdir(repo)
    assert recorded_path("runs/x") == "runs/x" and recorded_path(repo / "runs") == "runs"
    assert recorded_path("../outside/pred") == "pred"
