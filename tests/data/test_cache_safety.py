"""Graph caches never replace a user's folder, survive concurrent builders, and fail with one
line on a full disk, a read-only cache root or Ctrl-C."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

import crystaltwins.data.cache as cache_module
from crystaltwins.cli.main import main
from crystaltwins.data.cache import GraphCache, build_graph_cache
from crystaltwins.data.sources import prepare_caches
from tests.data.test_cache import write_csv
from tests.helpers import read_cifs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rows(data_dir):
    return [
        (i, cif, str(0.1 * k))
        for k, (i, cif) in enumerate(read_cifs(data_dir / "perovskites.csv.gz", 60))
    ]


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_out_pointing_at_the_input_folder_or_a_user_folder_is_refused(data_dir, tmp_path):
    import shutil

    data = tmp_path / "cgcnn"
    shutil.copytree(data_dir / "samples" / "cgcnn_regression", data)
    before = _files(data)
    code, _, err = cli("featurize", str(data), "--out", str(data), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "is the input data" in err
    assert _files(data) == before
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    code, _, err = cli("featurize", str(data), "--out", str(user), "--no-progress")
    assert code == 2 and "not a crystaltwins graph cache" in err and "nothing was changed" in err
    assert _files(user) == {"notes.txt": b"keep"}
    # a file, and a foreign "<out>.partial" folder, are refused too
    code, _, err = cli("featurize", str(data), "--out", str(user / "notes.txt"), "--no-progress")
    assert code == 2 and "exists and is not a folder" in err
    (tmp_path / "c.partial").mkdir()
    (tmp_path / "c.partial" / "draft.txt").write_text("keep")
    code, _, err = cli("featurize", str(data), "--out", str(tmp_path / "c"), "--no-progress")
    assert code == 2 and "not an unfinished crystaltwins cache build" in err
    assert (tmp_path / "c.partial" / "draft.txt").read_text() == "keep"


def test_a_cache_holding_other_files_is_not_replaced(rows, tmp_path):
    source = write_csv(tmp_path / "d.csv.gz", rows[:10])
    cache = tmp_path / "c"
    build_graph_cache(source, cache, progress=False)
    (cache / "analysis.ipynb").write_text("keep")
    with pytest.raises(ValueError, match=r"also holds other files \(analysis.ipynb\)"):
        build_graph_cache(source, cache, progress=False, force=True)
    assert (cache / "analysis.ipynb").read_text() == "keep"


def test_stale_temporaries_of_dead_builds_are_removed(rows, tmp_path):
    source = write_csv(tmp_path / "d.csv.gz", rows[:10])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"c.tmp-{dead.pid}-89abcdef"
    stale.mkdir()
    (stale / "positions.npy").write_bytes(b"half")
    partial = tmp_path / "c.partial"
    partial.mkdir()
    (partial / f".chunk_000000.tmp-{dead.pid}-0123abcd.npz").write_bytes(b"half")
    build_graph_cache(source, tmp_path / "c", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c.lock", "d.csv.gz"]


def test_a_250_character_file_name_gets_a_cache(rows, tmp_path):
    source = write_csv(tmp_path / ("x" * 243 + ".csv.gz"), rows[:5])
    assert len(source.name) == 250
    (cache,) = prepare_caches([source], cache_root=tmp_path / "caches", progress=False, log=None)
    assert len(cache) == 5 and len(cache.cache_dir.name) <= 100


def test_disk_full_gives_one_line_and_leaves_no_half_files(rows, tmp_path, monkeypatch):
    """A full disk simulated by the writer raising ENOSPC (in the chunk writer, then while
    assembling the arrays)."""
    source = write_csv(tmp_path / "d.csv.gz", rows[:10])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for name in ("_write_chunk", "_write_arrays"):
        with monkeypatch.context() as patch:
            patch.setattr(cache_module, name, full)
            code, _, err = cli(
                "featurize", str(source), "--out", str(tmp_path / "c"), "--no-progress",
                "--workers", "1",
            )  # fmt: skip
        assert code == 2 and err.count("\n") == 1
        assert err.startswith("crystaltwins featurize: error: no space left on the disk")
        assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    # space again: the same command finishes the build
    code, out, _ = cli("featurize", str(source), "--out", str(tmp_path / "c"), "--no-progress")
    assert code == 0 and "crystals built: 10" in out


def test_chunk_writer_names_the_folder_when_the_disk_is_full(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    chunk = cache_module._pack_chunk([], [], [])
    with pytest.raises(OSError) as caught:
        cache_module._write_chunk(tmp_path, 0, chunk)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_read_only_cache_root_gives_one_line(rows, tmp_path, monkeypatch):
    """A read-only cache root simulated by ``mkdir`` failing with EROFS (tests may run as root,
    for whom permissions do not apply)."""
    source = write_csv(tmp_path / "d.csv.gz", rows[:5])
    root = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, _, err = cli("featurize", str(source), "--out", str(root / "c"), "--no-progress")
    assert code == 2 and err.count("\n") == 1
    assert "cannot write" in err and "read-only" in err and str(root) in err


def _env(cache_root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "CRYSTALTWINS_CACHE": str(cache_root)}


def test_two_featurize_processes_on_one_cache(rows, tmp_path):
    source = write_csv(tmp_path / "d.csv.gz", rows)
    out = tmp_path / "c"
    command = [
        sys.executable, "-m", "crystaltwins.cli.main", "featurize", str(source), "--out", str(out),
        "--no-progress", "--workers", "1",
    ]  # fmt: skip
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    # one built it; the other waited for it (or came later) and reused it
    assert sorted("(reused, up to date)" in out for out, _ in results) == [False, True]
    assert all("crystals built: 60" in out for out, _ in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c.lock", "d.csv.gz"]
    assert len(GraphCache(out)) == 60


def test_two_processes_needing_one_uncached_dataset(rows, tmp_path):
    """As two ``predict`` or ``finetune`` runs on the same data and ``$CRYSTALTWINS_CACHE``."""
    source = write_csv(tmp_path / "d.csv.gz", rows)
    root = tmp_path / "caches"
    code = (
        "import sys\n"
        "from crystaltwins.data.sources import prepare_caches\n"
        "(cache,) = prepare_caches([sys.argv[1]], progress=False, log=None)\n"
        "print(len(cache), cache.cache_dir)\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(source)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(root),
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    (first, _), (second, _) = results
    assert first == second and first.split()[0] == "60"  # the same cache, whole
    expected = Path(first.split()[1])
    assert sorted(p.name for p in root.iterdir()) == [expected.name, expected.name + ".lock"]


@pytest.mark.slow
def test_ctrl_c_during_featurize_says_how_to_continue(perovskite_subset, tmp_path):
    out = tmp_path / "c"
    command = [
        sys.executable, "-m", "crystaltwins.cli.main", "featurize", str(perovskite_subset),
        "--out", str(out), "--no-progress", "--workers", "2",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    while not list((tmp_path / "c.partial").glob("chunk_*.json")):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines() == [
        "crystaltwins featurize: interrupted; run the same command again to continue "
        "(finished parts of the graph cache are kept)"
    ]
    rerun = subprocess.run(command, capture_output=True, text=True, env=_env(tmp_path))
    assert rerun.returncode == 0 and "crystals built: 1500" in rerun.stdout


@pytest.mark.slow
def test_kill_9_during_featurize_then_rerun_gives_the_same_cache(perovskite_subset, tmp_path):
    from crystaltwins.graph.atom_features import default_featurizer

    out = tmp_path / "killed" / "c"
    out.parent.mkdir()
    command = [
        sys.executable, "-m", "crystaltwins.cli.main", "featurize", str(perovskite_subset),
        "--out", str(out), "--no-progress", "--workers", "2",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=_env(tmp_path))
    while not list(out.parent.glob("c.partial/chunk_*.json")):
        time.sleep(0.05)
    process.kill()
    process.wait()
    rerun = subprocess.run(command, capture_output=True, text=True, env=_env(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["c", "c.lock"]  # nothing stale
    expected = tmp_path / "whole"
    build_graph_cache(
        perovskite_subset, expected, featurizer=default_featurizer(None), progress=False
    )
    for array in sorted(p.name for p in expected.glob("*.npy")):
        np.testing.assert_array_equal(
            np.load(out / array), np.load(expected / array), err_msg=array
        )


def test_a_source_that_cannot_be_read_leaves_nothing_behind(tmp_path):
    """A missing file or one without a CIF column fails before any folder is made for it (the
    lock file beside a cache folder is the only thing that may stay)."""
    from crystaltwins.io.records import CrystalInputError

    with pytest.raises(CrystalInputError, match="no such file or folder"):
        build_graph_cache(tmp_path / "missing.csv", tmp_path / "new" / "sub" / "c", progress=False)
    assert not (tmp_path / "new").exists()
    table = tmp_path / "table.csv"
    table.write_text("id,foo,e\na,b,1\n")
    with pytest.raises(CrystalInputError, match="no CIF column"):
        build_graph_cache(table, tmp_path / "c", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.lock", "table.csv"]


def test_user_files_beside_a_finished_cache_are_never_removed(data_dir, tmp_path):
    """A user's .npy inside a cache folder, or a folder of the cache's '.partial' name holding
    other files, is refused, never replaced, even when the cache itself could be reused."""
    source = data_dir / "samples" / "cgcnn_regression"
    cache = tmp_path / "c"
    build_graph_cache(source, cache, progress=False)
    (cache / "mine.npy").write_bytes(b"user")
    with pytest.raises(ValueError, match=r"also holds other files \(mine.npy\)"):
        build_graph_cache(source, cache, progress=False, force=True)
    assert (cache / "mine.npy").read_bytes() == b"user"
    (cache / "mine.npy").unlink()
    partial = tmp_path / "c.partial"
    partial.mkdir()
    (partial / "key.json").write_text("{}")
    (partial / "notes.txt").write_text("user")
    build_graph_cache(source, cache, progress=False)  # reused as it is
    with pytest.raises(ValueError, match="not an unfinished crystaltwins cache build"):
        build_graph_cache(source, cache, progress=False, force=True)
    assert (partial / "notes.txt").read_text() == "user"


def test_a_file_put_into_an_empty_out_folder_during_the_build_is_kept(
    data_dir, tmp_path, monkeypatch
):
    """The folder was empty when the build started, and a user saved a file into it before the
    build's last step: the build refuses to replace the folder (the file was removed with it),
    keeps its graphs, and finishes once the file is moved out."""
    source = data_dir / "samples" / "cgcnn_regression"
    cache = tmp_path / "c"
    cache.mkdir()
    write_arrays = cache_module._write_arrays

    def meanwhile(*args, **kwargs):
        (cache / "notes.txt").write_text("mine")
        return write_arrays(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_write_arrays", meanwhile)
    with pytest.raises(ValueError, match="which it was not when the build started") as refused:
        build_graph_cache(source, cache, progress=False)
    assert "\n" not in str(refused.value) and "nothing in it was changed" in str(refused.value)
    assert _files(cache) == {"notes.txt": b"mine"}
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []  # no half cache left
    assert (tmp_path / "c.partial").is_dir()  # the graphs built, kept for the next run
    monkeypatch.setattr(cache_module, "_write_arrays", write_arrays)
    (cache / "notes.txt").unlink()
    built = build_graph_cache(source, cache, progress=False)
    assert len(GraphCache(cache)) == 10 and built is not None


def test_an_open_cache_keeps_its_data_when_another_run_rebuilds_it(rows, tmp_path):
    """Run A has the cache open; run B rebuilds it from changed data. A keeps reading the
    crystals it opened (ids and atoms still match); a worker reopening A's cache after the
    rebuild is refused with one line instead of mixing the two."""
    import pickle

    source = write_csv(tmp_path / "d.csv.gz", rows[:10])
    cache = tmp_path / "c"
    build_graph_cache(source, cache, progress=False)
    opened = GraphCache(cache)
    before = [(opened.ids[i], opened.graph(i).atomic_numbers.tolist()) for i in range(10)]
    state = pickle.dumps(opened)
    write_csv(source, rows[1:10])  # one crystal fewer: every index shifts
    build_graph_cache(source, cache, progress=False)
    assert len(GraphCache(cache)) == 9
    after = [(opened.ids[i], opened.graph(i).atomic_numbers.tolist()) for i in range(10)]
    assert after == before
    with pytest.raises(RuntimeError, match="rebuilt or removed by another run"):
        pickle.loads(state)


def test_a_cache_inside_its_data_folder_is_reused(data_dir, tmp_path):
    """``featurize cg --out cg/cache``: the cache, its lock and a second cache beside it are
    not part of the folder's data (they changed its fingerprint: rebuilt every time); a new
    data file still is."""
    import shutil

    from crystaltwins.data.cache import source_fingerprint

    data = tmp_path / "cg"
    shutil.copytree(data_dir / "samples" / "cgcnn_regression", data)
    clean = source_fingerprint(data)
    first = build_graph_cache(data, data / "cache", progress=False)
    assert not first.reused and first.crystals == 10
    assert build_graph_cache(data, data / "cache", progress=False).reused
    assert build_graph_cache(data, data / "other", progress=False).crystals == 10
    assert build_graph_cache(data, data / "cache", progress=False).reused
    assert source_fingerprint(data) == clean
    (data / "cache.tmp-1-0123abcd").mkdir()  # a writer's temporary: not data either
    assert source_fingerprint(data) == clean
    (data / "cache.notes").write_text("a user's file")  # near the name, but data
    assert source_fingerprint(data) != clean
    (data / "cache.notes").unlink()
    (data / "notes").mkdir()  # a subfolder: the readers read none (it forced a rebuild)
    (data / "notes" / "readme.txt").write_text("a user's notes")
    assert source_fingerprint(data) == clean
    assert build_graph_cache(data, data / "cache", progress=False).reused
    (data / "extra.cif").write_text((data / "1000041.cif").read_text())
    assert source_fingerprint(data) != clean
    assert not build_graph_cache(data, data / "cache", progress=False).reused


def test_a_cache_folder_given_as_a_symlink_is_refused_untouched(data_dir, tmp_path):
    """Its build renamed the link, put the cache beside it and failed; a later build removed
    the user's link as a stale temporary."""
    target = tmp_path / "disk2" / "cache"
    target.mkdir(parents=True)
    link = tmp_path / "cache"
    link.symlink_to(target)
    with pytest.raises(ValueError, match=r"is a symbolic link; give the folder it points to"):
        build_graph_cache(data_dir / "samples" / "cgcnn_regression", link, progress=False)
    assert link.is_symlink() and list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "disk2"]
    built = build_graph_cache(data_dir / "samples" / "cgcnn_regression", target, progress=False)
    assert built.crystals == 10
