"""Data: IDX loading through torchvision, batched augmentation, errors that say how to fix them."""

import gzip
import struct

import pytest
import torch

from largebatch.config import apply_overrides
from largebatch.data import GlobalBatchSampler, build_data, check_data
from largebatch.data.fashion_mnist import find_files, load_fashion_mnist
from largebatch.data.tensors import random_crop_flip
from largebatch.recipes import DEFAULT_RECIPE, get_recipe


def write_idx(path, tensor: torch.Tensor, compress: bool):
    header = struct.pack(">I", 0x0800 + tensor.ndim) + b"".join(struct.pack(">I", s) for s in tensor.shape)
    blob = header + tensor.to(torch.uint8).numpy().tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def make_fake_fmnist(folder, compress, n_train=50, n_test=20):
    g = torch.Generator().manual_seed(0)
    parts = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28), generator=g),
        "train-labels-idx1-ubyte": torch.randint(0, 10, (n_train,), generator=g),
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_test, 28, 28), generator=g),
        "t10k-labels-idx1-ubyte": torch.randint(0, 10, (n_test,), generator=g),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in parts.items():
        write_idx(folder / name, t, compress)
    return parts


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_load_exactly(tmp_path, monkeypatch, compress):
    monkeypatch.setenv("LARGEBATCH_CACHE", str(tmp_path / "cache"))
    parts = make_fake_fmnist(tmp_path / "fm", compress)
    tx, ty, vx, vy = load_fashion_mnist(str(tmp_path / "fm"))
    assert tx.shape == (50, 1, 28, 28) and tx.dtype == torch.uint8
    assert torch.equal(tx[:, 0], parts["train-images-idx3-ubyte"].to(torch.uint8))
    assert torch.equal(ty, parts["train-labels-idx1-ubyte"])
    assert torch.equal(vx[:, 0], parts["t10k-images-idx3-ubyte"].to(torch.uint8))
    assert torch.equal(vy, parts["t10k-labels-idx1-ubyte"])


def test_missing_files_message_says_how_to_get_them(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as err:
        find_files(str(tmp_path))
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and "apt-get install -y dataset-fashion-mnist" in msg
    assert "data.root" in msg
    cfg = apply_overrides(get_recipe(DEFAULT_RECIPE), [f"data.root={tmp_path}"])
    with pytest.raises(FileNotFoundError):
        check_data(cfg)


def test_training_set_smaller_than_global_batch_is_refused_before_launch():
    from largebatch.config import ConfigError

    cfg = apply_overrides(get_recipe(DEFAULT_RECIPE), ["data.train_subset=500"])
    with pytest.raises(ConfigError, match="exceeds the 500 training samples"):
        check_data(cfg)


def test_corrupt_idx_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LARGEBATCH_CACHE", str(tmp_path / "cache"))
    make_fake_fmnist(tmp_path / "fm", compress=False)
    (tmp_path / "fm" / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(
        ValueError, match=r"train-images-idx3-ubyte: not the IDX file train-images-idx3-ubyte \(magic number 0x6e6f7420"
    ):
        load_fashion_mnist(str(tmp_path / "fm"))


def test_real_fashion_mnist_is_installed():
    """The README's set-up installs Debian's dataset-fashion-mnist; the suite needs it."""
    tx, ty, vx, vy = load_fashion_mnist("")
    assert tx.shape == (60000, 1, 28, 28) and vx.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(ty), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(vy), torch.full((10,), 1000))


def test_random_crop_flip_matches_per_sample_reference():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 2, 5, 7), dtype=torch.uint8)
    offsets = torch.randint(0, 5, (6, 2))
    flips = torch.tensor([True, False, True, False, False, True])
    out = random_crop_flip(x, offsets, flips, padding_px=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        oy, ox = offsets[i].tolist()
        ref = padded[i, :, oy : oy + 5, ox : ox + 7]
        if flips[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    centre = random_crop_flip(x, torch.full((6, 2), 2), torch.zeros(6, dtype=torch.bool), padding_px=2)
    assert torch.equal(centre, x)


def test_augmented_global_batch_does_not_depend_on_world_size():
    cfg = apply_overrides(
        get_recipe(DEFAULT_RECIPE),
        ["data.name=synthetic", "data.synthetic.train_samples=256", "data.image_size_px=12", "data.crop_padding_px=2"],
    )
    data = build_data(cfg, device=torch.device("cpu"))

    def batches(world):
        per_rank = []
        for r in range(world):
            s = GlobalBatchSampler(data.num_train, 64, world_size=world, rank=r, seed=7)
            s.set_epoch(1)
            per_rank.append(list(data.train_batches(s, seed=7)))
        return [torch.cat([per_rank[r][k][0] for r in range(world)]) for k in range(len(per_rank[0]))]

    one, two = batches(1), batches(2)
    assert len(one) == 4 and all(torch.equal(a, b) for a, b in zip(one, two))
    # and augmentation really happens: the batch differs from the un-augmented images
    s = GlobalBatchSampler(data.num_train, 64, world_size=1, rank=0, seed=7)
    s.set_epoch(1)
    idx = next(iter(s))
    assert not torch.equal(one[0], data._normalize(data.train_images[idx]))


def test_validation_split_is_disjoint_fixed_by_the_seed_and_complete():
    from largebatch.data import validation_split

    train, val = validation_split(1000, 100, seed=0)
    assert val.numel() == 100 and train.numel() == 900
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))  # disjoint, covering
    assert torch.equal(val, val.sort().values) and torch.equal(train, train.sort().values)
    again, other = validation_split(1000, 100, seed=0), validation_split(1000, 100, seed=1)
    assert torch.equal(again[1], val) and not torch.equal(other[1], val)
    assert val.float().mean().item() == pytest.approx(500, abs=100)  # a random draw, not the first 100
    with pytest.raises(ValueError, match="data.val_size=1000 must be between 1 and 999"):
        validation_split(1000, 1000, seed=0)


def test_build_data_holds_the_validation_images_out_of_training():
    cfg = apply_overrides(
        get_recipe(DEFAULT_RECIPE),
        [
            "data.name=synthetic",
            "data.synthetic.train_samples=600",
            "data.synthetic.test_samples=50",
            "data.image_size_px=8",
            "data.val_size=100",
            "train.global_batch_size=128",
            "train.bn.batch_size=32",
        ],
    )
    plain = build_data(apply_overrides(cfg, ["data.val_size=0"]), device=torch.device("cpu"))
    data = build_data(cfg, device=torch.device("cpu"))
    assert data.num_train == 500 and data.num_val == 100 and plain.num_val == 0
    from largebatch.data import validation_split

    train_idx, val_idx = validation_split(600, 100, seed=cfg.train.seed)
    assert torch.equal(data.val_images, plain.train_images[val_idx])
    assert torch.equal(data.train_images, plain.train_images[train_idx])
    # every validation image once across 2 ranks, none of them a training image
    seen = [lbl for r in range(2) for _, lbl in data.eval_batches(world_size=2, rank=r, batch_size=32, split="val")]
    assert sum(s.numel() for s in seen) == 100
    with pytest.raises(ValueError, match="no validation split"):
        next(plain.eval_batches(world_size=1, rank=0, batch_size=32, split="val"))


def test_validation_split_errors_before_launch():
    from largebatch.config import ConfigError
    from largebatch.plan import resolve

    cfg = get_recipe(DEFAULT_RECIPE)
    with pytest.raises(ConfigError, match="data.val_size=60000 holds out all 60000"):
        check_data(apply_overrides(cfg, ["data.val_size=60000"]))
    with pytest.raises(ConfigError, match="train.global_batch_size=512 exceeds the 100"):
        check_data(apply_overrides(cfg, ["data.train_subset=600", "data.val_size=500"]))
    with pytest.raises(ConfigError, match="data.val_size=10 is invalid: 0 for imagefolder"):
        resolve(apply_overrides(cfg, ["data.name=imagefolder", "data.root=/x", "data.val_size=10"]), 2)


def test_resize_stages_shrink_training_batches_of_their_epochs_only():
    stages = "data.resize_stages=[{start_epoch: 0, image_size_px: 8}, {start_epoch: 2, image_size_px: 0}]"
    base = ["data.name=synthetic", "data.synthetic.train_samples=128", "data.image_size_px=12", "train.epochs=3"]
    cfg = get_recipe(DEFAULT_RECIPE)
    plain = build_data(apply_overrides(cfg, [*base, "data.resize_stages=[]"]), device=torch.device("cpu"))
    staged = build_data(apply_overrides(cfg, [*base, stages]), device=torch.device("cpu"))
    assert [staged.train_size_px(e) for e in range(3)] == [8, 8, 0]

    def first_batch(data, epoch):
        s = GlobalBatchSampler(data.num_train, 64, world_size=1, rank=0, seed=3)
        s.set_epoch(epoch)
        return next(iter(data.train_batches(s, seed=3)))

    for epoch in (0, 1):
        (small, labels), (full, same_labels) = first_batch(staged, epoch), first_batch(plain, epoch)
        assert small.shape == (64, 1, 8, 8) and torch.equal(labels, same_labels)
        # the same augmented, normalized batch, resized (bilinear, antialiased)
        ref = torch.nn.functional.interpolate(full, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
        assert torch.allclose(small, ref, atol=1e-6)
    assert torch.equal(first_batch(staged, 2)[0], first_batch(plain, 2)[0])  # own size from epoch 2
    test_images = next(staged.eval_batches(world_size=1, rank=0, batch_size=16))[0]
    assert test_images.shape[-2:] == (12, 12)  # evaluation at the data's own size


def test_resize_stages_are_checked_before_launch():
    from largebatch.config import ConfigError, validate

    cfg = get_recipe(DEFAULT_RECIPE)
    bad = {
        "data.resize_stages=[{start_epoch: 2, image_size_px: 20}, {start_epoch: 1, image_size_px: 0}]": (
            r"data.resize_stages\[1\].start_epoch=1 is invalid: an epoch after the previous stage's"
        ),
        "data.resize_stages=[{start_epoch: 0, image_size_px: -4}]": r"data.resize_stages\[0\].image_size_px=-4",
        "data.resize_stages=[{start_epoch: 99, image_size_px: 20}]": r"before train.epochs",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            validate(apply_overrides(cfg, [override]))
    with pytest.raises(ConfigError, match="data.resize_stages=.* empty for imagefolder"):
        validate(
            apply_overrides(
                get_recipe("goyal2017_resnet50_imagenet_8k"),
                ["data.root=/tmp", "data.resize_stages=[{start_epoch: 0, image_size_px: 128}]"],
            )
        )


def test_eval_flip_averages_the_logits_of_the_image_and_its_mirror():
    from largebatch.dist import DistEnv
    from largebatch.train.evaluation import evaluate

    cfg = apply_overrides(
        get_recipe(DEFAULT_RECIPE),
        ["data.name=synthetic", "data.synthetic.test_samples=40", "data.image_size_px=8", "data.synthetic.classes=10"],
    )
    data = build_data(cfg, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8, 10))  # not mirror-symmetric
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend=None)
    images, labels = next(data.eval_batches(world_size=1, rank=0, batch_size=40))
    with torch.no_grad():
        logits = (model(images) + model(images.flip(3))) / 2
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    expected_top1 = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    out = evaluate(model, data, env, channels_last=False, batch_size=40, flip=True)
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-5) and out["top1"] == pytest.approx(expected_top1)
    plain = evaluate(model, data, env, channels_last=False, batch_size=40)
    assert plain["loss"] != pytest.approx(out["loss"], rel=1e-5)
