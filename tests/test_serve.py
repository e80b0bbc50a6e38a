"""The HTTP service (ensembling/serve.py) over the tiny run: the API through FastAPI's TestClient, and
the page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium) uploading
two photos and reading the categories it shows. Without chromium the browser test is skipped with
the reason (run_tests.sh prints skip reasons; as root it installs chromium itself)."""
from __future__ import annotations

import shutil
import socket
import threading
import time

import numpy as np
import pytest

from common.bson_reader import iter_products
from common.paths import TRAIN_EXAMPLE_BSON

SOURCE = "dylan_mini_lite0"  # one model: the service's wiring, in about a second per request


@pytest.fixture(scope="module")
def served(tiny_run):
    from ensembling.predict import Predictor
    from ensembling.serve import build_app

    predictor = Predictor.from_work(tiny_run[0], SOURCE)
    return predictor, build_app(predictor, top=5, max_image_mb=1.0)


def photos(n: int) -> list[bytes]:
    return [p.images[0] for p in list(iter_products(TRAIN_EXAMPLE_BSON))[:n]]


def test_the_api_answers_what_the_predictor_answers(served):
    from fastapi.testclient import TestClient

    predictor, app = served
    client = TestClient(app)
    assert client.get("/health").json() == {"status": "ok", "source": SOURCE, "work": str(predictor.work.root)}
    two = photos(2)
    reply = client.post("/predict", files=[("images", ("front.jpg", two[0], "image/jpeg")), ("images", ("side.jpg", two[1], "image/jpeg"))])
    assert reply.status_code == 200, reply.text
    top = reply.json()["top"]
    expected = predictor.predict({"p": two}, top=5)
    assert [r["category_id"] for r in top] == expected["category_id"].tolist() and [r["rank"] for r in top] == [1, 2, 3, 4, 5]
    assert np.allclose([r["score"] for r in top], expected["score"]) and all(r["category_level1"] for r in top)
    assert "Classify" in client.get("/").text and SOURCE in client.get("/").text


def test_bad_uploads_get_a_4xx_naming_the_file(served):
    from fastapi.testclient import TestClient

    client = TestClient(served[1])
    many = client.post("/predict", files=[("images", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(photos(5))])
    assert many.status_code == 400 and "5 images: a product has 1 to 4" in many.json()["detail"]
    text = client.post("/predict", files=[("images", ("notes.txt", b"not a photo", "text/plain"))])
    assert text.status_code == 422 and "notes.txt" in text.json()["detail"]
    cut = photos(1)[0][:500]
    assert "front.jpg" in client.post("/predict", files=[("images", ("front.jpg", cut, "image/jpeg"))]).json()["detail"]
    big = client.post("/predict", files=[("images", ("huge.png", b"\x89PNG" + bytes(1_100_000), "image/png"))])
    assert big.status_code == 413 and "huge.png" in big.json()["detail"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_in_headless_chromium_shows_the_top_categories(served, tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("browser test: Debian's chromium and chromium-driver are not installed (run_tests.sh installs them as root)")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor, app = served
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    paths = []
    for i, data in enumerate(photos(2)):
        paths.append(tmp_path / f"photo{i}.jpg")
        paths[-1].write_bytes(data)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
        browser.find_element(By.ID, "predict").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "results").is_displayed())
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)
    expected = predictor.predict({"p": [p.read_bytes() for p in paths]}, top=5)
    assert [r[1] for r in rows] == expected["category_level3"].tolist()  # the names the page shows
    assert [int(r[4]) for r in rows] == expected["category_id"].tolist()
