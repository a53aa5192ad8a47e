"""Every named encoder: default construction, the shared interface, config round trip."""

from __future__ import annotations

import json

import pytest
import torch

from crystaltwins.models.registry import ENCODERS


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_default_encoder_has_the_interface(name, table, crystals_factory, collate_fn):
    torch.manual_seed(0)
    encoder = ENCODERS[name](table)
    batch = collate_fn(crystals_factory(4))
    encoder.eval()
    with torch.no_grad():
        out = encoder(batch)
        atoms = encoder.atom_embeddings(batch)
    assert out.shape == (4, encoder.out_dim) and atoms.shape[0] == batch.num_atoms
    config = json.loads(json.dumps(encoder.config))
    rebuilt = ENCODERS[name].from_config(config, table, encoder.state_dict()).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch), out, atol=0, rtol=0)


def test_gaussian_defaults_are_cgcnns(table):
    from crystaltwins.models.cgcnn import DEFAULT_GAUSSIAN

    for name, cls in ENCODERS.items():
        assert cls(table).config["gaussian"] == {
            k: (None if v is None else float(v)) for k, v in DEFAULT_GAUSSIAN.items()
        }, name


@pytest.mark.parametrize("name", ["gin", "gatgnn", "ogcnn"])
def test_builds_on_the_meta_device(name, table):
    """Model files are checked by building the encoder on the meta device (no memory)."""
    with torch.device("meta"):
        encoder = ENCODERS[name](table)
    reference = ENCODERS[name](table)
    assert {k: v.shape for k, v in encoder.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    assert all(v.is_meta for v in encoder.state_dict().values())


@pytest.mark.parametrize("name", ["gin", "gatgnn", "ogcnn"])
def test_bad_element_table_is_refused(name, table):
    bad = table.clone()
    bad[0, 0] = 1.0
    with pytest.raises(ValueError, match="row 0"):
        ENCODERS[name](bad)
