"""Run folders: never a user's file removed, one run at a time, resumes only of the same run."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from crystaltwins.cli.main import main
from crystaltwins.evaluation.runs import finetune
from crystaltwins.training.common import write_config
from crystaltwins.training.finetune import FinetuneConfig
from crystaltwins.training.pretrain import PretrainConfig, pretrain
from crystaltwins.training.run_folder import LOCK_NAME, config_differences
from tests.io.test_locks import hold_lock

REPO = Path(__file__).resolve().parents[2]


def _config(out: Path, **kw) -> FinetuneConfig:
    base = dict(
        data=str(out.parent / "data.csv"),
        target="e_form",
        out=str(out),
        from_scratch=True,
        epochs=2,
        progress=False,
        accelerator="cpu",
        devices="1",
    )
    base.update(kw)
    return FinetuneConfig(**base)


def _earlier_run(out: Path, **kw) -> dict[str, bytes]:
    """A folder holding a finished run (as ``finetune`` leaves it); returns its files' bytes."""
    write_config(out, _config(out, **kw))
    (out / LOCK_NAME).touch()  # every run leaves its (unlocked) lock file
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "best.ckpt").write_bytes(b"old best")
    (out / "checkpoints" / "last.ckpt").write_bytes(b"old last")
    (out / "model.pt").write_bytes(b"old model")
    (out / "metrics.json").write_text("{}")
    return _contents(out)


def _contents(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_a_new_run_into_an_earlier_run_is_refused_untouched(tmp_path):
    out = tmp_path / "run"
    before = _earlier_run(out)
    with pytest.raises(ValueError, match="holds an earlier run; nothing was changed; --resume"):
        finetune(_config(out))
    with pytest.raises(ValueError, match="holds an earlier run"):
        pretrain(PretrainConfig(data=["x.csv"], out=str(out), progress=False))
    assert _contents(out) == before


def test_a_folder_of_user_files_is_refused_and_gets_no_lock_file(tmp_path):
    data = tmp_path / "cifs"
    data.mkdir()
    (data / "1.cif").write_text("data_1")
    (data / "id_prop.csv").write_text("1,0.5\n")
    for flags in ([], ["--overwrite"]):
        code, _, err = cli(
            "finetune", str(data), "--target", "t", "--from-scratch", "--out", str(data), *flags
        )
        assert code == 2 and err.count("\n") == 1 and "nothing was changed" in err
        assert f"holds this command's own input (data {data})" in err
    assert sorted(p.name for p in data.iterdir()) == ["1.cif", "id_prop.csv"]
    elsewhere = tmp_path / "elsewhere.csv"  # other files of the folder are still named
    code, _, err = cli(
        "finetune", str(elsewhere), "--target", "t", "--from-scratch", "--out", str(data)
    )
    assert code == 2 and "1.cif, id_prop.csv" in err
    assert sorted(p.name for p in data.iterdir()) == ["1.cif", "id_prop.csv"]


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
def test_user_files_named_like_the_tools_are_never_taken_for_a_run(tmp_path, flags):
    """A folder without the lock file every run leaves holds the user's files, whatever their
    names: a config.yaml, history.csv or invalid_targets.csv of theirs is neither replaced nor
    removed, with or without --overwrite / --resume."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my_experiment: 42\n")
    (out / "history.csv").write_text("a,b\n")
    (out / "invalid_targets.csv").write_text("mine\n")
    before = _contents(out)
    named = "config.yaml, history.csv, invalid_targets.csv"
    with pytest.raises(ValueError, match=f"{named}.*; nothing was changed"):
        finetune(_config(out, **flags))
    with pytest.raises(ValueError, match=f"{named}.*; nothing was changed"):
        pretrain(PretrainConfig(data=["x.csv"], out=str(out), progress=False, **flags))
    assert _contents(out) == before and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}])
def test_user_files_with_tmp_in_their_names_are_not_taken_for_temporaries(tmp_path, flags):
    """Only the exact names of our atomic writes are temporaries: a user's ``notes.tmpl`` or
    ``results.tmp/`` inside a run folder is neither removed nor ignored."""
    out = tmp_path / "run"
    out.mkdir()
    write_config(out, _config(out))
    (out / LOCK_NAME).touch()
    (out / "my_notes.tmpl").write_text("mine\n")
    (out / "results.tmp").mkdir()
    (out / "results.tmp" / "figure.png").write_bytes(b"png")
    with pytest.raises(ValueError, match="nothing was changed") as refused:
        finetune(_config(out, **flags))
    if flags:  # --overwrite names what it would not remove
        assert "my_notes.tmpl, results.tmp" in str(refused.value)
    assert (out / "my_notes.tmpl").read_text() == "mine\n"
    assert (out / "results.tmp" / "figure.png").read_bytes() == b"png"
    assert (out / "config.yaml").exists()


def test_resume_with_fewer_epochs_than_trained_is_refused_untouched(tmp_path):
    import torch

    out = tmp_path / "run"
    _earlier_run(out, epochs=20)
    torch.save({"epoch": 9}, out / "checkpoints" / "last.ckpt")  # 10 epochs done
    before = _contents(out)
    with pytest.raises(ValueError, match="has trained 10 epochs, more than the 5 asked for"):
        finetune(_config(out, epochs=5, resume=True))
    assert _contents(out) == before  # config.yaml not rewritten


def test_overwrite_removes_only_the_tools_files(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    (out / "my_notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="also holds my_notes.txt; nothing was changed"):
        finetune(_config(out, overwrite=True, data=str(tmp_path / "missing.csv")))
    assert (out / "model.pt").read_bytes() == b"old model"
    (out / "my_notes.txt").unlink()
    # The old run goes before anything else happens (here: the data file is missing).
    with pytest.raises(ValueError, match="missing.csv: no such file"):
        finetune(_config(out, overwrite=True, data=str(tmp_path / "missing.csv")))
    assert not (out / "checkpoints").exists() and not (out / "model.pt").exists()
    assert not (out / "metrics.json").exists()


def test_overwrite_keeps_a_temporary_another_live_process_is_writing(tmp_path):
    """``predict --out RUN/x.csv`` writes ``RUN/.x.tmp-<its pid>-<hex>.csv`` until it renames it:
    a run's ``--overwrite`` meanwhile leaves it; a dead process's temporary goes."""
    from crystaltwins.io.atomic import temporary_path

    out = tmp_path / "run"
    _earlier_run(out)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ours = temporary_path(out / "x.csv")
        live = out / ours.name.replace(f".tmp-{os.getpid()}-", f".tmp-{writer.pid}-")
        live.write_text("being written\n")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = out / ours.name.replace(f".tmp-{os.getpid()}-", f".tmp-{dead.pid}-")
        stale.write_text("left by a killed run\n")
        with pytest.raises(ValueError, match="missing.csv: no such file"):
            finetune(_config(out, overwrite=True, data=str(tmp_path / "missing.csv")))
        assert live.read_text() == "being written\n"
        assert not stale.exists() and not (out / "model.pt").exists()
    finally:
        writer.kill()
        writer.wait()


@pytest.mark.parametrize(
    "user_file",
    [
        "checkpoints/my_good_model.ckpt",
        "tensorboard/notes.txt",
        "members/1/analysis.ipynb",
        "lightning_logs/notes.txt",  # Lightning's folder was removed whole
        "lightning_logs/version_0/notes.txt",
        "members/1/lightning_logs/version_3/plot.png",
    ],
)
def test_overwrite_refuses_user_files_inside_the_tools_folders(tmp_path, user_file):
    out = tmp_path / "run"
    _earlier_run(out)
    (out / "members" / "1").mkdir(parents=True)
    (out / "tensorboard").mkdir()
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    if (out / user_file).parent.name.startswith("version_"):  # beside Lightning's own file
        (out / user_file).parent.joinpath("hparams.yaml").write_text("ours: 1\n")
    (out / user_file).write_text("keep me")
    before = _contents(out)
    with pytest.raises(ValueError, match=re.escape(f"also holds {user_file}; nothing was changed")):
        finetune(_config(out, overwrite=True, data=str(tmp_path / "missing.csv")))
    assert _contents(out) == before


def test_an_attempt_that_stopped_before_its_first_epoch_does_not_block_a_rerun(tmp_path):
    """A run that failed early (too few crystals, a bad file) leaves no results: the same command
    run again (with better data) is not asked for --resume or --overwrite."""
    out = tmp_path / "run"
    write_config(out, _config(out))
    (out / LOCK_NAME).touch()
    (out / "tensorboard").mkdir()
    with pytest.raises(ValueError, match="missing.csv: no such file"):  # got past the folder
        finetune(_config(out, data=str(tmp_path / "missing.csv")))
    assert not (out / "config.yaml").exists() or "missing.csv" in (out / "config.yaml").read_text()


def test_a_run_that_fails_before_its_first_epoch_leaves_no_new_folder(tmp_path):
    """A typo (here: a data file that does not exist) leaves no half-made run folder; a folder
    that existed before the command stays."""
    out = tmp_path / "typo"
    with pytest.raises(ValueError, match="missing.csv: no such file"):
        finetune(_config(out, data=str(tmp_path / "missing.csv")))
    assert not out.exists()
    code, _, err = cli("pretrain", str(tmp_path / "missing.csv"), "--out", str(out))
    assert code == 2 and "missing.csv" in err and not out.exists()
    out.mkdir()
    with pytest.raises(ValueError, match="missing.csv: no such file"):
        finetune(_config(out, data=str(tmp_path / "missing.csv")))
    assert out.is_dir()


def test_a_failed_start_keeps_what_has_value_and_names_a_lost_lock_file(tmp_path):
    """Removed after a failure: only a folder the run created holding nothing of value. Kept:
    one with trained epochs in its history (runs trained together keep no checkpoints). A run
    folder whose lock file was lost is refused with the way to mark it again."""
    from crystaltwins.training.run_folder import claimed_run_folder

    out = tmp_path / "together"
    with pytest.raises(RuntimeError), claimed_run_folder(out):
        (out / "history.csv").write_text("epoch,train_loss\n0,1.5\n")
        raise RuntimeError("failed at epoch 2")
    assert (out / "history.csv").exists()
    out = tmp_path / "early"
    with pytest.raises(RuntimeError), claimed_run_folder(out):
        write_config(out, _config(out))
        (out / "history.csv").write_text("epoch,train_loss\n")
        raise RuntimeError("failed before the first epoch")
    assert not out.exists()
    out = tmp_path / "copied"
    _earlier_run(out)
    (out / LOCK_NAME).unlink()  # e.g. copied without hidden files
    with pytest.raises(ValueError, match=re.escape(f"touch {out / LOCK_NAME}")):
        finetune(_config(out, resume=True))


def test_an_ensemble_that_fails_in_its_first_member_leaves_nothing(tmp_path):
    out = tmp_path / "ensemble"
    with pytest.raises(ValueError, match="missing.csv: no such file"):
        finetune(_config(out, data=str(tmp_path / "missing.csv"), ensemble=2))
    assert not out.exists()


def test_resume_accepts_the_folder_written_another_way(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    for other in (f"{out}/", str(out.resolve()), str(tmp_path / "moved")):
        assert config_differences(out, _config(Path(other))) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [("epochs: [1\n", "unreadable run settings"), ("- a list\n", "holds no run settings")],
)
def test_a_broken_config_yaml_is_one_line_not_a_traceback(tmp_path, text, message):
    out = tmp_path / "run"
    _earlier_run(out)
    (out / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match=f"config.yaml: {message}.*nothing was changed") as caught:
        config_differences(out, _config(out))
    assert "\n" not in str(caught.value)


def test_the_same_model_file_at_another_path_is_the_same_start(tmp_path):
    """A shipped model moves with the installation that holds it: a finished run started from it
    is still reusable when the file at the new path holds the same bytes, not when it differs."""
    old_install, new_install = tmp_path / "venv_a", tmp_path / "venv_b"
    for folder, content in ((old_install, b"weights"), (new_install, b"weights")):
        folder.mkdir()
        (folder / "model.pt").write_bytes(content)
    out = tmp_path / "run"
    start = dict(from_scratch=False, pretrained=str(old_install / "model.pt"))
    _earlier_run(out, **start)
    moved = _config(out, from_scratch=False, pretrained=str(new_install / "model.pt"))
    assert config_differences(out, moved) == []
    (new_install / "model.pt").write_bytes(b"weightz")  # same size, other bytes
    assert config_differences(out, moved) == [
        f"pretrained: {str(old_install / 'model.pt')!r} -> {str(new_install / 'model.pt')!r}"
    ]
    (old_install / "model.pt").unlink()  # the old file is gone: nothing to compare with
    (new_install / "model.pt").write_bytes(b"weights")
    assert len(config_differences(out, moved)) == 1


def test_resume_of_another_run_is_refused_naming_the_differences(tmp_path):
    out = tmp_path / "run"
    before = _earlier_run(out, target="gap_gllbsc")
    with pytest.raises(ValueError, match=r"other settings \(target: 'gap_gllbsc' -> 'e_form'\)"):
        finetune(_config(out, resume=True))
    with pytest.raises(
        ValueError, match=re.escape("from_scratch: True -> False; pretrained: None -> 'x.pt'")
    ):
        finetune(
            _config(out, target="gap_gllbsc", from_scratch=False, pretrained="x.pt", resume=True)
        )
    assert _contents(out) == before
    # Same run: more epochs, other workers, and the data named by another path are fine.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        same = _config(out, target="gap_gllbsc", epochs=9, loader_workers=2, data="data.csv")
        assert config_differences(out, same) == []
    finally:
        os.chdir(cwd)


def test_a_folder_in_use_by_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = hold_lock(out / LOCK_NAME)
    try:
        code, _, err = cli(
            "finetune", str(tmp_path / "d.csv"), "--target", "t", "--from-scratch",
            "--out", str(out), "--resume",
        )  # fmt: skip
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert code == 2 and err.count("\n") == 1
    assert f"in use by another crystaltwins run (process {holder.pid})" in err
    assert not (out / "config.yaml").exists()


def test_bench_continues_its_folder_and_refuses_a_foreign_one(tmp_path):
    from crystaltwins.evaluation.bench import run_bench

    data_root = tmp_path / "data"
    data_root.mkdir()
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"thesis.tex.*; nothing was changed"):
            run_bench(data_root, out, tasks=["perovskites"], overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    (out / "thesis.tex").unlink()
    (out / "runs" / "perovskites").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    with pytest.raises(ValueError, match=r"results.json, runs \(if it is a crystaltwins run"):
        run_bench(data_root, out, tasks=["perovskites"], overwrite=True)  # no bench's lock file
    (out / LOCK_NAME).touch()  # as every bench leaves it
    with pytest.raises(FileNotFoundError, match="no \\*.csv.gz files"):
        run_bench(data_root, out, tasks=["perovskites"], overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


@pytest.mark.slow
def test_two_runs_into_one_folder_at_once(perovskite_subset, cache_root, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "crystaltwins.cli.main", "finetune", str(perovskite_subset),
        "--target", "e_form", "--from-scratch", "--epochs", "60", "--max-train", "200",
        "--out", str(out), "--cache-root", str(cache_root), "--no-progress", "--accelerator", "cpu",
    ]  # fmt: skip
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=_env())
    while not (out / "config.yaml").exists():
        time.sleep(0.1)
    second = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=_env())
    _, first_err = first.communicate()
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and second.stderr.count("\n") == 1
    assert "in use by another crystaltwins run" in second.stderr


@pytest.mark.slow
def test_ctrl_c_during_finetune_says_how_to_resume(perovskite_subset, cache_root, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "crystaltwins.cli.main", "finetune", str(perovskite_subset),
        "--target", "e_form", "--from-scratch", "--epochs", "200", "--out", str(out),
        "--cache-root", str(cache_root), "--no-progress", "--accelerator", "cpu",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=_env())
    while not (out / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.strip().splitlines() == [
        "crystaltwins finetune: interrupted; run the same command again with --resume to "
        "continue after the last finished epoch"
    ]


def test_settings_written_explicitly_by_earlier_versions_match_unset_ones(tmp_path):
    """Runs written before radius / encoder sizes could be left unset stored their values
    (radius 8.0, atom_fea_len 64, ...): the same run now (unset) is not a different one; another
    value still is."""
    import yaml

    from crystaltwins.training.configs import FinetuneConfig
    from crystaltwins.training.run_folder import config_differences

    config = FinetuneConfig(data="d.csv", target="t", out=str(tmp_path), pretrained="crystal-twins")
    stored = {
        **{k: v for k, v in vars(config).items() if not isinstance(v, tuple)},
        "radius": 8.0,
        "max_neighbors": 12,
        "encoder": "cgcnn",
        "atom_fea_len": 64,
        "n_conv": 3,
        "h_fea_len": 128,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    assert config_differences(tmp_path, config) == []
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**stored, "radius": 6.0, "n_conv": 4}))
    assert config_differences(tmp_path, config) == ["n_conv: 4 -> None", "radius: 6.0 -> None"]


def test_a_list_setting_added_since_a_run_was_written_is_not_a_difference(tmp_path):
    """A run folder written before ``aux_targets`` existed resumes: the new list setting at its
    default (an empty list, a factory's) is not a change; a non-default one is."""
    config = FinetuneConfig(data="d.csv", target="y", out=str(tmp_path), from_scratch=True)
    write_config(tmp_path, config)
    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del stored["aux_targets"], stored["aux_weight"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    assert config_differences(tmp_path, config) == []
    wanted = dataclasses.replace(config, aux_targets=["band_gap"])
    assert config_differences(tmp_path, wanted) == ["aux_targets: None -> ['band_gap']"]


def test_a_run_written_before_a_recipe_setting_existed_is_not_the_same_run(tmp_path):
    """Barlow Twins' L2 normalisation, the uniform perturbation and per-atom edge masking came
    with settings whose defaults changed what pre-training computes: a run folder written
    before them (no such keys) did the earlier thing, so it is not resumed as the same run."""
    out = tmp_path / "run"
    out.mkdir()
    config = PretrainConfig(data=["x.csv"], out=str(out), progress=False)
    write_config(out, config)
    assert config_differences(out, config) == []
    stored = yaml.safe_load((out / "config.yaml").read_text())
    for name in ("barlow_l2_normalize", "perturbation_min", "edge_mask_per"):
        del stored[name]
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    differences = config_differences(out, config)
    assert "barlow_l2_normalize: False (before the setting) -> True" in differences
    assert "perturbation_min: None (before the setting) -> 0.0" in differences
    assert "edge_mask_per: 'crystal' (before the setting) -> 'atom'" in differences
    earlier = dataclasses.replace(
        config, barlow_l2_normalize=False, perturbation_min=None, edge_mask_per="crystal"
    )
    assert config_differences(out, earlier) == []


def test_a_recipe_setting_a_run_did_not_use_does_not_block_its_resume(tmp_path):
    """A SimSiam run written before ``barlow_l2_normalize`` existed, without rp or em: none of
    the three new settings acts on it, so it resumes as the same run."""
    out = tmp_path / "run"
    out.mkdir()
    config = PretrainConfig(
        data=["x.csv"], out=str(out), progress=False, objective="simsiam", augment="am"
    )
    write_config(out, config)
    stored = yaml.safe_load((out / "config.yaml").read_text())
    for name in ("barlow_l2_normalize", "perturbation_min", "edge_mask_per"):
        del stored[name]
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    assert config_differences(out, config) == []


def test_a_shipped_model_is_stored_by_its_own_name_and_default_read_as_it_was_meant(tmp_path):
    """``default`` moved from the Crystal Twins encoder to mp-multi-33k (2026-12-02): a run's
    settings record the model's own name, and a ``default`` stored before the move is read as
    the Crystal Twins encoder: resuming it with ``crystal-twins`` (or that file) is the same
    run, with ``default`` (now another model) a difference that says what it named."""
    from crystaltwins.models.pretrained import shipped_model_path

    config = FinetuneConfig(data="d.csv", target="y", out=str(tmp_path), pretrained="default")
    config.validate()
    assert config.pretrained == "mp-multi-33k"
    write_config(tmp_path, config)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["pretrained"] == "mp-multi-33k"
    assert config_differences(tmp_path, config) == []
    again = dataclasses.replace(config, pretrained="default")  # not validated: the name as given
    assert config_differences(tmp_path, again) == []
    other = dataclasses.replace(config, pretrained="mp-multi")
    assert config_differences(tmp_path, other) == ["pretrained: 'mp-multi-33k' -> 'mp-multi'"]

    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**stored, "pretrained": "default"}))
    for same in ("crystal-twins", str(shipped_model_path("crystal-twins"))):
        assert config_differences(tmp_path, dataclasses.replace(config, pretrained=same)) == []
    assert config_differences(tmp_path, again) == [
        "pretrained: 'default' (then the name of 'crystal-twins') -> 'default'"
    ]


def test_pretraining_records_a_shipped_start_by_its_own_name(tmp_path):
    from crystaltwins.training.configs import PretrainConfig

    config = PretrainConfig(data=["d.csv"], out=str(tmp_path), init_from="default")
    config.validate()
    assert config.init_from == "mp-multi-33k"
    kept = PretrainConfig(data=["d.csv"], out=str(tmp_path), init_from="crystal-twins")
    kept.validate()
    assert kept.init_from == "crystal-twins"


def test_a_run_never_takes_its_own_input_for_its_folder(tmp_path):
    """``finetune --pretrained RUN --out RUN --overwrite`` removed the model it was about to
    start from (then failed: no model.pt); ``pretrain --init-from RUN --out RUN`` likewise.
    Refused in one line, nothing touched; ``bench``'s list of excluded crystals, written into
    the pre-training folder for it, is no such input."""
    import shutil

    from crystaltwins.models.pretrained import shipped_model_path

    out = tmp_path / "pre"
    _earlier_run(out)
    shutil.copy(shipped_model_path("crystal-twins"), out / "model.pt")  # a real model
    before = _contents(out)
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        config = _config(out, from_scratch=False, pretrained=str(out), **flags)
        with pytest.raises(ValueError, match=r"holds this command's own input \(pretrained "):
            finetune(config)
        config = PretrainConfig(
            data=["x.csv"], out=str(out), init_from=str(out / "model.pt"), progress=False, **flags
        )
        with pytest.raises(ValueError, match="own input .init_from .*; nothing was changed"):
            pretrain(config)
        assert _contents(out) == before
    data = out / "data.csv"  # the data itself inside --out
    with pytest.raises(ValueError, match="own input .data "):
        finetune(_config(out, data=str(data), overwrite=True))
    from crystaltwins.training.run_folder import EXCLUDED_IDS_FILE, _inputs_inside

    bench_list = PretrainConfig(
        data=["x.csv"], out=str(out), exclude_ids_file=str(out / EXCLUDED_IDS_FILE)
    )
    assert _inputs_inside(out, bench_list) == []
    shipped = _config(out, from_scratch=False, pretrained="default")
    assert _inputs_inside(Path.cwd(), shipped) == []  # a name, not a file of the folder


def test_a_run_resumed_from_another_folder_or_a_moved_project_is_the_same_run(
    tmp_path, monkeypatch
):
    """config.yaml keeps the paths as typed and the folder the command ran in: resumed from
    another working folder, the same files were read as other settings ("data: 'p200.csv' ->
    '../p200.csv'", and the message suggested --overwrite); a project moved elsewhere still
    resumes from its own folder."""
    import shutil

    project = tmp_path / "project"
    (project / "runs").mkdir(parents=True)
    (project / "p200.csv").write_text("id,cif,e_form\n")
    (project / "pre").mkdir()
    monkeypatch.chdir(project)
    config = FinetuneConfig(data="p200.csv", target="e_form", out="runs/ft", pretrained="pre")
    write_config(Path("runs/ft"), config)
    stored = yaml.safe_load(Path("runs/ft/config.yaml").read_text())
    assert (stored["data"], stored["working_dir"]) == ("p200.csv", str(project))
    assert config_differences(Path("runs/ft"), config) == []
    monkeypatch.chdir(project / "runs")
    moved = FinetuneConfig(data="../p200.csv", target="e_form", out="ft", pretrained="../pre")
    assert config_differences(Path("ft"), moved) == []
    other = FinetuneConfig(data="../other.csv", target="e_form", out="ft", pretrained="../pre")
    assert config_differences(Path("ft"), other) == ["data: 'p200.csv' -> '../other.csv'"]
    monkeypatch.chdir(tmp_path)
    shutil.move(project, tmp_path / "renamed")
    monkeypatch.chdir(tmp_path / "renamed")
    assert config_differences(Path("runs/ft"), config) == []  # as before working_dir existed
    settings = dict(stored, resume=True)
    from crystaltwins.training.configs import config_from_settings

    again = config_from_settings(FinetuneConfig, settings)  # the file as --config: no setting
    assert again.data == "p200.csv" and not hasattr(again, "working_dir")


def test_a_setting_given_now_that_the_run_left_unset_to_the_same_value_is_the_same_run(tmp_path):
    """``--resume --radius 8`` / ``--max-neighbors 12`` of a run that left them unset (the
    defaults), ``--split-seed S`` of a run of ``--seed S`` without one, and the reverse: the same
    run. Values the unset run did not use, or a radius a graph cache's run did not use, are not."""
    out = tmp_path / "run"
    out.mkdir()
    write_config(out, _config(out, seed=3))
    assert config_differences(out, _config(out, seed=3, radius=8.0, max_neighbors=12)) == []
    assert config_differences(out, _config(out, seed=3, split_seed=3)) == []
    assert config_differences(out, _config(out, seed=3, radius=6.0)) == ["radius: None -> 6.0"]
    assert config_differences(out, _config(out, seed=3, split_seed=0)) == ["split_seed: None -> 0"]
    write_config(out, _config(out, seed=3, radius=8.0, split_seed=3))
    assert config_differences(out, _config(out, seed=3)) == []
    assert config_differences(out, _config(out, seed=4, split_seed=3)) == ["seed: 3 -> 4"]
    # a run on a graph cache whose Gaussians end at 7 Å: --radius 8 would end them at 8 Å
    cache = tmp_path / "cache"
    cache.mkdir()
    key = {"graph_settings": {"radius": 8.0, "max_neighbors": 12, "gaussian_dmax": 7.0}}
    (cache / "manifest.json").write_text(json.dumps({"key": key}))
    write_config(out, _config(out, data=str(cache)))
    assert config_differences(out, _config(out, data=str(cache), max_neighbors=12)) == []
    assert config_differences(out, _config(out, data=str(cache), radius=8.0)) == [
        "radius: None -> 8.0"
    ]
    # a run that took its starting model's settings: those are the model's, not compared here
    # (a resume accepted would rewrite config.yaml before the run compares them with the model)
    write_config(out, _config(out, from_scratch=False, pretrained="crystal-twins"))
    given = _config(out, from_scratch=False, pretrained="crystal-twins", radius=6.0)
    assert config_differences(out, given) == ["radius: None -> 6.0"]


def test_a_pretraining_from_a_model_that_left_the_radius_to_it_is_not_given_one(tmp_path):
    """``pretrain --init-from M`` takes M's graph settings: ``--resume --radius 8`` is compared
    as given, not read as the defaults (M may have been built at another radius)."""
    out = tmp_path / "pre"
    out.mkdir()
    config = PretrainConfig(data=[str(tmp_path / "d.csv")], out=str(out), init_from="m.pt")
    write_config(out, config)
    given = dataclasses.replace(config, radius=8.0)
    assert config_differences(out, given) == ["radius: None -> 8.0"]
    write_config(out, dataclasses.replace(config, init_from=None))
    assert config_differences(out, dataclasses.replace(given, init_from=None)) == []
