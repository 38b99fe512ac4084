"""ModelNet40 HDF5 reader, digits point clouds and point-cloud transforms."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from graphkd.datasets import (
    Compose,
    Jitter,
    NormalizeUnitSphere,
    RandomScaleShift,
    SamplePoints,
    ShufflePoints,
    image_to_points,
    load_digits_pointclouds,
    load_modelnet40,
    modelnet40_shape_names,
)


def _write_h5(path, data: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data.astype(np.float32))
        f.create_dataset("label", data=label.astype(np.uint8).reshape(-1, 1))


@pytest.fixture
def modelnet(tmp_path):
    base = tmp_path / "modelnet40_ply_hdf5_2048"
    base.mkdir()
    rng = np.random.default_rng(0)
    files = {}
    # suffixes 0, 1 and 10: numeric order must beat lexical order ("10" < "1" < ...)
    for name, n in (("ply_data_train0.h5", 3), ("ply_data_train10.h5", 2),
                    ("ply_data_train1.h5", 4), ("ply_data_test0.h5", 2)):
        data = rng.standard_normal((n, 16, 3))
        label = rng.integers(0, 40, n)
        _write_h5(base / name, data, label)
        files[name] = (data, label)
    (base / "shape_names.txt").write_text("airplane\nbathtub\n")
    return tmp_path, files


def test_modelnet40_hdf5_round_trip(modelnet):
    root, files = modelnet
    train = load_modelnet40("train", num_points=10, root=root)
    order = ["ply_data_train0.h5", "ply_data_train1.h5", "ply_data_train10.h5"]
    want_pos = np.concatenate([files[f][0] for f in order])[:, :10]
    want_y = np.concatenate([files[f][1] for f in order])
    assert len(train) == 9
    np.testing.assert_array_equal(np.stack([d.pos.numpy() for d in train]),
                                  want_pos.astype(np.float32))
    assert [int(d.y) for d in train] == want_y.tolist()
    assert train[0].pos.dtype == torch.float32 and train[0].y.dtype == torch.long
    test = load_modelnet40("test", num_points=16, root=root)
    assert len(test) == 2 and test[1].pos.shape == (16, 3)
    assert modelnet40_shape_names(root) == ["airplane", "bathtub"]


def test_modelnet40_errors_say_where_files_go(modelnet, tmp_path):
    root, _ = modelnet
    with pytest.raises(ValueError, match="holds 16 points"):
        load_modelnet40("train", num_points=17, root=root)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_modelnet40("val", root=root)
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match="modelnet40_ply_hdf5_2048/README.md"):
        load_modelnet40(root=empty)
    with h5py.File(root / "modelnet40_ply_hdf5_2048" / "ply_data_test1.h5", "w") as f:
        f.create_dataset("points", data=np.zeros((1, 16, 3)))
    with pytest.raises(ValueError, match="'data'"):
        load_modelnet40("test", num_points=16, root=root)


def test_image_to_points_samples_the_ink_density():
    img = torch.zeros(4, 4)
    img[0, 3] = 1.0      # top-right pixel -> x in [0.5, 1], y in [0.5, 1]
    img[3, 0] = 3.0      # bottom-left pixel -> x in [-1, -0.5], y in [-1, -0.5]
    pts = image_to_points(img, 4000, torch.Generator().manual_seed(0))
    top_right = (pts[:, 0] >= 0.5) & (pts[:, 1] >= 0.5)
    bottom_left = (pts[:, 0] <= -0.5) & (pts[:, 1] <= -0.5)
    assert bool((top_right | bottom_left).all())
    assert abs(float(bottom_left.float().mean()) - 0.75) < 0.03   # 3:1 intensity ratio
    again = image_to_points(img, 4000, torch.Generator().manual_seed(0))
    assert torch.equal(pts, again)
    assert not torch.equal(pts, image_to_points(img, 4000, torch.Generator().manual_seed(1)))
    stack = image_to_points(torch.stack([img, img.flip(0)]), 10)
    assert stack.shape == (2, 10, 2)
    assert bool((stack[1, :, 0] * stack[1, :, 1] <= -0.25).all())   # flipped: other diagonal
    with pytest.raises(ValueError, match="positive sum"):
        image_to_points(torch.zeros(2, 2), 3)


def test_digits_point_clouds_match_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    clouds = load_digits_pointclouds(num_points=32, seed=3)
    assert len(clouds) == 1797
    assert [int(c.y) for c in clouds] == digits.target.tolist()
    for i in (0, 100, 1796):
        pos = clouds[i].pos
        assert pos.shape == (32, 2) and bool((pos.abs() <= 1).all())
        col = ((pos[:, 0] + 1) * 4).floor().clamp(max=7).long()
        row = ((1 - pos[:, 1]) * 4).floor().clamp(max=7).long()
        assert bool((torch.as_tensor(digits.images[i])[row, col] > 0).all())
    again = load_digits_pointclouds(num_points=32, seed=3)
    assert torch.equal(clouds[5].pos, again[5].pos)


def _cloud(n=50, d=3):
    return Data(pos=torch.randn(n, d) * 3 + 2, x=torch.arange(n).float().view(-1, 1),
                y=torch.tensor([7]))


def test_normalize_unit_sphere():
    data = _cloud()
    out = NormalizeUnitSphere()(data)
    torch.testing.assert_close(out.pos.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    assert float(out.pos.norm(dim=1).max()) == pytest.approx(1.0)
    assert data.pos.mean(0).abs().max() > 1          # input untouched


def test_random_scale_shift_formula_and_ranges():
    data = _cloud()
    out = RandomScaleShift(generator=torch.Generator().manual_seed(5))(data)
    u = torch.rand(6, generator=torch.Generator().manual_seed(5))
    s = 2 / 3 + (3 / 2 - 2 / 3) * u[:3]
    t = -0.2 + 0.4 * u[3:]
    torch.testing.assert_close(out.pos, data.pos * s + t)
    assert bool(((s >= 2 / 3) & (s <= 1.5)).all())
    with pytest.raises(ValueError, match="low <= high"):
        RandomScaleShift(scale=(2.0, 1.0))


def test_jitter_is_clipped():
    data = Data(pos=torch.zeros(2000, 3))
    out = Jitter(sigma=0.05, clip=0.02, generator=torch.Generator().manual_seed(0))(data)
    assert float(out.pos.abs().max()) == pytest.approx(0.02)
    assert float(out.pos.std()) > 0.01


def test_shuffle_and_sample_keep_points_aligned():
    data = _cloud()
    shuf = ShufflePoints(torch.Generator().manual_seed(0))(data)
    order = shuf.x.view(-1).long()
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    assert torch.equal(shuf.pos, data.pos[order]) and torch.equal(shuf.y, data.y)
    sub = SamplePoints(20, torch.Generator().manual_seed(1))(data)
    idx = sub.x.view(-1).long()
    assert sub.pos.shape == (20, 3) and len(set(idx.tolist())) == 20
    assert torch.equal(sub.pos, data.pos[idx])
    with pytest.raises(ValueError, match="lower num_points"):
        SamplePoints(51)(data)


def test_compose_applies_in_order():
    data = _cloud()
    gen_a, gen_b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    out = Compose([NormalizeUnitSphere(), RandomScaleShift(generator=gen_a)])(data)
    ref = RandomScaleShift(generator=gen_b)(NormalizeUnitSphere()(data))
    torch.testing.assert_close(out.pos, ref.pos)
    assert not math.isclose(float(out.pos.norm(dim=1).max()), 1.0)
    with pytest.raises(ValueError, match="data.pos"):
        NormalizeUnitSphere()(Data(x=torch.zeros(3, 2)))
