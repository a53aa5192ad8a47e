"""``predict`` / ``embed`` of an input none of whose crystals can be used: one line naming how many
were skipped and where they are listed, exit 2, and no output written (nor an earlier one replaced)."""

from __future__ import annotations

import csv
from pathlib import Path

import ase.io
import pytest
from ase import Atoms

from crystaltwins.cli.main import main

GOOD_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""


def _table(path: Path, cifs: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "cif"])
        writer.writerows((f"x{k}", cif) for k, cif in enumerate(cifs))
    return path


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_no_usable_crystal_is_one_line_and_writes_nothing(
    command, tiny_model, tmp_path, capsys
) -> None:
    common = ["--cache-root", str(tmp_path / "caches")]
    out = tmp_path / ("p.csv" if command == "predict" else "e.npz")
    good = _table(tmp_path / "good.csv", [GOOD_CIF])
    assert main([command, str(tiny_model), str(good), "--out", str(out), *common]) == 0
    earlier = out.read_bytes()
    capsys.readouterr()
    bad = _table(tmp_path / "bad.csv", ["not a cif", "data_x\n_cell_length_a 1\n", "?"])
    assert main([command, str(tiny_model), str(bad), "--out", str(out), *common]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    listed = next((tmp_path / "caches").glob("bad-*/skipped.csv"))
    assert line == (
        f"crystaltwins {command}: error: {bad}: none of its crystals could be used "
        f"(3 skipped, listed in {listed}); nothing was written"
    )
    with listed.open(newline="") as handle:
        assert [r["id"] for r in csv.DictReader(handle)] == ["x0", "x1", "x2"]
    assert out.read_bytes() == earlier  # the earlier output is kept as it was
    fresh = tmp_path / ("new.csv" if command == "predict" else "new.npz")
    assert main([command, str(tiny_model), str(bad), "--out", str(fresh), *common]) == 2
    assert not fresh.exists()


def test_no_usable_crystal_for_a_model_with_auxiliary_targets_is_one_line(tmp_path, capsys):
    """mp-multi (two auxiliary outputs): the same one line, not an error of its extra columns."""
    bad = _table(tmp_path / "bad.csv", ["not a cif"])
    out = tmp_path / "p.csv"
    common = ["--cache-root", str(tmp_path / "caches")]
    assert main(["predict", "mp-multi", str(bad), "--out", str(out), *common]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "none of its crystals could be used (1 skipped" in line and not out.exists()


def test_one_unusable_structure_file_names_the_reason(tiny_model, tmp_path, capsys) -> None:
    """A single structure's cache is temporary (its list is gone): the reason is given instead."""
    path = tmp_path / "xx.extxyz"
    ase.io.write(path, Atoms("Na2", positions=[[0, 0, 0], [0, 0, 1e-6]], cell=[4] * 3, pbc=True))
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_model), str(path), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"crystaltwins predict: error: {path}: none of its crystals could be")
    assert f"(1 skipped, {path}: " in line and "closer than 0.5 Å" in line
    assert not out.exists()


def test_featurize_that_builds_nothing_fails_with_one_line(tmp_path, capsys) -> None:
    bad = _table(tmp_path / "bad.csv", ["not a cif", "?"])
    out = tmp_path / "cache"
    assert main(["featurize", str(bad), "--out", str(out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "crystals built: 0" in captured.out and "skipped: 2" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line == (
        f"crystaltwins featurize: error: {bad}: none of its crystals could be used "
        f"(2 skipped, listed in {out / 'skipped.csv'})"
    )
    good = _table(tmp_path / "good.csv", [GOOD_CIF])
    assert main(["featurize", str(good), "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
