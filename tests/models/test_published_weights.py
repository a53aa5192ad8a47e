"""The published Crystal Twins checkpoints load strictly and compute what the original code does."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from crystaltwins.models import (
    PUBLISHED_ATOM_INIT_FINGERPRINT,
    CrystalTwinsModel,
    atom_features_fingerprint,
    check_atom_features,
    load_published_crystal_twins,
    read_atom_init_table,
)

FILES = {
    "CGCNNBarlow_model.pth": {"h_fea_len": 128, "head": (128, 128, 256)},
    "CGCNNSimSiam_model.pth": {"h_fea_len": 256, "head": (256, 256, 256)},
}


def original_forward(sd, atom_fea, nbr_fea, nbr_idx, crystal_atom_idx):
    """Eval-mode forward of the Crystal Twins CrystalGraphConvNet in its padded (N, M) layout,
    written from the original code, on the raw state dict."""

    def bn(x, prefix):
        return F.batch_norm(
            x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"],
            sd[prefix + ".weight"], sd[prefix + ".bias"], training=False, eps=1e-5,
        )  # fmt: skip

    x = F.linear(atom_fea, sd["embedding.weight"], sd["embedding.bias"])
    n, m = nbr_idx.shape
    a = x.shape[1]
    k = 0
    while f"convs.{k}.fc_full.weight" in sd:
        p = f"convs.{k}"
        total = torch.cat([x.unsqueeze(1).expand(n, m, a), x[nbr_idx, :], nbr_fea], dim=2)
        gated = F.linear(total, sd[p + ".fc_full.weight"], sd[p + ".fc_full.bias"])
        gated = bn(gated.view(-1, 2 * a), p + ".bn1").view(n, m, 2 * a)
        nbr_filter, nbr_core = gated.chunk(2, dim=2)
        summed = torch.sum(torch.sigmoid(nbr_filter) * F.softplus(nbr_core), dim=1)
        x = F.softplus(x + bn(summed, p + ".bn2"))
        k += 1
    crys = torch.cat([x[idx].mean(0, keepdim=True) for idx in crystal_atom_idx])
    crys = F.softplus(F.linear(F.softplus(crys), sd["conv_to_fc.weight"], sd["conv_to_fc.bias"]))
    h = F.softplus(F.linear(crys, sd["fc_head.0.weight"], sd["fc_head.0.bias"]))
    return crys, F.linear(h, sd["fc_head.2.weight"], sd["fc_head.2.bias"])


@pytest.mark.parametrize("name", sorted(FILES))
def test_published_checkpoint_loads_strictly(name, ref_dir, atom_init_table, reference_atom_init):
    encoder, head = load_published_crystal_twins(
        ref_dir / name, atom_init_table, atom_init_path=reference_atom_init
    )
    assert encoder.config["atom_fea_len"] == 64
    assert encoder.config["n_conv"] == 3
    assert encoder.config["h_fea_len"] == FILES[name]["h_fea_len"]
    assert (head.in_dim, head.hidden_dim, head.out_dim) == FILES[name]["head"]
    sd = torch.load(ref_dir / name, map_location="cpu", weights_only=True)
    ours = {**encoder.state_dict(), **{f"fc_head.{k}": v for k, v in head.state_dict().items()}}
    assert set(ours) == set(sd)
    for key, value in sd.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("name", sorted(FILES))
def test_published_model_reproduces_original_forward(name, ref_dir, atom_init_table, collate_fn):
    encoder, head = load_published_crystal_twins(ref_dir / name, atom_init_table)
    model = CrystalTwinsModel(encoder, head).eval()

    # 4 crystals of 3-7 atoms, every atom with M = 12 neighbours (CGCNN's layout)
    gen = torch.Generator().manual_seed(0)
    crystals, m = [], 12
    for n_atoms in (3, 5, 7, 4):
        z = torch.randint(1, 101, (n_atoms,), generator=gen)
        nbr = torch.randint(0, n_atoms, (n_atoms, m), generator=gen)
        dist = (1.8 + 6.0 * torch.rand(n_atoms, m, generator=gen)).sort(dim=1).values
        edge_index = torch.stack((torch.arange(n_atoms).repeat_interleave(m), nbr.reshape(-1)))
        crystals.append((z, edge_index, dist.reshape(-1)))
    batch = collate_fn(crystals)

    nbr_idx = batch.edge_index[1].view(-1, m)
    nbr_fea = encoder.gaussian(batch.edge_distance).view(-1, m, encoder.gaussian.num_features)
    crystal_atom_idx = [torch.nonzero(batch.crystal_index == k).flatten() for k in range(4)]
    sd = torch.load(ref_dir / name, map_location="cpu", weights_only=True)
    with torch.no_grad():
        emb_ref, proj_ref = original_forward(
            sd, atom_init_table[batch.atomic_numbers], nbr_fea, nbr_idx, crystal_atom_idx
        )
        torch.testing.assert_close(model.embed(batch), emb_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(batch), proj_ref, atol=1e-5, rtol=1e-5)


def _corrupt(ref_dir: Path, tmp_path: Path, edit) -> Path:
    sd = torch.load(ref_dir / "CGCNNBarlow_model.pth", map_location="cpu", weights_only=True)
    edit(sd)
    path = tmp_path / "corrupt.pth"
    torch.save(sd, path)
    return path


def test_unexpected_key_fails_naming_it(ref_dir, atom_init_table, tmp_path):
    def edit(sd):
        sd["convs.1.extra.weight"] = torch.zeros(3)

    path = _corrupt(ref_dir, tmp_path, edit)
    with pytest.raises(ValueError, match=r"corrupt\.pth.*convs\.1\.extra\.weight"):
        load_published_crystal_twins(path, atom_init_table)


def test_missing_key_fails_naming_it(ref_dir, atom_init_table, tmp_path):
    path = _corrupt(ref_dir, tmp_path, lambda sd: sd.pop("convs.2.bn1.running_var"))
    with pytest.raises(ValueError, match=r"missing keys.*convs\.2\.bn1\.running_var"):
        load_published_crystal_twins(path, atom_init_table)
    path = _corrupt(ref_dir, tmp_path, lambda sd: sd.pop("fc_head.2.bias"))
    with pytest.raises(ValueError, match=r"fc_head\.2\.bias"):
        load_published_crystal_twins(path, atom_init_table)


def test_mis_shaped_key_fails_naming_it(ref_dir, atom_init_table, tmp_path):
    def edit(sd):
        sd["convs.1.fc_full.weight"] = torch.zeros(128, 170)

    path = _corrupt(ref_dir, tmp_path, edit)
    with pytest.raises(ValueError, match=r"mis-shaped.*convs\.1\.fc_full\.weight"):
        load_published_crystal_twins(path, atom_init_table)


def test_feature_count_must_match(ref_dir, atom_init_table):
    with pytest.raises(ValueError, match="92 element features"):
        load_published_crystal_twins(ref_dir / "CGCNNBarlow_model.pth", atom_init_table[:, :90])


def test_element_encoding_is_checked(ref_dir, atom_init_table, reference_atom_init):
    wrong = atom_init_table.clone()
    wrong[[26, 8]] = wrong[[8, 26]]  # Fe and O swapped
    path = ref_dir / "CGCNNBarlow_model.pth"
    with pytest.raises(ValueError, match=r"Z = \[8, 26\]"):
        load_published_crystal_twins(path, wrong, atom_init_path=reference_atom_init)
    with pytest.raises(ValueError, match="fingerprint"):
        load_published_crystal_twins(path, wrong)
    # the check can be switched off explicitly
    load_published_crystal_twins(path, wrong, expected_fingerprint=None)


def test_fingerprint_of_reference_atom_init(reference_atom_init, atom_init_table):
    table = read_atom_init_table(reference_atom_init)
    assert torch.equal(table, atom_init_table)
    assert atom_features_fingerprint(table) == PUBLISHED_ATOM_INIT_FINGERPRINT
    # extra rows beyond Z = 100 (elements the weights never saw) are allowed
    bigger = torch.cat([table, torch.rand(18, 92)])
    check_atom_features(
        bigger,
        atom_init_path=reference_atom_init,
        expected_fingerprint=PUBLISHED_ATOM_INIT_FINGERPRINT,
    )
    with pytest.raises(ValueError, match="rows for Z <= 49"):
        check_atom_features(table[:50], atom_init_path=reference_atom_init)
