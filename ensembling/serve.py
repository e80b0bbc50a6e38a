"""An HTTP service over a trained work dir: the predictor is built once at start and every request
shares it (one prediction at a time: a lock; the models are not re-entrant).

    python -m ensembling.serve --work W [--source S] [--host 127.0.0.1] [--port 8000] [--topk 5]

    POST /predict   multipart form, field `images`: 1-4 photos of ONE product (the first is its main view)
                    -> {"source", "seconds", "top": [{"rank", "category_id", "score", "category_level1..3"}]}
    GET  /health    {"status": "ok", "source", "work"}
    GET  /          a page: drop a product's photos, see its top categories

Too many images, one over --max-image-mb, or one no decoder reads get a 4xx whose `detail` names
the file. Scores are the source's calibrated probabilities where it has a calibration map
(common/calibration.py).
"""
from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from common.checks import at_least, between, positive
from common.cli import parse_stage, run
from common.errors import CorruptImageError, DataError

try:  # the `serve` extra (pip install -e '.[serve]'); without it --help still works and main says what to install
    from fastapi import FastAPI, File, HTTPException, UploadFile
    from fastapi.responses import HTMLResponse
except ImportError as e:  # pragma: no cover - requirements-serve.txt is in the test environment
    FASTAPI_MISSING: ImportError | None = e
    FastAPI = File = HTTPException = UploadFile = HTMLResponse = None
else:
    FASTAPI_MISSING = None

MAX_IMAGES = 4  # the most a Cdiscount product has (every model saw at most 4)
PAGE = Path(__file__).with_name("serve_page.html")
DEPRECATED_FLAGS = {"--top": "--topk"}  # old name -> flag: still accepted, with one warning line (as ensembling.predict)


@dataclass
class ServeOptions:
    source: str = ""  # the source to serve ("": the stack, else the only blend)
    host: str = "127.0.0.1"  # the address to listen on (0.0.0.0: every interface)
    port: Annotated[int, between(0, 65535)] = 8000  # the TCP port
    topk: Annotated[int, at_least(1)] = 5  # categories returned per product
    max_image_mb: Annotated[float, positive()] = 10.0  # larger uploads are refused (413)


def upload_error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def read_images(files: list, max_bytes: float) -> list[bytes]:
    """The uploads as the data path reads images (common: ensembling.predict.products), or a 4xx naming the file."""
    from .predict.products import as_data_image

    if not 1 <= len(files) <= MAX_IMAGES:
        raise upload_error(400, f"{len(files)} images: a product has 1 to {MAX_IMAGES}")
    out = []
    for f in files:
        data = f.file.read()
        if len(data) > max_bytes:
            raise upload_error(413, f"{f.filename}: {len(data) / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
        try:
            out.append(as_data_image(data, f.filename))
        except CorruptImageError as e:
            raise upload_error(422, str(e)) from None
    return out


def build_app(predictor, top: int = 5, max_image_mb: float = 10.0):
    """The FastAPI app around a loaded predictor (anything with predict(dict, top) -> frame and .source)."""
    app, lock = FastAPI(title="Cdiscount product classifier"), threading.Lock()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "source": predictor.source, "work": str(predictor.work.root)}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text().replace("{{source}}", html.escape(predictor.source))

    @app.post("/predict")
    def predict(images: list[UploadFile] = File(...)) -> dict:
        photos = read_images(images, max_image_mb * 1e6)
        start = time.perf_counter()
        with lock:
            frame = predictor.predict({"upload": photos}, top=top)
        if frame.empty:
            raise upload_error(422, f"{', '.join(f.filename for f in images)}: no image the models could use")
        rows = frame.drop(columns=["product"]).to_dict("records")
        return {"source": predictor.source, "seconds": round(time.perf_counter() - start, 3),
                "top": [{k: (int(v) if k in ("rank", "category_id") else float(v) if k == "score" else v) for k, v in r.items()} for r in rows]}

    return app


def main(argv: list[str] | None = None) -> None:
    args = parse_stage(argv, __doc__, ServeOptions, aliases=DEPRECATED_FLAGS)
    opts = args.options
    if FASTAPI_MISSING is not None:
        raise DataError(f"the service needs the serve extra: pip install 'cdiscount-top3[serve]' (in the repo: pip install -e '.[serve]'): {FASTAPI_MISSING}")
    import uvicorn

    from .predict import Predictor

    try:
        predictor = Predictor.from_work(args.work, opts.source or None)
    except DataError as e:
        raise SystemExit(f"serve: {e}") from None
    print(f"serving {predictor.source} of {args.work.root} on http://{opts.host}:{opts.port}/")
    uvicorn.run(build_app(predictor, opts.topk, opts.max_image_mb), host=opts.host, port=opts.port, log_level="info")


if __name__ == "__main__":
    run(main)
