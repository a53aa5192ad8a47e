"""Valence-shell one-hot vectors of the orbital-field matrix (OFM) descriptor.

OFM: T. L. Pham, H. Kino, K. Terakura, T. Miyake, K. Tsuda, I. Takigawa, H. C. Dam, "Machine
learning reveals orbital interaction in materials", Sci. Technol. Adv. Mater. 18, 756 (2017);
used as atom features by OGCNN (M. Karamad, R. Magar, Y. Shi, S. Siahrostami, I. D. Gates,
A. Barati Farimani, Phys. Rev. Materials 4, 093801, 2020).

Every element gets a 32-vector ``o`` with a one at ``s1, s2, p1..p6, d1..d10, f1..f14`` for each
valence subshell and its electron count. The configurations below are those of the OGCNN code
(``ogcnn/data.py`` of github.com/RishikeshMagar/Crystal-Twins, ``OGCNN_CT``), parsed as it
parses them (whitespace-separated tokens after the first, the noble-gas core; H is ``s1``), so
that the features equal the published ones, quirks included: He, Fr and Ra get zero vectors
(no token after the first), Pr gets only ``6s2`` (``'[Xe]4f3 6s2'``), Ga and Tl have ``p2``
(as written there), Pd ``d10`` only. Elements the code does not list (Rn and Z > 109) get zeros.
"""

from __future__ import annotations

import numpy as np

#: Length of the valence one-hot vector.
N_ORBITALS = 32

_ORBITAL_INDEX = {
    **{f"s{k}": k - 1 for k in range(1, 3)},
    **{f"p{k}": 1 + k for k in range(1, 7)},
    **{f"d{k}": 7 + k for k in range(1, 11)},
    **{f"f{k}": 17 + k for k in range(1, 15)},
}

# fmt: off
#: Electron configurations as written in the OGCNN code (by element symbol).
OGCNN_CONFIGURATIONS: dict[str, str] = {
    "H": "1s2", "Li": "[He] 1s2", "Be": "[He] 2s2", "B": "[He] 2s2 2p1", "N": "[He] 2s2 2p3",
    "O": "[He] 2s2 2p4", "C": "[He] 2s2 2p2", "I": "[Kr] 4d10 5s2 5p5", "F": "[He] 2s2 2p5",
    "Na": "[Ne] 3s1", "Mg": "[Ne] 3s2", "Al": "[Ne] 3s2 3p1", "Si": "[Ne] 3s2 3p2",
    "P": "[Ne] 3s2 3p3", "S": "[Ne] 3s2 3p4", "Cl": "[Ne] 3s2 3p5", "K": "[Ar] 4s1",
    "Ca": "[Ar] 4s2", "Sc": "[Ar] 3d1 4s2", "Ti": "[Ar] 3d2 4s2", "V": "[Ar] 3d3 4s2",
    "Cr": "[Ar] 3d5 4s1", "Mn": "[Ar] 3d5 4s2", "Fe": "[Ar] 3d6 4s2", "Co": "[Ar] 3d7 4s2",
    "Ni": "[Ar] 3d8 4s2", "Cu": "[Ar] 3d10 4s1", "Zn": "[Ar] 3d10 4s2",
    "Ga": "[Ar] 3d10 4s2 4p2", "Ge": "[Ar] 3d10 4s2 4p2", "As": "[Ar] 3d10 4s2 4p3",
    "Se": "[Ar] 3d10 4s2 4p4", "Br": "[Ar] 3d10 4s2 4p5", "Rb": "[Kr] 5s1", "Sr": "[Kr] 5s2",
    "Y": "[Kr] 4d1 5s2", "Zr": "[Kr] 4d2 5s2", "Nb": "[Kr] 4d4 5s1", "Mo": "[Kr] 4d5 5s1",
    "Ru": "[Kr] 4d7 5s1", "Rh": "[Kr] 4d8 5s1", "Pd": "[Kr] 4d10", "Ag": "[Kr] 4d10 5s1",
    "Cd": "[Kr] 4d10 5s2", "In": "[Kr] 4d10 5s2 5p1", "Sn": "[Kr] 4d10 5s2 5p2",
    "Sb": "[Kr] 4d10 5s2 5p3", "Te": "[Kr] 4d10 5s2 5p4", "Cs": "[Xe] 6s1", "Ba": "[Xe] 6s2",
    "La": "[Xe] 5d1 6s2", "Ce": "[Xe] 4f1 5d1 6s2", "Hf": "[Xe] 4f14 5d2 6s2",
    "Ta": "[Xe] 4f14 5d3 6s2", "W": "[Xe] 4f14 5d5 6s1", "Re": "[Xe] 4f14 5d5 6s2",
    "Os": "[Xe] 4f14 5d6 6s2", "Ir": "[Xe] 4f14 5d7 6s2", "Pt": "[Xe] 4f14 5d10",
    "Au": "[Xe] 4f14 5d10 6s1", "Hg": "[Xe] 4f14 5d10 6s2", "Tl": "[Xe] 4f14 5d10 6s2 6p2",
    "Pb": "[Xe] 4f14 5d10 6s2 6p2", "Bi": "[Xe] 4f14 5d10 6s2 6p3", "Tc": "[Kr] 4d5 5s2",
    "Fr": "[Rn]7s1", "Ra": "[Rn]7s2", "Pr": "[Xe]4f3 6s2", "Nd": "[Xe] 4f4 6s2",
    "Pm": "[Xe] 4f5 6s2", "Sm": "[Xe] 4f6 6s2", "Eu": "[Xe] 4f7 6s2", "Gd": "[Xe] 4f7 5d1 6s2",
    "Tb": "[Xe] 4f9 6s2", "Dy": "[Xe] 4f10 6s2", "Ho": "[Xe] 4f11 6s2", "Er": "[Xe] 4f12 6s2",
    "Tm": "[Xe] 4f13 6s2", "Yb": "[Xe] 4f14 6s2", "Lu": "[Xe] 4f14 5d1 6s2",
    "Po": "[Xe] 4f14 5d10 6s2 6p4", "At": "[Xe] 4f14 5d10 6s2 6p5", "Ac": "[Rn] 6d1 7s2",
    "Th": "[Rn] 6d2 7s2", "Pa": "[Rn] 5f2 6d1 7s2", "U": "[Rn] 5f3 6d1 7s2",
    "Np": "[Rn] 5f4 6d1 7s2", "Pu": "[Rn] 5f6 7s2", "Am": "[Rn] 5f7 7s2",
    "Cm": "[Rn] 5f7 6d1 7s2", "Bk": "[Rn] 5f9 7s2", "Cf": "[Rn] 5f10 7s2",
    "Es": "[Rn] 5f11 7s2", "Fm": "[Rn] 5f12 7s2", "Md": "[Rn] 5f13 7s2", "No": "[Rn] 5f14 7s2",
    "Lr": "[Rn] 5f14 6d1 7s2", "Rf": "[Rn] 5f14 6d2 7s2", "Db": "[Rn] 5f14 6d3 7s2",
    "Sg": "[Rn] 5f14 6d4 7s2", "Bh": "[Rn] 5f14 6d5 7s2", "Hs": "[Rn] 5f14 6d6 7s2",
    "Mt": "[Rn] 5f14 6d7 7s2", "Xe": "[Kr] 4d10 5s2 5p6", "He": "1s2",
    "Kr": "[Ar] 3d10 4s2 4p6", "Ar": "[Ne] 3s2 3p6", "Ne": "[He] 2s2 2p6",
}
# fmt: on


def valence_vector(symbol: str) -> np.ndarray:
    """The OGCNN code's 32-vector of element ``symbol`` (zeros when it does not list it)."""
    vector = np.zeros(N_ORBITALS, dtype=np.float32)
    configuration = OGCNN_CONFIGURATIONS.get(symbol)
    if configuration is None:
        return vector
    if symbol == "H":
        vector[_ORBITAL_INDEX["s1"]] = 1.0
        return vector
    for token in configuration.split()[1:]:
        vector[_ORBITAL_INDEX[token[1:]]] = 1.0  # "3d6" → "d6"
    return vector


def valence_table(n_z: int = 119) -> np.ndarray:
    """``(n_z, 32)`` float32: row Z the valence vector of element Z, row 0 (masked) zeros."""
    from pymatgen.core.periodic_table import Element

    table = np.zeros((n_z, N_ORBITALS), dtype=np.float32)
    for z in range(1, n_z):
        table[z] = valence_vector(Element.from_Z(z).symbol)
    return table
