"""A directory output at a URL (`UrlDirectory`, on fsspec's in-memory file system): nothing appears at the
URL before the commit, which moves the files under it, puts the sidecar beside it and `_SUCCESS` last; an
existing output is refused without overwrite and replaced whole with it; a failed run leaves nothing."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from churnwatch.errors import ConfigError
from churnwatch.io.object_store import SUCCESS, UrlDirectory


def _written(tmp_path: Path, url: str, overwrite: bool = False, files: int = 2) -> UrlDirectory:
    """An output at `url` whose workers wrote `files` files (not committed)."""
    out = UrlDirectory.open(url, overwrite)
    for k in range(files):
        out.fs.pipe_file(out.file(f"part-{k:05d}.parquet"), f"rows {k}".encode())
    return out


def test_files_appear_at_the_url_on_commit_with_the_sidecar_then_success(tmp_path: Path):
    fs = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}"
    out = _written(tmp_path, f"memory:/{root}/scores")
    assert not fs.exists(f"{root}/scores")  # the workers wrote into a hidden prefix beside it
    report = tmp_path / "scores.report.json"
    report.write_text("{}")
    out.commit(report, overwrite=False)
    out.close()
    assert sorted(fs.ls(f"{root}/scores", detail=False)) == [
        f"{root}/scores/{name}" for name in ("_SUCCESS", "part-00000.parquet", "part-00001.parquet")
    ]
    assert fs.cat_file(f"{root}/scores/part-00001.parquet") == b"rows 1"
    assert fs.cat_file(f"{root}/scores.report.json") == b"{}"
    assert sorted(fs.ls(root, detail=False)) == [f"{root}/scores", f"{root}/scores.report.json"]


def test_an_existing_output_is_kept_without_overwrite_and_replaced_whole_with_it(tmp_path: Path):
    fs = fsspec.filesystem("memory")
    url = f"memory://{tmp_path.name}/scores"
    report = tmp_path / "scores.report.json"
    report.write_text("{}")
    first, late = _written(tmp_path, url, files=3), _written(tmp_path, url, files=1)
    first.commit(report, overwrite=False)
    with pytest.raises(ConfigError, match=rf"^output_path={url} exists \(overwrite=true replaces it\)$"):
        UrlDirectory.open(url, overwrite=False)
    with pytest.raises(ConfigError, match="appeared during the run"):
        late.commit(report, overwrite=False)
    late.close()  # (another run committed while it ran)
    second = _written(tmp_path, url, overwrite=True, files=1)
    second.commit(report, overwrite=True)
    assert sorted(fs.ls(f"/{tmp_path.name}/scores", detail=False)) == [
        f"/{tmp_path.name}/scores/{SUCCESS}",
        f"/{tmp_path.name}/scores/part-00000.parquet",
    ]


def test_a_failed_run_leaves_nothing_at_the_url(tmp_path: Path):
    fs = fsspec.filesystem("memory")
    _written(tmp_path, f"memory://{tmp_path.name}/scores").close()
    assert fs.ls(f"/{tmp_path.name}", detail=False) == []
    with pytest.raises(ConfigError, match=r"^output_path=nope://b/scores: .*nope"):
        UrlDirectory.open("nope://b/scores", overwrite=False)
