"""Pre-training objectives summed with weights (``--objective barlow_twins+masked_element+denoise``).

An objective (:mod:`crystaltwins.losses`) is parameter-free and of one of three kinds, told by
class attributes:

- crystal-level, ``forward(z_a, z_b)``: the projections ``(B, D)`` of the two views (Barlow Twins,
  VICReg, NT-Xent);
- crystal-level with ``uses_predictor = True``, ``forward(z_a, z_b, p_a, p_b)``: also the
  predictor head's outputs (SimSiam);
- atom-level with ``uses_atoms = True``, ``forward(atom_embeddings, view, head)``, called once
  per view and averaged over the two: the encoder's atom embeddings ``(n_atoms, A)`` of the view,
  the view, and the objective's head (``make_head(atom_dim, num_elements, radius)``), which the
  pre-training module owns (masked-element prediction, distance denoising).

Weights: ``--objective-weights`` takes either one number per objective, in the order of
``--objective`` (``1,0.5,1``), or ``name:weight`` pairs (``masked_element:0.5``; objectives not
named weigh 1). The total loss is ``Σ weight · loss``; each loss is logged unweighted as
``train_loss_<name>`` / ``val_loss_<name>`` when there are several.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.losses import OBJECTIVES, build_objective, objective_class

#: Weight of an objective that ``--objective-weights`` does not name.
DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True)
class ObjectiveTerm:
    """One summand of the pre-training loss.

    :param name: the objective's registered name (its log name).
    :param weight: its weight in the sum.
    :param objective: the parameter-free loss module.
    """

    name: str
    weight: float
    objective: nn.Module


def _canonical(name: str) -> str:
    objective_class(name)  # ValueError naming the registered ones
    return name.strip().lower().replace("-", "_")


def parse_objectives(spec: str, weights: str | None = None) -> list[tuple[str, float]]:
    """The ``(name, weight)`` pairs of ``--objective`` and ``--objective-weights``.

    :param spec: registered names joined by ``+``, e.g. ``"barlow_twins+denoise"``.
    :param weights: ``None`` (all 1), one number per objective (``"1,0.5"``) or ``name:weight``
        pairs (``"denoise:0.5"``), comma-separated.
    :raises ValueError: for an unknown or repeated name, or a weight that does not fit.
    """
    names = [_canonical(part) for part in str(spec).split("+") if part.strip()]
    if not names:
        raise ValueError(f"no objective in {spec!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"objective {', '.join(repeated)} given more than once in {spec!r}")
    chosen = dict.fromkeys(names, DEFAULT_WEIGHT)
    items = [item.strip() for item in (weights or "").split(",") if item.strip()]
    named = [":" in item for item in items]
    if items and any(named) and not all(named):
        raise ValueError(
            f"objective weights {weights!r}: give either one number per objective or "
            "name:weight pairs, not both"
        )
    if items and not any(named):
        if len(items) != len(names):
            raise ValueError(
                f"{len(items)} objective weights {weights!r} for {len(names)} objectives "
                f"({'+'.join(names)})"
            )
        pairs = list(zip(names, items, strict=True))
    else:
        pairs = []
        for item in items:
            name, value = item.split(":", 1)
            key = _canonical(name)
            if key not in chosen:
                raise ValueError(f"objective weight for {name.strip()!r}, which --objective lacks")
            pairs.append((key, value))
    for name, value in pairs:
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(
                f"objective weight {value.strip()!r} of {name} is not a number"
            ) from None
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"objective weight of {name} must be positive, got {value.strip()}")
        chosen[name] = weight
    return list(chosen.items())


def check_augmentations(spec: str, augmentations: Sequence[str]) -> None:
    """Every atom-level objective of ``spec`` finds the augmentation its views need.

    :raises ValueError: naming the objective and the augmentations to add.
    """
    for name, _ in parse_objectives(spec):
        needs = getattr(objective_class(name), "needs_augmentation", ())
        if needs and not set(needs) & set(augmentations):
            raise ValueError(
                f"objective {name} needs {' or '.join(needs)} in --augment "
                f"(given: {','.join(augmentations) or 'none'})"
            )


def build_objectives(spec: str, weights: str | None = None, **settings: Any) -> list[ObjectiveTerm]:
    """The weighted objectives of ``spec`` (see :func:`parse_objectives`); ``settings`` go to
    the objectives that take them (:func:`~crystaltwins.losses.build_objective`)."""
    return [
        ObjectiveTerm(name, weight, build_objective(name, **settings))
        for name, weight in parse_objectives(spec, weights)
    ]


def as_terms(objective: nn.Module | Sequence[ObjectiveTerm]) -> list[ObjectiveTerm]:
    """A single objective as one term of weight 1 (named as registered), terms unchanged."""
    if isinstance(objective, nn.Module):
        name = next((n for n, c in OBJECTIVES.items() if type(objective) is c), None)
        return [ObjectiveTerm(name or type(objective).__name__.lower(), 1.0, objective)]
    return list(objective)


def uses_atoms(term: ObjectiveTerm) -> bool:
    """Whether ``term`` is atom-level (sees atom embeddings and the view, not projections)."""
    return bool(getattr(term.objective, "uses_atoms", False))


def uses_predictor(term: ObjectiveTerm) -> bool:
    """Whether ``term`` also takes the predictor head's outputs (SimSiam)."""
    return bool(getattr(term.objective, "uses_predictor", False))


def make_heads(
    terms: Sequence[ObjectiveTerm], atom_dim: int, num_elements: int, radius: float
) -> dict[str, nn.Module]:
    """Fresh heads of the atom-level terms, by term name.

    :param atom_dim: width ``A`` of the encoder's atom embeddings (:func:`atom_embedding_width`).
    :param num_elements: rows of the element table (element classes).
    :param radius: the graph's neighbour cutoff in Å.
    """
    return {
        t.name: t.objective.make_head(atom_dim, num_elements, radius)  # type: ignore[operator]
        for t in terms
        if uses_atoms(t)
    }


def atom_embedding_width(encoder: nn.Module, batch: CrystalGraphBatch) -> int:
    """Width ``A`` of ``encoder.atom_embeddings`` on ``batch`` (evaluated once, in eval mode
    without gradients, so that no BatchNorm statistics change)."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            return int(encoder.atom_embeddings(batch).shape[1])  # type: ignore[operator]
    finally:
        encoder.train(was_training)


def crystal_and_atom_embeddings(
    encoder: nn.Module, batch: CrystalGraphBatch
) -> tuple[Tensor, Tensor]:
    """The crystal embeddings ``(B, H)`` and atom embeddings ``(n_atoms, A)`` of ``batch`` in one
    encoder pass.

    Every registered encoder computes its crystal embeddings from ``self.atom_embeddings(batch)``;
    the call is intercepted for the length of this forward, so the message passing runs once.
    An encoder whose forward does not call it exactly once gets a second pass for the atoms.
    """
    captured: list[Tensor] = []
    atom_embeddings = encoder.atom_embeddings

    def capture(view: CrystalGraphBatch) -> Tensor:
        out = atom_embeddings(view)  # type: ignore[operator]
        captured.append(out)
        return out

    encoder.atom_embeddings = capture  # instance attribute, shadowing the method
    try:
        crystal = encoder(batch)
    finally:
        del encoder.atom_embeddings
    if len(captured) == 1 and captured[0].shape[0] == batch.num_atoms:
        return crystal, captured[0]
    return crystal, encoder.atom_embeddings(batch)  # type: ignore[operator]


def objective_losses(
    terms: Sequence[ObjectiveTerm],
    views: Sequence[CrystalGraphBatch],
    encoder: nn.Module,
    projector: nn.Module,
    predictor: nn.Module | None = None,
    heads: Mapping[str, nn.Module] | None = None,
) -> dict[str, Tensor]:
    """Every term's (unweighted) loss on the two views, by name; one encoder pass per view.

    :param terms: the objectives.
    :param views: the two views of the same crystals.
    :param encoder: ``batch → (B, H)`` with ``atom_embeddings(batch) → (n_atoms, A)``.
    :param projector: ``(B, H) → (B, D)``.
    :param predictor: ``(B, D) → (B, D)``, for a term that ``uses_predictor``.
    :param heads: the atom-level terms' heads, by name.
    """
    crystal_level = any(not uses_atoms(t) for t in terms)
    atom_level = any(uses_atoms(t) for t in terms)
    if atom_level and crystal_level:
        encoded = [crystal_and_atom_embeddings(encoder, v) for v in views]
    elif atom_level:
        encoded = [(None, encoder.atom_embeddings(v)) for v in views]  # type: ignore[operator]
    else:
        encoded = [(encoder(v), None) for v in views]
    z = [projector(crystal) for crystal, _ in encoded] if crystal_level else []
    p = (
        [predictor(zi) for zi in z]
        if predictor is not None and any(map(uses_predictor, terms))
        else []
    )
    losses: dict[str, Tensor] = {}
    for term in terms:
        if uses_atoms(term):
            head = (heads or {})[term.name]
            per_view = [
                term.objective(h, v, head) for (_, h), v in zip(encoded, views, strict=True)
            ]
            losses[term.name] = torch.stack(per_view).mean()
        elif uses_predictor(term):
            losses[term.name] = term.objective(z[0], z[1], p[0], p[1])
        else:
            losses[term.name] = term.objective(z[0], z[1])
    return losses


def weighted_sum(terms: Sequence[ObjectiveTerm], losses: Mapping[str, Tensor]) -> Tensor:
    """``Σ weight · loss`` over the terms."""
    total = None
    for term in terms:
        part = losses[term.name] if term.weight == 1.0 else term.weight * losses[term.name]
        total = part if total is None else total + part
    assert total is not None, "no objective"
    return total
