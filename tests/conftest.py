"""Shared fixtures: the real files shipped in common/resources and small generated BSON files."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# one torch thread in every test and every stage it starts: the runs of a test compare byte for byte
# (CPU float rounding depends on the thread count), and two recipes side by side on the 2 cores
# (tests/test_scheduler.py) do not spin against each other's threads
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from common.bson_format import BsonWriter  # noqa: E402
from common.bson_reader import iter_products  # noqa: E402
from common.images import encode_jpeg  # noqa: E402
from common.paths import CATEGORY_NAMES_CSV, TRAIN_EXAMPLE_BSON  # noqa: E402


@pytest.fixture(scope="session")
def sample_bson() -> Path:
    return TRAIN_EXAMPLE_BSON


@pytest.fixture(scope="session")
def category_csv() -> Path:
    return CATEGORY_NAMES_CSV


@pytest.fixture(scope="session")
def sample_products(sample_bson):
    return list(iter_products(sample_bson))


def solid_jpeg(value: int, size: int = 180) -> bytes:
    """A small distinct JPEG: a flat image whose grey level names it."""
    return encode_jpeg(np.full((size, size, 3), value % 256, np.uint8))


@pytest.fixture
def write_bson(tmp_path):
    """write_bson(name, [(id, [jpeg, ...], category_id or None), ...]) -> path."""

    def _write(name: str, products) -> Path:
        path = tmp_path / name
        with BsonWriter(path) as w:
            for pid, images, cat in products:
                w.write(pid, images, cat)
        return path

    return _write


TINY_CATEGORIES = [1000010653, 1000010667, 1000004079, 1000004141, 1000002017, 1000018290]


def make_tiny_work(root: Path, n_train: int = 48, n_test: int = 16, seed: int = 0, n_folds: int = 2) -> Path:
    """A prepared work dir over a small learnable dataset: a product's colour names its category.

    Returns the work dir (dataset.json, index/, folds.csv) with test_labels.csv beside the data.
    """
    import pandas as pd

    from common.categories import CategoryTree
    from common.folds import main as folds_main
    from common.prepare import main as prepare_main

    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    tree = CategoryTree.from_csv(CATEGORY_NAMES_CSV).subset(TINY_CATEGORIES)
    tree.to_csv(data / "category_names.csv")
    palette = rng.integers(0, 256, size=(len(tree), 3))

    def product(label: int) -> list[bytes]:
        images = []
        for _ in range(int(rng.integers(1, 4))):
            img = np.clip(palette[label] + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            images.append(encode_jpeg(img))
        return images

    ids = rng.permutation(np.arange(10, 10 + 3 * (n_train + n_test)))[: n_train + n_test]
    labels = rng.integers(0, len(tree), n_train + n_test)
    with BsonWriter(data / "train.bson") as w:
        for pid, lab in sorted(zip(ids[:n_train].tolist(), labels[:n_train].tolist())):
            w.write(pid, product(lab), int(tree.ids[lab]))
    with BsonWriter(data / "test.bson") as w:
        for pid, lab in sorted(zip(ids[n_train:].tolist(), labels[n_train:].tolist())):
            w.write(pid, product(lab), None)
    pd.DataFrame({"_id": ids[n_train:], "category_id": tree.ids[labels[n_train:]]}).sort_values("_id").to_csv(data / "test_labels.csv", index=False)
    work = root / "work"
    prepare_main(["--train", str(data / "train.bson"), "--test", str(data / "test.bson"), "--categories", str(data / "category_names.csv"),
                  "--test-labels", str(data / "test_labels.csv"), "--work", str(work)])
    folds_main(["--work", str(work), "--n-folds", str(n_folds), "--seed", "0"])
    return work


@pytest.fixture
def tiny_work(tmp_path) -> Path:
    return make_tiny_work(tmp_path)


def assert_same_feature_store(a: Path, b: Path, rel: Path) -> None:
    """Two runs' copies of one feature store file (a/rel, b/rel) hold the same rows: every byte equal
    except, in the features, a rare flip of one quantisation step where a feature falls on a
    rounding boundary and the float noise of another inference batching tips it (CPU kernels are
    not bit-identical across batch sizes). A row lost, unwritten or written to the wrong place
    differs in whole rows, far beyond that."""
    x, y = np.fromfile(a / rel, np.uint8), np.fromfile(b / rel, np.uint8)
    assert x.shape == y.shape, rel
    differ = np.flatnonzero(x != y)
    if rel.name.endswith(".ok.u8") or not len(differ):
        assert not len(differ), f"{rel}: {len(differ)} bytes differ"
        return
    steps = np.abs(x[differ].astype(np.int16) - y[differ])
    assert steps.max() <= 1 and len(differ) <= max(2, len(x) // 2000), f"{rel}: {len(differ)} bytes differ, by up to {steps.max()} steps"


# ---------------------------------------------------------------------------------------------
# the shared trained tiny run: started in the background as the session starts, so the workers run
# other test files meanwhile instead of waiting on it (it is the suite's longest single job)

_TINY_RUN: dict[str, subprocess.Popen] = {}


def tiny_run_dir(basetemp: Path) -> Path:
    """Where the session's tiny run lives: the controller's base temp folder, the parent of each
    pytest-xdist worker's."""
    return (basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp) / "tiny_run"


def start_tiny_run(out: Path) -> None:
    """`run_all.sh --preset tiny` in the background, kept for pytest_unconfigure; `rc` appears
    (atomically) when it ends."""
    from common.paths import REPO

    out.mkdir(parents=True, exist_ok=True)
    (out / "started").touch()
    script = 'bash run_all.sh --preset tiny --work "$1" > "$2/stdout.txt" 2> "$2/stderr.txt"; echo $? > "$2/rc.part"; mv "$2/rc.part" "$2/rc"'
    _TINY_RUN["run"] = subprocess.Popen(["bash", "-c", script, "tiny_run", str(out / "work"), str(out)], cwd=REPO,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL, start_new_session=True)


def wants_tiny_run(config: pytest.Config) -> bool:
    """Whether the session's paths hold a test file using tiny_run (not with -k: it may select none)."""
    if config.option.keyword or os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    for arg in config.args:
        path = config.invocation_params.dir / arg.split("::")[0]
        files = sorted(path.glob("test_*.py")) if path.is_dir() else [path]
        if any(f.is_file() and "tiny_run" in f.read_text() for f in files):
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if wants_tiny_run(session.config):  # before pytest-xdist starts the workers: they see `started`
        start_tiny_run(tiny_run_dir(session.config._tmp_path_factory.getbasetemp()))


def pytest_unconfigure(config: pytest.Config) -> None:
    """A background run no test waited for (or still running after a failure) is stopped; an
    ended one is reaped."""
    run = _TINY_RUN.pop("run", None)
    if run is not None and run.poll() is None:
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(60)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    """One uninterrupted `run_all.sh --preset tiny` (every stage), shared by every test that needs a
    trained work dir: (the work dir, what it printed). Tests that change it work on a copy. Started
    as the session starts (pytest_sessionstart) or, failing that, by the first test to need it,
    under a file lock shared by the pytest-xdist workers; the others wait for its `rc` file."""
    import fcntl

    out = tiny_run_dir(tmp_path_factory.getbasetemp())
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "started").exists():
            start_tiny_run(out)
    deadline = time.monotonic() + 1800
    while not (out / "rc").exists():
        assert time.monotonic() < deadline, f"the tiny run in {out} took over 30 minutes"
        time.sleep(1)
    printed = (out / "stdout.txt").read_text()
    assert (out / "rc").read_text().strip() == "0", printed[-3000:] + (out / "stderr.txt").read_text()[-3000:]
    return out / "work", printed
