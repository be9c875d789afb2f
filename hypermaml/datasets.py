"""Reading the datasets into FewShotSplits: Omniglot, miniImageNet and CUB.

Omniglot comes from its two zips or their folders (fetched by `download` when asked to), with the
Vinyals split and rotations as new classes; miniImageNet and CUB from image folders. A split is
decoded and resized once, then cached on disk as a `.pt` file, which every later training process
reads instead of the images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DATASETS, DataError
from .download import OMNIGLOT_DRAWINGS, OMNIGLOT_SETS, fetch_omniglot, omniglot_source
from .episodes import FewShotSplit

IMAGE_SIZE = {"omniglot": 28, "miniimagenet": 84, "cub": 84}
CHANNELS = {"omniglot": 1, "miniimagenet": 3, "cub": 3}
SPLITS = ("train", "val", "test")

# Bump when the layout or preprocessing of a cache file changes, so stale caches rebuild.
CACHE_FORMAT_VERSION = 1

# Without a data root, Omniglot lives in this folder of the cache folder.
OMNIGLOT_CACHE_FOLDER = "omniglot"
OMNIGLOT_CHARACTERS = 1623
OMNIGLOT_SPLITS_DIR = Path(__file__).parent / "splits" / "omniglot"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_split(
    dataset: str,
    split: str,
    data_root: str | Path | None,
    cache_dir: str | Path | None = None,
    download: bool = False,
) -> FewShotSplit:
    """Load one split of a dataset as a CPU FewShotSplit, building the disk cache if needed.

    Omniglot without a data root ("" or None) is the copy in `<cache_dir>/omniglot`, fetched when it
    is absent; with a data root, `download` fetches the missing zips into it (see `fetch_omniglot`).
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    if not data_root:
        if dataset != "omniglot":
            raise DataError(
                f"no data root: only Omniglot is fetched automatically; point --data-root at the {dataset} data folder"
            )
        data_root, download = cache_dir / OMNIGLOT_CACHE_FOLDER, True
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir() and not (download and dataset == "omniglot"):
        raise DataError(f"data root {data_root} does not exist; point --data-root at the {dataset} data folder")
    if dataset == "omniglot":
        return _load_omniglot_split(split, data_root, cache_dir, download)
    return _load_image_folder_split(dataset, split, data_root, cache_dir)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HYPERMAML_CACHE") or Path.home() / ".cache" / "hypermaml")


# ---------------------------------------------------------------- Omniglot


def _load_omniglot_split(split: str, data_root: Path, cache_dir: Path, download: bool) -> FewShotSplit:
    characters, names = _omniglot_characters(data_root, cache_dir, download)
    character_index = {name: i for i, name in enumerate(names)}

    split_file = OMNIGLOT_SPLITS_DIR / f"{split}.txt"
    lines = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    indices, quarter_turns = [], []
    for line in lines:
        character, _, rotation = line.rpartition("/")
        if character not in character_index or rotation not in ("rot000", "rot090", "rot180", "rot270"):
            raise DataError(
                f"{split_file} line {line!r} is not <known character>/rotDDD; check the Omniglot data in {data_root}"
            )
        indices.append(character_index[character])
        quarter_turns.append(int(rotation[3:]) // 90)

    images = characters[torch.tensor(indices)]  # [n_classes, 20, 28, 28]
    quarter_turns = torch.tensor(quarter_turns)
    for k in (1, 2, 3):
        chosen = quarter_turns == k
        # torch.rot90 over (H, W) with k > 0 turns counter-clockwise, like PIL's
        # Image.rotate(degrees) used by CloserLookFewShot. Rotating after the resize equals
        # rotating before it: the image is square and the resize kernel is symmetric.
        images[chosen] = torch.rot90(images[chosen], k=k, dims=(-2, -1))

    n_classes = len(lines)
    return FewShotSplit(
        images=images.reshape(n_classes * OMNIGLOT_DRAWINGS, 1, *images.shape[-2:]).contiguous(),
        class_offsets=torch.arange(n_classes, dtype=torch.int64) * OMNIGLOT_DRAWINGS,
        class_counts=torch.full((n_classes,), OMNIGLOT_DRAWINGS, dtype=torch.int64),
        class_names=tuple(lines),
        name=f"omniglot/{split}",
    )


def _omniglot_characters(data_root: Path, cache_dir: Path, download: bool) -> tuple[torch.Tensor, list[str]]:
    """All 1623 characters as uint8 [1623, 20, 28, 28] (strokes 255) and their sorted names."""
    cache_file = cache_dir / f"omniglot_{IMAGE_SIZE['omniglot']}.pt"
    cached = _read_cache(cache_file)
    if cached is not None:
        return cached["images"], cached["names"]
    characters, names = _decode_omniglot(_omniglot_sources(data_root, download), data_root)
    _write_cache({"images": characters, "names": names}, cache_file)
    return characters, names


def _omniglot_sources(data_root: Path, download: bool) -> dict[str, Path]:
    """The zip or folder of each Omniglot image set, downloading missing zips if asked to."""
    sources = _find_omniglot_sources(data_root)
    missing = [name for name in OMNIGLOT_SETS if name not in sources]
    if missing and download:
        fetch_omniglot(data_root, missing, *omniglot_source())
        sources = _find_omniglot_sources(data_root)
        missing = [name for name in OMNIGLOT_SETS if name not in sources]
    if missing:
        wanted = " and ".join(f"{name}.zip" for name in missing)
        raise DataError(
            f"Omniglot not found in {data_root}: missing {wanted} (or the extracted folders); pass --download to fetch them"
        )
    return sources


def _decode_omniglot(sources: dict[str, Path], data_root: Path) -> tuple[torch.Tensor, list[str]]:
    pngs_by_character: dict[str, list[tuple[str, bytes]]] = {}
    for source in sources.values():
        for character, file_name, png in _read_omniglot_pngs(source):
            pngs_by_character.setdefault(character, []).append((file_name, png))
    names = sorted(pngs_by_character)
    if len(names) != OMNIGLOT_CHARACTERS or any(len(pngs_by_character[n]) != OMNIGLOT_DRAWINGS for n in names):
        raise DataError(
            f"Omniglot in {data_root} is incomplete: expected {OMNIGLOT_CHARACTERS} characters with "
            f"{OMNIGLOT_DRAWINGS} PNGs each, found {len(names)} characters; re-fetch it with --download into an empty folder"
        )

    from torchvision.transforms.v2.functional import resize  # see _decode_and_crop

    size = IMAGE_SIZE["omniglot"]
    characters = torch.empty(len(names), OMNIGLOT_DRAWINGS, size, size, dtype=torch.uint8)
    for i, name in enumerate(names):
        drawings = np.stack([_decode_gray(png) for _, png in sorted(pngs_by_character[name])])
        # The PNGs are black strokes on white; we want bright strokes on black. Inverting in
        # numpy: a small torch elementwise op can cost ~50x more in thread-pool overhead.
        strokes_bright = torch.from_numpy(255 - drawings).unsqueeze(1)
        characters[i] = resize(strokes_bright, [size, size], antialias=True).squeeze(1)
    return characters, names


def _find_omniglot_sources(data_root: Path) -> dict[str, Path]:
    """For each image set, the first zip or extracted folder found under the accepted layouts."""
    sources = {}
    for base in (data_root, data_root / "omniglot", data_root / "omniglot-py"):
        for name in OMNIGLOT_SETS:
            if name in sources:
                continue
            if (base / name).is_dir():
                sources[name] = base / name
            elif (base / f"{name}.zip").is_file():
                sources[name] = base / f"{name}.zip"
    return sources


def _read_omniglot_pngs(source: Path) -> Iterator[tuple[str, str, bytes]]:
    """Yields ("Alphabet/characterNN", file name, PNG bytes) from a zip or extracted folder."""
    if source.is_dir():
        for path in source.rglob("*.png"):
            yield f"{path.parent.parent.name}/{path.parent.name}", path.name, path.read_bytes()
        return
    try:
        with zipfile.ZipFile(source) as archive:
            for entry in archive.namelist():
                parts = entry.split("/")
                if len(parts) >= 3 and parts[-1].endswith(".png"):
                    yield f"{parts[-3]}/{parts[-2]}", parts[-1], archive.read(entry)
    except zipfile.BadZipFile as error:
        raise DataError(f"{source} is not a readable zip ({error}); delete it and pass --download") from error


# ---------------------------------------------------------------- image folders (miniImageNet, CUB)


def _load_image_folder_split(dataset: str, split: str, data_root: Path, cache_dir: Path) -> FewShotSplit:
    if dataset == "miniimagenet":
        class_files = _miniimagenet_class_files(split, data_root)
    else:
        class_files = _cub_class_files(split, data_root)

    # The key changes with the data root and with the exact file list, so a cache built from
    # other data is never reused.
    listing = "\n".join(f"{name}\t{path}" for name, paths in class_files for path in paths)
    key = hashlib.sha256(f"{data_root.resolve()}\n{listing}".encode()).hexdigest()
    size = IMAGE_SIZE[dataset]
    cache_file = cache_dir / f"{dataset}_{split}_{size}.pt"
    cached = _read_cache(cache_file)
    if cached is not None and cached.get("key") == key:
        images = cached["images"]
    else:
        paths = [path for _, class_paths in class_files for path in class_paths]
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} listed images are missing, e.g. {missing[0]}; restore them or fix the split list"
            )
        images = torch.stack([_decode_and_crop(path, size) for path in paths])
        _write_cache({"images": images, "key": key}, cache_file)

    class_counts = torch.tensor([len(paths) for _, paths in class_files], dtype=torch.int64)
    return FewShotSplit(
        images=images,
        class_offsets=torch.cumsum(class_counts, 0) - class_counts,
        class_counts=class_counts,
        class_names=tuple(name for name, _ in class_files),
        name=f"{dataset}/{split}",
    )


def _miniimagenet_class_files(split: str, data_root: Path) -> list[tuple[str, list[Path]]]:
    """Ravi-Larochelle layout: <root>/<split>.csv rows `filename,label`, classes in first-seen order."""
    csv_file = data_root / f"{split}.csv"
    if not csv_file.is_file():
        raise DataError(
            f"{csv_file} not found; miniImageNet needs the Ravi-Larochelle train/val/test.csv in --data-root (no automatic download)"
        )
    files_by_label: dict[str, list[str]] = {}
    with csv_file.open(newline="") as handle:
        for row in csv.DictReader(handle):
            files_by_label.setdefault(row["label"], []).append(row["filename"])
    if not files_by_label:
        raise DataError(f"{csv_file} lists no images; expected a header `filename,label` and one row per image")

    first_label = next(iter(files_by_label))
    first_file = files_by_label[first_label][0]
    if (data_root / "images" / first_file).is_file():
        return [(label, [data_root / "images" / f for f in files]) for label, files in files_by_label.items()]
    if (data_root / first_label / first_file).is_file():
        return [(label, [data_root / label / f for f in files]) for label, files in files_by_label.items()]
    raise DataError(
        f"image {first_file} from {csv_file} is neither in {data_root / 'images'} nor in {data_root / first_label}; put the images there"
    )


def _cub_class_files(split: str, data_root: Path) -> list[tuple[str, list[Path]]]:
    """Class folders under <root>/images/ or <root>/; split by <root>/<split>.txt or the 100/50/50 rule."""
    image_root = data_root / "images" if (data_root / "images").is_dir() else data_root
    all_classes = sorted(path.name for path in image_root.iterdir() if path.is_dir())
    split_file = data_root / f"{split}.txt"
    if split_file.is_file():
        classes = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        unknown = [name for name in classes if name not in all_classes]
        if unknown:
            raise DataError(
                f"{split_file} names class folder {unknown[0]!r} missing from {image_root}; fix the list or the folders"
            )
    else:
        # The usual CUB few-shot split (CloserLookFewShot): 100 train / 50 val / 50 test.
        keep = {"train": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1, "test": lambda i: i % 4 == 3}[split]
        classes = [name for i, name in enumerate(all_classes) if keep(i)]
    class_files = []
    for name in classes:
        files = sorted(p for p in (image_root / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(
                f"class folder {image_root / name} has no .jpg/.jpeg/.png images; add them or remove the folder"
            )
        class_files.append((name, files))
    if not class_files:
        raise DataError(f"no class folders for the {split} split in {image_root}; point --data-root at the CUB folder")
    return class_files


# Decoding uses Pillow (a torchvision dependency): torchvision.io's decoders are deprecated
# since torchvision 0.29. It runs once per image, only while building a cache.


def _decode_gray(png: bytes) -> np.ndarray:
    """uint8 [H, W] from encoded image bytes (1-bit PNGs become 0/255)."""
    with Image.open(io.BytesIO(png)) as image:
        return np.array(image.convert("L"))


def _decode_and_crop(path: Path, size: int) -> torch.Tensor:
    """uint8 [3, size, size]: shorter side resized to `size`, then the centre crop."""
    # Imported here, not at the top: torchvision pulls in torch._dynamo (~2 s on a small CPU), and
    # only cache building needs it; every training process (each Ray trial worker) reads the cache.
    from torchvision.transforms.v2.functional import center_crop, resize

    with Image.open(path) as image:
        rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    return center_crop(resize(rgb, [size], antialias=True), [size, size])


# ---------------------------------------------------------------- cache files


def _read_cache(path: Path) -> dict | None:
    """The cached dict, or None if absent, unreadable or of another format version."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None  # a damaged cache is rebuilt, not fatal
    if not isinstance(cached, dict) or cached.get("format_version") != CACHE_FORMAT_VERSION:
        return None
    return cached


def _write_cache(contents: dict, path: Path) -> None:
    """Write atomically: a crash mid-write never leaves a truncated cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save({**contents, "format_version": CACHE_FORMAT_VERSION}, temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
