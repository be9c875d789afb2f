import csv
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hypermaml.config import DATASETS, DataError
from hypermaml.datasets import CHANNELS, IMAGE_SIZE, load_split
from hypermaml.episodes import Episodes, EpisodeSampler, FewShotSplit, fixed_episodes

SPLITS_DIR = Path(__file__).resolve().parents[1] / "hypermaml" / "splits" / "omniglot"

# The real data is part of the test set-up: without it the run stops (conftest), never skips.


# ---------------------------------------------------------------- Omniglot (real data)


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory, omniglot_root):
    """A cache dir holding the Omniglot cache, built once for the module; yields its build time."""
    cache_dir = tmp_path_factory.mktemp("omniglot_cache")
    start = time.perf_counter()
    train = load_split("omniglot", "train", omniglot_root, cache_dir=cache_dir)
    return cache_dir, train, time.perf_counter() - start


@pytest.mark.parametrize("split, n_classes", [("train", 4112), ("val", 688), ("test", 1692)])
def test_omniglot_split_sizes_and_layout(omniglot_root, omniglot_cache, split, n_classes):
    cache_dir, _, _ = omniglot_cache
    data = load_split("omniglot", split, omniglot_root, cache_dir=cache_dir)
    assert data.n_classes == n_classes
    assert data.images.shape == (n_classes * 20, 1, 28, 28)
    assert data.images.dtype == torch.uint8
    assert data.images.device.type == "cpu"
    assert data.min_count == 20
    assert torch.equal(data.class_counts, torch.full((n_classes,), 20))
    assert torch.equal(data.class_offsets, torch.arange(n_classes) * 20)
    assert data.class_names == tuple((SPLITS_DIR / f"{split}.txt").read_text().split())


def test_omniglot_pixels_are_bright_strokes_on_black(omniglot_cache):
    _, train, _ = omniglot_cache
    assert int(train.images.min()) == 0
    assert int(train.images.max()) == 255
    # Strokes cover a small part of each drawing, so the (inverted) background dominates.
    assert (train.images == 0).float().mean() > 0.7
    # Every drawing has some ink (a few thin drawings peak at 127 after the 105 -> 28 resize).
    assert bool((train.images.flatten(1).amax(dim=1) >= 100).all())


def test_omniglot_rotated_classes_are_rot90_of_the_upright_class(omniglot_cache):
    _, train, _ = omniglot_cache
    index = {name: i for i, name in enumerate(train.class_names)}
    upright = train.images[index["Angelic/character01/rot000"] * 20 :][:20]
    for degrees in (90, 180, 270):
        rotated = train.images[index[f"Angelic/character01/rot{degrees:03d}"] * 20 :][:20]
        assert torch.equal(rotated, torch.rot90(upright, k=degrees // 90, dims=(-2, -1)))
    assert not torch.equal(upright, torch.rot90(upright, k=1, dims=(-2, -1)))


def test_omniglot_second_load_is_fast_equal_and_needs_no_zips(omniglot_root, omniglot_cache, tmp_path):
    cache_dir, train, build_seconds = omniglot_cache
    start = time.perf_counter()
    again = load_split("omniglot", "train", omniglot_root, cache_dir=cache_dir)
    warm_seconds = time.perf_counter() - start
    print(f"omniglot train: cold {build_seconds:.2f} s, warm {warm_seconds:.3f} s")
    assert warm_seconds < 2.0
    assert torch.equal(again.images, train.images)
    assert again.class_names == train.class_names

    # With the cache present the zips are not read: an empty (but existing) root works.
    empty_root = tmp_path / "empty"
    empty_root.mkdir()
    from_cache_only = load_split("omniglot", "train", empty_root, cache_dir=cache_dir)
    assert torch.equal(from_cache_only.images, train.images)


def test_omniglot_extracted_folders_in_subfolder_match_zips(omniglot_root, omniglot_cache, tmp_path):
    _, train, _ = omniglot_cache
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(omniglot_root / f"{name}.zip") as archive:
            archive.extractall(tmp_path / "root" / "omniglot-py")
    test_split = load_split("omniglot", "test", tmp_path / "root", cache_dir=tmp_path / "cache")
    assert test_split.n_classes == 1692
    train_from_folders = load_split("omniglot", "train", tmp_path / "root", cache_dir=tmp_path / "cache")
    assert torch.equal(train_from_folders.images, train.images)


# ---------------------------------------------------------------- DataError


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_data_root_is_a_data_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as error:
        load_split("omniglot", "train", missing, cache_dir=tmp_path / "cache")
    assert_one_line(error, str(missing))


def test_missing_omniglot_zips_name_the_files_and_download(tmp_path):
    with pytest.raises(DataError) as error:
        load_split("omniglot", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert_one_line(error, str(tmp_path), "images_background.zip", "images_evaluation.zip", "--download")


def test_unknown_dataset_and_split_are_data_errors(tmp_path):
    with pytest.raises(DataError) as error:
        load_split("mnist", "train", tmp_path)
    assert_one_line(error, "mnist", "omniglot")
    with pytest.raises(DataError) as error:
        load_split("omniglot", "trainval", tmp_path)
    assert_one_line(error, "trainval")
    assert issubclass(DataError, ValueError)


def test_dataset_constants_agree():
    assert set(IMAGE_SIZE) == set(CHANNELS) == set(DATASETS)


# ---------------------------------------------------------------- EpisodeSampler (synthetic split)

UNEVEN_COUNTS = [5, 9, 6, 7, 5, 8, 12]


def make_labelled_split(counts: list[int]) -> FewShotSplit:
    """Image j of class c has pixels (c, j, 255), so an episode reveals what was drawn."""
    class_ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    index_in_class = torch.cat([torch.arange(n) for n in counts])
    pixels = torch.stack([class_ids, index_in_class, torch.full_like(class_ids, 255)], dim=1)
    counts_tensor = torch.tensor(counts, dtype=torch.int64)
    return FewShotSplit(
        images=pixels.to(torch.uint8).reshape(-1, 1, 1, 3),
        class_offsets=torch.cumsum(counts_tensor, 0) - counts_tensor,
        class_counts=counts_tensor,
        class_names=tuple(f"class{c}" for c in range(len(counts))),
        name="synthetic",
    )


def decode_pixels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class id, index within class) of each image in a float episode tensor [..., 1, 1, 3]."""
    values = torch.round(x * 255).long()
    return values[..., 0, 0, 0], values[..., 0, 0, 1]


def test_split_properties_and_to():
    split = make_labelled_split(UNEVEN_COUNTS)
    assert split.n_classes == 7
    assert split.min_count == 5
    moved = split.to("cpu")
    assert isinstance(moved, FewShotSplit)
    assert torch.equal(moved.images, split.images)
    assert moved.class_names == split.class_names


def test_episode_shapes_dtypes_and_class_major_labels():
    sampler = EpisodeSampler(make_labelled_split(UNEVEN_COUNTS), way=3, shot=2, query=3)
    episodes = sampler.sample(tasks=4, generator=torch.Generator().manual_seed(0))
    assert isinstance(episodes, Episodes)
    assert episodes.tasks == 4
    assert episodes.x_support.shape == (4, 6, 1, 1, 3)
    assert episodes.x_query.shape == (4, 9, 1, 1, 3)
    assert episodes.x_support.dtype == episodes.x_query.dtype == torch.float32
    assert float(episodes.x_support.max()) == 1.0 and float(episodes.x_support.min()) >= 0.0
    assert episodes.y_support.dtype == episodes.y_query.dtype == torch.int64
    assert episodes.y_support.tolist() == [[0, 0, 1, 1, 2, 2]] * 4
    assert episodes.y_query.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 4


def test_episodes_draw_distinct_classes_and_distinct_images_of_each_class():
    split = make_labelled_split(UNEVEN_COUNTS)
    way, shot, query, tasks = 4, 2, 3, 300
    episodes = EpisodeSampler(split, way, shot, query).sample(tasks, torch.Generator().manual_seed(1))
    support_class, support_index = decode_pixels(episodes.x_support)
    query_class, query_index = decode_pixels(episodes.x_query)
    # Per task and label: [T, N, K+Q] class ids and image indices, support first.
    drawn_class = torch.cat([support_class.reshape(tasks, way, shot), query_class.reshape(tasks, way, query)], dim=2)
    drawn_index = torch.cat([support_index.reshape(tasks, way, shot), query_index.reshape(tasks, way, query)], dim=2)

    # All images under one label come from one class ...
    assert bool((drawn_class == drawn_class[:, :, :1]).all())
    task_classes = drawn_class[:, :, 0]
    # ... the `way` classes of a task are distinct ...
    assert bool((task_classes.sort(dim=1).values.diff(dim=1) > 0).all())
    # ... and the images of a class are distinct and exist in that class.
    assert bool((drawn_index.sort(dim=2).values.diff(dim=2) > 0).all())
    counts = torch.tensor(UNEVEN_COUNTS)[drawn_class]
    assert bool((drawn_index < counts).all())

    # Every class and every image of the largest class gets drawn at some point.
    assert set(task_classes.flatten().tolist()) == set(range(len(UNEVEN_COUNTS)))
    largest = len(UNEVEN_COUNTS) - 1
    assert set(drawn_index[drawn_class == largest].tolist()) == set(range(UNEVEN_COUNTS[largest]))


def test_same_seed_same_episodes_different_seed_different():
    sampler = EpisodeSampler(make_labelled_split(UNEVEN_COUNTS), way=3, shot=1, query=2)
    first = sampler.sample(8, torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG must not matter
    second = sampler.sample(8, torch.Generator().manual_seed(7))
    other = sampler.sample(8, torch.Generator().manual_seed(8))
    assert torch.equal(first.x_support, second.x_support)
    assert torch.equal(first.x_query, second.x_query)
    assert not torch.equal(first.x_query, other.x_query)


def test_fixed_episodes_are_reproducible_and_chunked():
    sampler = EpisodeSampler(make_labelled_split(UNEVEN_COUNTS), way=2, shot=1, query=1)
    chunks = list(fixed_episodes(sampler, episodes=10, seed=3, chunk=4))
    assert [chunk.tasks for chunk in chunks] == [4, 4, 2]
    torch.manual_seed(99)
    again = list(fixed_episodes(sampler, episodes=10, seed=3, chunk=4))
    for a, b in zip(chunks, again, strict=True):
        assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)
    other_seed = torch.cat([c.x_query for c in fixed_episodes(sampler, episodes=10, seed=4, chunk=4)])
    assert not torch.equal(torch.cat([c.x_query for c in chunks]), other_seed)
    assert list(fixed_episodes(sampler, episodes=0, seed=3, chunk=4)) == []


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
# (class, image in class) of the first fixed episode's support and query images for seed 5 (the
# draw of the CPU generator, the same before evaluation drew on the CPU for every device).
PINNED_SUPPORT = ([4, 2, 0], [1, 5, 4])
PINNED_QUERY = ([4, 4, 2, 2, 0, 0], [0, 3, 4, 3, 2, 3])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_fixed_episodes_are_the_same_on_every_device(device):
    """Evaluation episodes are drawn with a CPU generator whatever the split's device, so a GPU run
    validates and tests on exactly the episodes of a CPU run (and of the pinned draw below)."""
    split = make_labelled_split(UNEVEN_COUNTS)
    on_cpu = list(fixed_episodes(EpisodeSampler(split, way=3, shot=1, query=2), episodes=10, seed=5, chunk=4))
    on_device = list(
        fixed_episodes(EpisodeSampler(split.to(device), way=3, shot=1, query=2), episodes=10, seed=5, chunk=4)
    )
    for a, b in zip(on_cpu, on_device, strict=True):
        assert b.x_query.device.type == device
        for name in ("x_support", "y_support", "x_query", "y_query"):
            assert torch.equal(getattr(a, name), getattr(b, name).cpu()), name
    # The draw itself is pinned: (class, image in class) of the first task's support and query images.
    support_class, support_index = decode_pixels(on_device[0].x_support[0].cpu())
    query_class, query_index = decode_pixels(on_device[0].x_query[0].cpu())
    assert (support_class.tolist(), support_index.tolist()) == PINNED_SUPPORT
    assert (query_class.tolist(), query_index.tolist()) == PINNED_QUERY


@pytest.mark.parametrize(
    "way, shot, query, message",
    [
        (8, 1, 1, "way 8 exceeds the 7 classes of the synthetic split"),
        (2, 3, 3, "shot+query = 6 exceeds the 5 images per class"),
        (0, 1, 1, "way"),
        (2, 0, 1, "shot"),
        (2, 1, 0, "query"),
    ],
)
def test_bad_sampler_arguments_raise(way, shot, query, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EpisodeSampler(make_labelled_split(UNEVEN_COUNTS), way, shot, query)


# ---------------------------------------------------------------- image-folder datasets


def write_image(path: Path, height: int, width: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def make_miniimagenet(root: Path, images_in_class_folders: bool) -> dict[str, int]:
    """Ravi-Larochelle csv layout with 3/2/2 classes of 3-4 images; returns classes per split."""
    classes = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
    seed = 0
    for split, labels in classes.items():
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for label in labels:
                for i in range(3 + seed % 2):
                    filename = f"{label}{i:04d}.jpg"
                    folder = root / label if images_in_class_folders else root / "images"
                    write_image(folder / filename, 100 + 10 * i, 120, seed)
                    writer.writerow([filename, label])
                seed += 1
    return {split: len(labels) for split, labels in classes.items()}


@pytest.mark.parametrize("images_in_class_folders", [False, True])
def test_miniimagenet_csv_layouts(tmp_path, images_in_class_folders):
    root = tmp_path / "mini"
    root.mkdir()
    expected = make_miniimagenet(root, images_in_class_folders)
    for split, n_classes in expected.items():
        data = load_split("miniimagenet", split, root, cache_dir=tmp_path / "cache")
        assert data.n_classes == n_classes
        assert data.images.dtype == torch.uint8
        assert data.images.shape[1:] == (3, 84, 84)
        assert data.images.shape[0] == int(data.class_counts.sum())
        assert torch.equal(data.class_offsets, torch.cumsum(data.class_counts, 0) - data.class_counts)
    train = load_split("miniimagenet", "train", root, cache_dir=tmp_path / "cache")
    assert train.class_names == ("n01", "n02", "n03")  # first appearance in the csv
    assert train.class_counts.tolist() == [3, 4, 3]


def test_miniimagenet_missing_csv_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as error:
        load_split("miniimagenet", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert_one_line(error, "train.csv")


def make_cub(root: Path, n_classes: int) -> list[str]:
    names = [f"{i + 1:03d}.Bird_{i}" for i in range(n_classes)]
    for i, name in enumerate(names):
        for j in range(2 + i % 3):
            write_image(root / "images" / name / f"img_{j}.jpg", 90 + 7 * j, 110, seed=10 * i + j)
    return names


def test_cub_default_100_50_50_rule_and_cache_reuse(tmp_path):
    root = tmp_path / "CUB_200_2011"
    names = make_cub(root, n_classes=8)
    cache_dir = tmp_path / "cache"
    splits = {split: load_split("cub", split, root, cache_dir=cache_dir) for split in ("train", "val", "test")}
    assert splits["train"].class_names == tuple(names[i] for i in (0, 2, 4, 6))
    assert splits["val"].class_names == tuple(names[i] for i in (1, 5))
    assert splits["test"].class_names == tuple(names[i] for i in (3, 7))
    assert splits["train"].class_counts.tolist() == [2, 4, 3, 2]
    assert splits["val"].images.shape == (3 + 4, 3, 84, 84)

    cache_file = cache_dir / "cub_train_84.pt"
    written = cache_file.stat().st_mtime_ns
    again = load_split("cub", "train", root, cache_dir=cache_dir)
    assert cache_file.stat().st_mtime_ns == written  # reused, not rebuilt
    assert torch.equal(again.images, splits["train"].images)

    # Another root with the same cache dir must not get the stale cache.
    other_root = tmp_path / "other_cub"
    make_cub(other_root, n_classes=4)
    shutil.rmtree(other_root / "images" / names[0])
    write_image(other_root / "images" / names[0] / "img_0.png", 84, 84, seed=1234)
    other = load_split("cub", "train", other_root, cache_dir=cache_dir)
    assert other.class_counts.tolist() == [1, 4]
    assert not torch.equal(other.images[:1], splits["train"].images[:1])


def test_cub_split_files_and_flat_layout(tmp_path):
    for i, name in enumerate(["b_sparrow", "a_finch", "c_wren"]):
        for j in range(2):
            write_image(tmp_path / "root" / name / f"{j}.png", 84, 84, seed=i * 2 + j)
    (tmp_path / "root" / "train.txt").write_text("c_wren\na_finch\n")
    train = load_split("cub", "train", tmp_path / "root", cache_dir=tmp_path / "cache")
    assert train.class_names == ("c_wren", "a_finch")
    assert train.images.shape == (4, 3, 84, 84)


def test_images_are_resized_on_the_short_side_and_centre_cropped(tmp_path):
    # Red images with green 8 px bands on the long sides: after resizing the short side to
    # 84 the bands are about 7 px wide and the centre crop removes 8 px from each long side.
    wide = np.zeros((100, 120, 3), dtype=np.uint8)
    wide[..., 0] = 255
    wide[:, :8] = wide[:, -8:] = (0, 255, 0)
    tall = wide.transpose(1, 0, 2).copy()
    for name, array in (("wide", wide), ("tall", tall)):
        (tmp_path / "root" / name).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "root" / name / "0.png")
    (tmp_path / "root" / "train.txt").write_text("wide\ntall\n")
    data = load_split("cub", "train", tmp_path / "root", cache_dir=tmp_path / "cache")
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).reshape(1, 3, 1, 1)
    assert data.images.shape == (2, 3, 84, 84)
    assert torch.equal(data.images, red.expand(2, 3, 84, 84))
