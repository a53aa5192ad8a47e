"""The benchmark tasks of the Crystal Twins paper (Table 2), mapped onto the available data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchmarkTask:
    """One property-prediction benchmark.

    :param file: file name under the data root (``None``: not available here).
    :param paper_cgcnn: the paper's test MAE of supervised CGCNN; ``paper_ct`` of Crystal Twins.
    :param note: how our data differ from the paper's.
    """

    name: str
    file: str | None
    target: str
    unit: str
    transform: str = "none"
    paper_cgcnn: float | None = None
    paper_ct: float | None = None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.file is not None


TASKS: dict[str, BenchmarkTask] = {
    t.name: t
    for t in [
        BenchmarkTask(
            "perovskites",
            "perovskites.csv.gz",
            "e_form",
            "eV/cell",
            paper_cgcnn=0.057,
            paper_ct=0.046,
            note="same data as the paper (18,928 cubic perovskites)",
        ),
        BenchmarkTask(
            "mp_formation_energy",
            "mp36k.csv.gz",
            "formation_energy_per_atom",
            "eV/atom",
            paper_cgcnn=0.040,
            paper_ct=0.025,
            note="36,737-crystal MP snapshot (paper: ~26k MP subset)",
        ),
        BenchmarkTask(
            "mp_band_gap",
            "mp36k.csv.gz",
            "band_gap",
            "eV",
            paper_cgcnn=0.369,
            paper_ct=0.328,
            note="36,737-crystal MP snapshot (paper: ~26k MP subset)",
        ),
        BenchmarkTask(
            "mp_fermi_energy",
            "mp36k.csv.gz",
            "efermi",
            "eV",
            paper_cgcnn=0.400,
            paper_ct=0.399,
            note="36,737-crystal MP snapshot (paper: ~26k MP subset)",
        ),
        BenchmarkTask(
            "gvrh",
            "mp_elasticity.csv.gz",
            "G_VRH",
            "log10(GPa)",
            transform="log10",
            paper_cgcnn=0.092,
            paper_ct=0.087,
            note="3,191 MP elastic tensors, G_VRH > 0 only (paper: matbench_log_gvrh, 10,987)",
        ),
        BenchmarkTask(
            "hoip",
            "hoip.csv.gz",
            "band_gap",
            "eV",
            paper_cgcnn=0.170,
            paper_ct=0.153,
            note="2,142 halide perovskites from a CGCNN fork (paper: 1,333 HOIP)",
        ),
        BenchmarkTask(
            "lanthanides",
            None,
            "formation_energy",
            "eV/atom",
            paper_cgcnn=0.080,
            paper_ct=0.058,
            note="not available here: listed, never run",
        ),
        BenchmarkTask(
            "qmof_band_gap",
            "qmof.csv.gz",
            "band_gap",
            "eV",
            note="extra task (not in the paper): QMOF PBE band gaps",
        ),
    ]
}

#: Tasks of the paper that can be run here, in the paper's order.
PAPER_TASKS = [
    "hoip",
    "perovskites",
    "gvrh",
    "mp_fermi_energy",
    "mp_formation_energy",
    "mp_band_gap",
]
