"""torch Datasets over the BSON reader: one row per image, or one row per product.

Decode happens in DataLoader workers (OpenCV, one thread each); batches carry uint8 pixels and
are normalised on the device, so a GPU gets 4x fewer bytes than float32. A batch crosses from its
worker as one tensor: the tiles collated HWC straight into it (a channels_last view), or, when the
device decodes, every JPEG end to end with their offsets (one shared-memory segment per batch, not
one per image). Every random choice of
a sample (flip) comes from a seed drawn by the sampler from (seed, epoch), so a resumed run sees
exactly the batches an uninterrupted one would, whatever the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .bson_reader import BsonReader
from .errors import CorruptImageError
from .images import PNG_START, decode_jpeg, image_problem, resize


@dataclass(frozen=True)
class ImageTable:
    """Which image of which product: one entry per image, a product's images consecutive."""

    product_row: np.ndarray  # row in the BSON index
    rank: np.ndarray  # 0-based position of the image within its product
    product_pos: np.ndarray  # position of the product within the selected products

    def __len__(self) -> int:
        return len(self.product_row)


def image_table(n_imgs: np.ndarray, product_rows: np.ndarray) -> ImageTable:
    """Expand selected products (index rows) into their images, in product order."""
    counts = np.asarray(n_imgs)[product_rows].astype(np.int64)
    product_pos = np.repeat(np.arange(len(product_rows)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.arange(len(product_pos)) - starts
    return ImageTable(np.asarray(product_rows)[product_pos], rank, product_pos)


def load_tile(jpeg: bytes, size: int, flip: bool, where: str) -> tuple[np.ndarray, bool]:
    """Decode, resize, flip -> (HxWx3 uint8, ok). A corrupt image becomes black with ok=False."""
    try:
        rgb = resize(decode_jpeg(jpeg, where), size)
    except CorruptImageError:
        return np.zeros((size, size, 3), np.uint8), False
    return (cv2.flip(rgb, 1) if flip else rgb), True  # contiguous: a strided [:, ::-1] view copies 15x slower into the batch


def to_chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def stack_hwc(tiles: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 H x W x 3 tiles (views: flips, crops) -> uint8 N x 3 x H x W in one copy: the N x H x W x 3
    tensor seen as NCHW, i.e. channels_last, the layout the GPU's convolutions want."""
    out = torch.empty((len(tiles), *tiles[0].shape), dtype=torch.uint8)
    np.stack(tiles, out=out.numpy())
    return out.permute(0, 3, 1, 2)


def pack_jpegs(blobs: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every JPEG of a batch end to end in one uint8 tensor, and the N + 1 offsets that cut it."""
    offsets = np.zeros(len(blobs) + 1, np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    packed = torch.empty(int(offsets[-1]), dtype=torch.uint8)
    if len(packed):
        np.concatenate([np.frombuffer(b, np.uint8) for b in blobs], out=packed.numpy())
    return packed, torch.from_numpy(offsets)


def unpack_jpegs(packed: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    """The batch's JPEGs as views of the packed tensor (no copy)."""
    cuts = offsets.tolist()
    return [packed[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


class ImageDataset(Dataset):
    """Item = (uint8 HxWx3 array, label, product position, ok). Indexed by int or (int, sample seed).

    With `device_decode`, the item carries the JPEG bytes and the flip decision instead
    ((bytes, label, position, flip)): decode, resize and flip then run batched on the training
    device (torchvision.io.decode_jpeg on CUDA), leaving the workers only the reads.
    """

    def __init__(self, reader: BsonReader, table: ImageTable, labels: np.ndarray | None, size: int, hflip: bool = False,
                 device_decode: bool = False, crop: int = 0, random_crop: bool = False):
        self.reader, self.table, self.labels, self.size, self.hflip = reader, table, labels, size, hflip
        self.device_decode, self.crop, self.random_crop = device_decode, crop, random_crop

    def __len__(self) -> int:
        return len(self.table)

    def product_ids(self, pos: np.ndarray) -> np.ndarray:
        """The _ids of the products at positions `pos` (what a batch's "pos" holds), for reports."""
        first_image = np.searchsorted(self.table.product_pos, np.asarray(pos))  # a product's images are consecutive
        return np.asarray(self.reader.index.ids)[self.table.product_row[first_image]]

    def __getitem__(self, item: int | tuple[int, int]):
        i, sample_seed = item if isinstance(item, tuple) else (item, 0)
        row, rank = int(self.table.product_row[i]), int(self.table.rank[i])
        product = self.reader[row]
        flip = self.hflip and bool(np.random.default_rng(sample_seed).integers(2))
        label = -1 if self.labels is None else int(self.labels[self.table.product_pos[i]])
        if self.device_decode:
            return bytes(product.images[rank]), label, int(self.table.product_pos[i]), flip
        where = f"{self.reader.path} _id={product.product_id} image {rank}"
        rgb, ok = load_tile(product.images[rank], self.size, flip, where)
        if self.crop:
            rgb = crop_window(rgb, self.crop, np.random.default_rng([sample_seed, 1]) if self.random_crop else None)
        return rgb, label, int(self.table.product_pos[i]), ok


def crop_window(rgb: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """A size x size window: at a random offset (training), or the centre one (rng None: predicting)."""
    spare = rgb.shape[0] - size, rgb.shape[1] - size
    y, x = (int(rng.integers(0, s + 1)) for s in spare) if rng is not None else (spare[0] // 2, spare[1] // 2)
    return rgb[y : y + size, x : x + size]


class ProductDataset(Dataset):
    """Item = (uint8 KxCxHxW of all the product's images, label, product position, ok[K])."""

    def __init__(self, reader: BsonReader, product_rows: np.ndarray, labels: np.ndarray | None, size: int, hflip: bool = False):
        self.reader, self.rows, self.labels, self.size, self.hflip = reader, np.asarray(product_rows), labels, size, hflip

    def __len__(self) -> int:
        return len(self.rows)

    def product_ids(self, pos: np.ndarray) -> np.ndarray:
        return np.asarray(self.reader.index.ids)[self.rows[np.asarray(pos)]]

    def __getitem__(self, item: int | tuple[int, int]):
        i, sample_seed = item if isinstance(item, tuple) else (item, 0)
        product = self.reader[int(self.rows[i])]
        rng = np.random.default_rng(sample_seed)
        tiles, oks = [], []
        for rank, jpeg in enumerate(product.images):
            flip = self.hflip and bool(rng.integers(2))
            rgb, ok = load_tile(jpeg, self.size, flip, f"{self.reader.path} _id={product.product_id} image {rank}")
            tiles.append(to_chw(rgb))
            oks.append(ok)
        label = -1 if self.labels is None else int(self.labels[i])
        return torch.stack(tiles), label, i, torch.tensor(oks)


def collate_images(batch: list) -> dict[str, torch.Tensor]:
    """ImageDataset items -> one batch: uint8 pixels + ok, or (device_decode) the packed JPEGs + flips."""
    first, labels, pos, last = zip(*batch)
    out = {"label": torch.tensor(labels), "pos": torch.tensor(pos)}
    if isinstance(first[0], bytes):  # device_decode: JPEGs of different lengths + flip flags
        packed, offsets = pack_jpegs(first)
        return {**out, "jpeg": packed, "jpeg_offsets": offsets, "flip": torch.tensor(last)}
    return {**out, "pixels": stack_hwc(first), "ok": torch.tensor(last)}


def decode_on_device(jpegs: list[torch.Tensor], flips: torch.Tensor, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched JPEG decode on `device` (nvjpeg on CUDA), resize, flip -> (uint8 NxCxSxS, ok[N]).

    Every image first passes `image_problem` (as on the worker path: the two paths accept and
    refuse the same bytes); a PNG is decoded on the CPU and moved; a batch nvjpeg refuses is
    retried image by image, so one corrupt JPEG costs only itself (black, ok=False).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    kinds = [_kind(j) for j in jpegs]
    good = [j for j, k in zip(jpegs, kinds) if k == "jpeg"]
    try:
        decoded = iter(decode_jpeg(good, mode=ImageReadMode.RGB, device=device) if good else [])
    except RuntimeError:
        decoded = iter([_decode_one(j, device) for j in good])
    images = [next(decoded) if k == "jpeg" else _decode_png(j, device) if k == "png" else None for j, k in zip(jpegs, kinds)]
    ok = torch.tensor([img is not None for img in images], device=device)
    out = torch.zeros(len(jpegs), 3, size, size, dtype=torch.uint8, device=device)
    for i, img in enumerate(images):
        if img is None:
            continue
        if img.shape[-2:] != (size, size):
            img = torch.nn.functional.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            img = img.round().clamp(0, 255).to(torch.uint8)
        out[i] = torch.flip(img, dims=[2]) if bool(flips[i]) else img
    return out, ok


def _kind(data: torch.Tensor) -> str:
    """'jpeg', 'png' or 'bad' (common.images.image_problem decides, for both decode paths)."""
    raw = data.numpy().tobytes()
    if image_problem(raw):
        return "bad"
    return "png" if raw[:8] == PNG_START else "jpeg"


def _decode_png(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError:
        return None


def _decode_one(jpeg: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device) if len(jpeg) else None
    except RuntimeError:
        return None


def batch_pixels(raw: dict, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 pixels, ok) on the device, whichever path decoded the batch."""
    if "jpeg" in raw:
        return decode_on_device(unpack_jpegs(raw["jpeg"], raw["jpeg_offsets"]), raw["flip"], size, device)
    return raw["pixels"].to(device, non_blocking=True), raw["ok"].to(device)


def collate_products(batch: list, max_views: int = 4) -> dict[str, torch.Tensor]:
    """Pad each product to `max_views` images; `mask` marks real (and decodable) views."""
    stacks, labels, pos, oks = zip(*batch)
    _, c, h, w = stacks[0].shape
    pixels = torch.zeros(len(batch), max_views, c, h, w, dtype=torch.uint8)
    mask = torch.zeros(len(batch), max_views, dtype=torch.bool)
    for b, (s, ok) in enumerate(zip(stacks, oks)):
        k = min(len(s), max_views)
        pixels[b, :k], mask[b, :k] = s[:k], ok[:k]
    return {"pixels": pixels, "mask": mask, "label": torch.tensor(labels), "pos": torch.tensor(pos)}


class EpochSampler(Sampler):
    """Shuffled (index, sample seed) pairs from (seed, epoch), sharded over DDP ranks.

    `num_samples` > 0 draws a fixed-size epoch (the mini recipes' time budget).
    """

    def __init__(self, n: int, seed: int, num_samples: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.num_samples = min(num_samples, n) if num_samples > 0 else n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n)[: self.num_samples] if self.shuffle else np.arange(self.num_samples)
        seeds = rng.integers(0, 2**62, size=len(order))
        per_rank = len(order) // self.world  # equal shards: DDP steps stay in lock-step
        return order[self.rank :: self.world][:per_rank], seeds[self.rank :: self.world][:per_rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._pairs()
        return iter(zip(order.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.num_samples // self.world


def normalize_on_device(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW on the device -> normalised float32 (the uint8 transfer is 4x cheaper)."""
    m = torch.tensor(mean, device=pixels.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=pixels.device).view(1, -1, 1, 1) * 255
    x = (pixels.float() - m) / s  # keeps the pixels' layout (the workers' batches are channels_last views)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
