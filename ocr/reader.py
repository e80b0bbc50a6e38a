"""Reading images with tesseract: preprocessing steps, worker processes, a text cache per image MD5.

Default reading (bench/bench_ocr.py, 200 mini media products / 388 images, one core, 64 images
per tesseract call; keyword read rate, images/s): plain psm 3 0.715, 79; psm 11 (sparse text)
0.815, 71; + a white margin ("pad") 0.835, 74; + Otsu binarisation 0.840, 91. Grey instead of
Otsu: 0.830, 89. Upscaling x2 lost 2-4 points with psm 11 at half the speed (0.795, 36). So:
pad + otsu, psm 11. Batching (run_tesseract) is the big speed lever: one call per image reads
~5 images/s, 64 per call ~75 on the same covers.

Why a cache keyed by the image's MD5 (and the reading settings): the same cover is uploaded for
many products, and a rerun after an interruption must not pay again for what was read. The cache
is one sqlite3 file (work/ocr/cache.sqlite3): append-friendly, safe to interrupt (committed after
every chunk of images), and mergeable: caches filled on several machines (--shard) are joined by
`merge_caches` (INSERT OR IGNORE).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from common.errors import CorruptImageError, DataError, log
from common.images import decode_jpeg
from common.processes import pool_context
from common.progress import bar

# ---------------------------------------------------------------------------------------------
# preprocessing: each step maps an RGB or grey uint8 array to another; a variant is a list of names


def _upscale2(img: np.ndarray) -> np.ndarray:
    """x2 cubic (tesseract likes ~30 px x-height). Measured on the mini covers: no gain with psm 11."""
    return cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)


def _grey(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _otsu(img: np.ndarray) -> np.ndarray:
    """Global Otsu binarisation (tesseract binarises internally too; measured, not assumed)."""
    return cv2.threshold(_grey(img), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]


def _pad(img: np.ndarray) -> np.ndarray:
    """A 16 px white margin: text flush with the picture edge is often dropped by layout analysis."""
    return cv2.copyMakeBorder(img, 16, 16, 16, 16, cv2.BORDER_CONSTANT, value=(255,) * (1 if img.ndim == 2 else 3))


PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"up2": _upscale2, "grey": _grey, "otsu": _otsu, "pad": _pad}


def preprocess(img: np.ndarray, steps: Iterable[str]) -> np.ndarray:
    for step in steps:
        img = PREPROCESS[step](img)
    return img


def check_steps(steps: Iterable[str]) -> None:
    unknown = set(steps) - set(PREPROCESS)
    if unknown:
        raise DataError(f"unknown OCR preprocessing steps {sorted(unknown)}; choose from {sorted(PREPROCESS)}")


# ---------------------------------------------------------------------------------------------
# images -> text


@dataclass(frozen=True)
class ReadSettings:
    """What changes tesseract's output; its `key` is part of the cache key."""

    steps: tuple[str, ...] = ()
    lang: str = "fra+eng"
    psm: int = 3  # tesseract page segmentation mode (3 = automatic, 11 = sparse text)

    @property
    def key(self) -> str:
        return f"{self.lang}|psm{self.psm}|{'+'.join(self.steps) or 'plain'}"


class TesseractFailed(RuntimeError):
    pass


PAGE_END = "<<cdiscount-ocr-page-end>>"


def run_tesseract(images: list[np.ndarray], settings: ReadSettings) -> list[str]:
    """The one place tesseract runs (tests replace it): ONE process for a batch of images.

    Why batches: each tesseract process spends ~0.18 s loading the fra+eng models and then
    ~0.013 s per 180x180 cover, so one call per image wastes >90% of the CPU. The images go as
    PNGs listed in a text file; pages come back in order, split on a page separator of our own
    (measured: identical text to one call per image on 40 mini covers).
    """
    import pytesseract

    with tempfile.TemporaryDirectory(prefix="ocr") as tmp:
        names = []
        for k, img in enumerate(images):
            names.append(os.path.join(tmp, f"{k}.png"))
            cv2.imwrite(names[-1], img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        listing = os.path.join(tmp, "pages.txt")
        Path(listing).write_text("\n".join(names) + "\n")
        cmd = [pytesseract.pytesseract.tesseract_cmd, listing, "stdout", "-l", settings.lang, "--psm", str(settings.psm),
               "-c", f"page_separator={PAGE_END}"]
        # one thread per tesseract: processes, not OpenMP threads, are what scales here
        done = subprocess.run(cmd, capture_output=True, env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    if done.returncode != 0:
        raise TesseractFailed(done.stderr.decode(errors="replace").strip()[-500:])
    pages = done.stdout.decode("utf-8", errors="replace").split(PAGE_END)
    if len(pages) == len(images) + 1 and not pages[-1].strip():
        pages = pages[:-1]
    if len(pages) != len(images):
        raise TesseractFailed(f"{len(images)} images in, {len(pages)} pages out")
    return pages


def _tesseract_or_split(images: list[np.ndarray], settings: ReadSettings) -> list[str | None]:
    """A failed batch is retried image by image; an image that fails alone gets None (not cached)."""
    try:
        return [" ".join(t.split()) for t in run_tesseract(images, settings)]
    except TesseractFailed as e:
        if len(images) == 1:
            log.warning("tesseract failed on an image: %s", e)
            return [None]
        return [t for img in images for t in _tesseract_or_split([img], settings)]


def read_jpegs(jpegs: list[bytes], settings: ReadSettings) -> list[str | None]:
    """Text of each JPEG, whitespace-normalised; '' for an undecodable one (deterministic, so
    cached), None where tesseract itself failed (not cached: it may work next time)."""
    images, slots, out = [], [], [""] * len(jpegs)
    for k, jpeg in enumerate(jpegs):
        try:
            images.append(preprocess(decode_jpeg(jpeg, "ocr"), settings.steps))
            slots.append(k)
        except CorruptImageError:
            pass
    for k, text in zip(slots, _tesseract_or_split(images, settings) if images else []):
        out[k] = text
    return out


def read_image(jpeg: bytes, settings: ReadSettings) -> str:
    return read_jpegs([jpeg], settings)[0] or ""


def check_tesseract(lang: str) -> str:
    """The tesseract version; a clear error when the binary or a language pack is missing."""
    import pytesseract

    try:
        version = str(pytesseract.get_tesseract_version())
        have = set(pytesseract.get_languages(config=""))
    except (pytesseract.TesseractNotFoundError, OSError) as e:
        raise DataError(f"tesseract is not installed ({e}): apt-get install tesseract-ocr tesseract-ocr-fra tesseract-ocr-eng") from None
    missing = set(lang.split("+")) - have
    if missing:
        raise DataError(f"tesseract lacks the language packs {sorted(missing)}: apt-get install "
                        + " ".join(f"tesseract-ocr-{m}" for m in sorted(missing)))
    return version


def image_md5(jpeg: bytes) -> bytes:
    return hashlib.md5(jpeg).digest()


# ---------------------------------------------------------------------------------------------
# the cache


def _select_texts(db: sqlite3.Connection, key: str, digests: list[bytes], chunk: int) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for start in range(0, len(digests), chunk):
        part = digests[start : start + chunk]
        marks = ",".join("?" * len(part))
        rows = db.execute(f"SELECT md5, text FROM ocr WHERE settings = ? AND md5 IN ({marks})", [key, *part])
        found.update((bytes(m), t) for m, t in rows)
    return found


class TextCache:
    """image MD5 + settings key -> text, in one sqlite3 file (single writer: the parent process)."""

    SCHEMA = "CREATE TABLE IF NOT EXISTS ocr (md5 BLOB NOT NULL, settings TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (md5, settings))"

    def __init__(self, path: str | os.PathLike, settings_key: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = settings_key
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(self.SCHEMA)
        self.db.commit()

    def get_many(self, digests: list[bytes], chunk: int = 500) -> dict[bytes, str]:
        return _select_texts(self.db, self.key, digests, chunk)

    def put_many(self, items: list[tuple[bytes, str]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO ocr (md5, settings, text) VALUES (?, ?, ?)", [(m, self.key, t) for m, t in items])
        self.db.commit()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM ocr WHERE settings = ?", [self.key]).fetchone()[0])

    def close(self) -> None:
        self.db.close()


class FrozenCache:
    """A TextCache file read and never written (the loaded predictor's view of the trained run's
    cache): opened immutable, so sqlite creates no -wal / -shm file beside it; texts read since
    are kept in memory (the newest `keep`). No file (None or absent): memory only."""

    def __init__(self, path: str | os.PathLike | None, settings_key: str, keep: int = 200_000):
        self.path = None if path is None else Path(path)
        self.key, self.keep, self.fresh = settings_key, keep, {}
        self.db = None
        if self.path is not None and self.path.is_file():
            self.db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True, check_same_thread=False)

    def get_many(self, digests: list[bytes], chunk: int = 500) -> dict[bytes, str]:
        found = {d: self.fresh[d] for d in digests if d in self.fresh}
        rest = [d for d in digests if d not in found]
        if self.db is not None and rest:
            try:
                found.update(_select_texts(self.db, self.key, rest, chunk))
            except sqlite3.DatabaseError as e:  # rewritten under us (the stage ran again): read with tesseract from now on
                log.warning("%s: OCR cache unreadable (%s); reading new images with tesseract only", self.path, e)
                self.close()
        return found

    def put_many(self, items: list[tuple[bytes, str]]) -> None:
        if len(self.fresh) + len(items) > self.keep:
            self.fresh = {}
        self.fresh.update(items)

    def __len__(self) -> int:
        stored = 0 if self.db is None else int(self.db.execute("SELECT COUNT(*) FROM ocr WHERE settings = ?", [self.key]).fetchone()[0])
        return stored + len(self.fresh)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def merge_caches(target: str | os.PathLike, sources: list[str | os.PathLike]) -> int:
    """Join caches filled on other machines (--shard) into `target`; returns the rows added."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(target)) as db:
        db.execute(TextCache.SCHEMA)
        before = db.execute("SELECT COUNT(*) FROM ocr").fetchone()[0]
        for k, src in enumerate(sources):
            if not Path(src).is_file():
                raise DataError(f"{src}: no such OCR cache")
            db.execute(f"ATTACH DATABASE ? AS src{k}", [str(src)])
            db.execute(f"INSERT OR IGNORE INTO ocr SELECT md5, settings, text FROM src{k}.ocr")
            db.commit()
            db.execute(f"DETACH DATABASE src{k}")
        return int(db.execute("SELECT COUNT(*) FROM ocr").fetchone()[0] - before)


# ---------------------------------------------------------------------------------------------
# many images, in worker processes

_SETTINGS: ReadSettings | None = None


def _init_worker(settings: ReadSettings) -> None:
    global _SETTINGS
    _SETTINGS = settings
    cv2.setNumThreads(1)


def _read_task(batch: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, str | None]], float]:
    """One batch of (MD5, JPEG) -> ([(MD5, text)], seconds spent)."""
    t0 = time.perf_counter()
    texts = read_jpegs([jpeg for _, jpeg in batch], _SETTINGS)
    return [(digest, text) for (digest, _), text in zip(batch, texts)], time.perf_counter() - t0


@dataclass
class ReadStats:
    images: int = 0  # image occurrences in the selected products
    unique: int = 0  # distinct MD5s among them
    cache_hits: int = 0  # distinct MD5s found in the cache
    read: int = 0  # distinct MD5s sent to tesseract in this run
    failed: int = 0  # of those, images tesseract failed on (text '', not cached)
    read_seconds: float = 0.0  # wall time of the tesseract pass
    busy_seconds: float = 0.0  # summed per-image time inside the workers (CPU-seconds of OCR)
    workers: int = 1

    def as_dict(self) -> dict:
        per_core = self.read / self.busy_seconds if self.busy_seconds else None
        wall = self.read / self.read_seconds if self.read_seconds and self.read else None
        return {"image_occurrences": self.images, "unique_images": self.unique, "cache_hits": self.cache_hits,
                "images_read_now": self.read, "tesseract_failures": self.failed, "ocr_wall_seconds": round(self.read_seconds, 2), "workers": self.workers,
                "images_per_second_per_core": None if per_core is None else round(per_core, 2),
                "images_per_second_total": None if wall is None else round(wall, 2)}


class Readers:
    """tesseract in `workers` processes (inline for one: no process overhead), `batch` images a call."""

    def __init__(self, settings: ReadSettings, workers: int, batch: int = 64):
        self.settings, self.workers, self.batch, self.pool = settings, max(1, workers), max(1, batch), None

    def __enter__(self) -> "Readers":
        if self.workers > 1:
            self.pool = pool_context().Pool(self.workers, initializer=_init_worker, initargs=(self.settings,))
        else:
            _init_worker(self.settings)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()

    def imap(self, items: list[tuple[bytes, bytes]]) -> Iterator[tuple[list[tuple[bytes, str | None]], float]]:
        """(MD5, JPEG) pairs -> batches of (MD5, text) as they finish, each with its seconds."""
        batches = [items[k : k + self.batch] for k in range(0, len(items), self.batch)]
        if self.pool is None:
            return map(_read_task, batches)
        return self.pool.imap_unordered(_read_task, batches)


class ImageTexts:
    """Streams images in, returns their text: cache first, then tesseract on the distinct new ones.

    Images are buffered only `chunk` at a time (a whole split's JPEGs never sit in memory); the
    texts (short strings) of every image seen are kept, keyed by MD5.
    """

    def __init__(self, cache: TextCache, readers: Readers, chunk: int = 1024, progress: bool = True):
        self.cache, self.readers, self.chunk = cache, readers, chunk
        self.texts: dict[bytes, str] = {}
        self.buffer: dict[bytes, bytes] = {}
        self.stats = ReadStats(workers=readers.workers)
        self.bar = bar(None, "OCR", "img", enabled=progress)

    def add(self, jpeg: bytes) -> bytes:
        """Queue one image; returns its MD5 (the key of its text once `flush` has run)."""
        digest = image_md5(jpeg)
        self.stats.images += 1
        if digest not in self.texts and digest not in self.buffer:
            self.buffer[digest] = jpeg
            if len(self.buffer) >= self.chunk:
                self.flush()
        return digest

    def flush(self) -> None:
        if not self.buffer:
            return
        found = self.cache.get_many(list(self.buffer))
        self.texts.update(found)
        todo = [(d, j) for d, j in self.buffer.items() if d not in found]
        self.stats.unique += len(self.buffer)
        self.stats.cache_hits += len(found)
        self.buffer = {}
        t0, done = time.perf_counter(), []
        for results, seconds in self.readers.imap(todo):
            for digest, text in results:
                self.texts[digest] = text or ""
                if text is None:
                    self.stats.failed += 1
                else:
                    done.append((digest, text))
            self.stats.busy_seconds += seconds
            self.bar.update(len(results))
        self.cache.put_many(done)
        self.stats.read += len(todo)
        self.stats.read_seconds += time.perf_counter() - t0

    def close(self) -> ReadStats:
        self.flush()
        self.bar.close()
        if self.stats.read:
            log.info("OCR: %d images in %.1f s with %d workers (%.2f images/s per core)", self.stats.read, self.stats.read_seconds,
                     self.stats.workers, self.stats.read / max(self.stats.busy_seconds, 1e-9))
        return self.stats
