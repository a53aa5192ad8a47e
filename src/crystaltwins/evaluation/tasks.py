"""The benchmark tasks of the Crystal Twins paper (Table 2), mapped onto the available data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BenchmarkTask:
    """One property-prediction benchmark.

    :param file: file name under the data root (``None``: not available here).
    :param paper_baselines: the paper's test MAE (Table 2) of each supervised model trained from
        scratch, by encoder name (``gin``, ``cgcnn``, ``gatgnn``, ``ogcnn``); ``paper_ct`` of
        Crystal Twins (CGCNN encoder).
    :param matbench_leaderboard: test MAE of published models on the matbench v0.1 leaderboard
        (mean over its 5 folds), when ``file`` is that matbench dataset in matminer's row order, so
        that ``bench --protocol matbench`` (the same folds) is directly comparable.
    :param note: how our data differ from the paper's.
    """

    name: str
    file: str | None
    target: str
    unit: str
    transform: str = "none"
    paper_baselines: dict[str, float] = field(default_factory=dict, hash=False)
    paper_ct: float | None = None
    matbench_leaderboard: dict[str, float] = field(default_factory=dict, hash=False)
    note: str = ""

    @property
    def available(self) -> bool:
        return self.file is not None

    @property
    def paper_cgcnn(self) -> float | None:
        """The paper's test MAE of supervised CGCNN (the baseline CT is compared with)."""
        return self.paper_baselines.get("cgcnn")


def _paper_table2(gin: float, cgcnn: float, gatgnn: float, ogcnn: float) -> dict[str, float]:
    """One task's column of the paper's Table 2 (test MAE of the supervised models)."""
    return {"gin": gin, "cgcnn": cgcnn, "gatgnn": gatgnn, "ogcnn": ogcnn}


TASKS: dict[str, BenchmarkTask] = {
    t.name: t
    for t in [
        BenchmarkTask(
            "perovskites",
            "perovskites.csv.gz",
            "e_form",
            "eV/cell",
            paper_baselines=_paper_table2(0.38, 0.057, 0.071, 0.056),
            paper_ct=0.046,
            matbench_leaderboard={"CGCNN": 0.0452, "ALIGNN": 0.0288, "coGN": 0.0269},
            note="same data as the paper (18,928 cubic perovskites)",
        ),
        BenchmarkTask(
            "mp_formation_energy",
            "mp36k.csv.gz",
            "formation_energy_per_atom",
            "eV/atom",
            paper_baselines=_paper_table2(0.109, 0.04, 0.05, 0.035),
            paper_ct=0.025,
            note="36,737-crystal MP snapshot (paper: ~26k MP subset)",
        ),
        BenchmarkTask(
            "mp_band_gap",
            "mp36k.csv.gz",
            "band_gap",
            "eV",
            paper_baselines=_paper_table2(0.601, 0.369, 0.376, 0.353),
            paper_ct=0.328,
            note="36,737-crystal MP snapshot (paper: ~26k MP subset)",
        ),
        BenchmarkTask(
            "mp_fermi_energy",
            "mp36k.csv.gz",
            "efermi",
            "eV",
            paper_baselines=_paper_table2(0.605, 0.4, 0.428, 0.446),
            paper_ct=0.399,
            note="36,737-crystal MP snapshot (paper: ~26k MP subset)",
        ),
        BenchmarkTask(
            "gvrh",
            "mp_elasticity.csv.gz",
            "G_VRH",
            "log10(GPa)",
            transform="log10",
            paper_baselines=_paper_table2(0.133, 0.092, 0.091, 0.089),
            paper_ct=0.087,
            note="3,191 MP elastic tensors, G_VRH > 0 only (paper: matbench_log_gvrh, 10,987)",
        ),
        BenchmarkTask(
            "hoip",
            "hoip.csv.gz",
            "band_gap",
            "eV",
            paper_baselines=_paper_table2(0.666, 0.17, 0.169, 0.164),
            paper_ct=0.153,
            note="2,142 halide perovskites from a CGCNN fork (paper: 1,333 HOIP)",
        ),
        BenchmarkTask(
            "lanthanides",
            None,
            "formation_energy",
            "eV/atom",
            paper_baselines=_paper_table2(0.197, 0.08, 0.097, 0.072),
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


def _file_name(data: Any) -> str:
    """The file name of a data source, without compression suffixes kept apart."""
    return Path(str(data)).name if data is not None else ""


def known_task(data: Any, target: str) -> BenchmarkTask | None:
    """The benchmark task whose file is ``data`` (matched by file name) and whose target is
    ``target``, or ``None``."""
    name = _file_name(data)
    for task in TASKS.values():
        if task.file == name and task.target == target:
            return task
    return None


def known_unit(data: Any, target: str) -> str:
    """The unit of the values of ``target`` in the shared data file ``data`` (matched by file
    name), ``""`` if unknown: ``G_VRH`` is in GPa, even though its task's metrics are on
    ``log10(GPa)``."""
    task = known_task(data, target)
    return value_unit(task.unit) if task is not None else ""


def value_unit(unit: str) -> str:
    """The unit of a target's own values: ``"log10(GPa)"`` → ``"GPa"``; others unchanged."""
    for name in TRANSFORM_NAMES:
        if unit.startswith(f"{name}(") and unit.endswith(")"):
            return unit[len(name) + 1 : -1]
    return unit


def metric_unit(unit: str, transform: str = "none") -> str:
    """The unit of a target after ``transform``: ``("GPa", "log10")`` → ``"log10(GPa)"``
    (a unit already written so is kept); ``""`` stays ``""``."""
    if not unit or transform == "none":
        return unit
    return f"{transform}({value_unit(unit)})"


#: Target transforms whose name may wrap a unit.
TRANSFORM_NAMES = ("log10",)


def with_known_unit(config: Any) -> Any:
    """A fine-tuning config (with ``data``, ``target``, ``unit``) whose empty ``unit`` is filled
    from :func:`known_unit`; the config itself when its unit is given or unknown."""
    if getattr(config, "unit", "") or not getattr(config, "target", None):
        return config
    unit = known_unit(config.data, config.target)
    return replace(config, unit=unit) if unit else config
