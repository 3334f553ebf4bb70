"""`geolrm-jax demo` in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) loads the page, runs the bundled sample, and checks the 3D viewers, the video and the downloads; a bad
upload must show its error in the page. Set GEOLRM_UPDATE_SCREENSHOT=1 to refresh docs/demo.png."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                  "--disable-dev-shm-usage")


def _require(condition: bool, what: str) -> None:
    if not condition:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} is missing (.ci/run installs it)")
        pytest.skip(f"{what} is missing")


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    _require(_have("gradio") and _have("selenium"), "the 'demo' extra (gradio, selenium)")
    _require(os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), "chromium / chromium-driver")
    tmp = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, GEOLRM_CACHE=str(tmp / "no-cache"), GRADIO_ANALYTICS_ENABLED="False",
               JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("GEOLRM_CHECKPOINT", None)
    env.pop("XLA_FLAGS", None)  # one CPU device is enough for the app
    cmd = [sys.executable, "-m", "geolrm_jax.cli", "demo", "--port", "0", "--workdir", str(tmp / "work"),
           "--model-config", "tiny", "--random-weights", "--video-size", "64", "--video-frames", "6",
           "--mesh-resolution", "48", "--mesh-views", "16", "--mesh-view-size", "96"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, lines, deadline = None, [], time.time() + 90
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
        url = match.group(1) if match else None
    if url is None:
        proc.kill()
        pytest.fail("the demo did not print its URL:\n" + "".join(lines))
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, timeout, condition, what):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except Exception:
        driver.save_screenshot("/tmp/geolrm_demo_failure.png")
        text = driver.find_element("tag name", "body").text
        raise AssertionError(f"timed out waiting for {what}; page text:\n{text}") from None


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.mark.slow
def test_sample_reconstruction_in_the_browser(demo_url, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(demo_url)
    _wait(browser, 60, lambda d: d.find_elements(By.ID, "sample-button"), "the page")
    browser.find_element(By.ID, "sample-button").click()
    _wait(browser, 240, lambda d: d.find_elements(By.CSS_SELECTOR, "#turntable video"), "the turntable video")
    _wait(browser, 60, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#downloads a")) >= 5, "the downloads")
    assert "RANDOM WEIGHTS" in browser.find_element(By.ID, "status").text
    assert browser.find_elements(By.CSS_SELECTOR, "#gaussians-view canvas"), "no 3D viewer for the Gaussians"
    assert browser.find_elements(By.CSS_SELECTOR, "#mesh-view canvas"), "no 3D viewer for the mesh"

    links = {a.text.strip() or a.get_attribute("download"): a.get_attribute("href")
             for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
    files = {}
    for name in ("gaussians.ply", "gaussians.splat", "mesh.glb", "mesh.obj"):
        href = next((h for label, h in links.items() if name in (label or "") or name in h), None)
        assert href, f"no download link for {name}: {links}"
        files[name] = _fetch(href)
    assert files["gaussians.ply"].startswith(b"ply\nformat binary_little_endian 1.0")
    assert len(files["gaussians.splat"]) % 32 == 0 and len(files["gaussians.splat"]) > 0
    assert files["mesh.glb"][:4] == b"glTF"
    assert re.search(rb"^v -?\d", files["mesh.obj"], re.M) and re.search(rb"^f \d+", files["mesh.obj"], re.M)
    video_src = browser.find_element(By.CSS_SELECTOR, "#turntable video").get_attribute("src")
    video = tmp_path / "turntable.mp4"
    video.write_bytes(_fetch(video_src))
    import imageio.v3 as iio

    assert np.asarray(iio.imread(video, index=None)).shape == (6, 64, 64, 3)

    shot = tmp_path / "demo.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("GEOLRM_UPDATE_SCREENSHOT"):
        from PIL import Image

        with Image.open(shot) as image:
            image.convert("RGB").resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS).quantize(
                colors=128).save(REPO / "docs" / "demo.png", optimize=True)


def test_bad_upload_shows_an_error(demo_url, browser, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.txt"
    bad.write_text("not a view")
    browser.get(demo_url)
    _wait(browser, 60, lambda d: d.find_elements(By.CSS_SELECTOR, "#input-files input[type=file]"), "the upload")
    browser.find_element(By.CSS_SELECTOR, "#input-files input[type=file]").send_keys(str(bad))
    _wait(browser, 30, lambda d: "notes" in d.find_element(By.ID, "input-files").text, "the uploaded file")
    browser.find_element(By.ID, "run-button").click()
    _wait(browser, 60, lambda d: "not an image, a video or a zip" in d.find_element(By.TAG_NAME, "body").text,
          "the error message")
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text


def _posed_files(folder: pathlib.Path) -> list[pathlib.Path]:
    shutil.copytree(REPO / "geolrm_jax" / "assets" / "sample", folder)
    return sorted(folder.iterdir())


def test_uploads_become_reconstruct_inputs(tmp_path):
    import zipfile

    from geolrm_jax import demo_app, inputs

    files = _posed_files(tmp_path / "sample")
    folder = demo_app.prepare_input([str(p) for p in files], tmp_path / "work1")
    assert inputs.detect_kind(folder) == "posed" and sorted(p.name for p in folder.iterdir()) == [p.name for p in files]
    with zipfile.ZipFile(tmp_path / "views.zip", "w") as archive:
        for p in files:
            archive.write(p, f"my object/{p.name}")
    folder = demo_app.prepare_input([str(tmp_path / "views.zip")], tmp_path / "work2")
    assert folder.name == "my object" and inputs.detect_kind(folder) == "posed"
    single = demo_app.prepare_input([str(files[0])], tmp_path / "work3")
    assert inputs.detect_kind(single) == "zero123pp"

    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("../outside.png", b"x")
    with pytest.raises(demo_app.UploadError, match="evil.zip: member '../outside.png' points outside"):
        demo_app.prepare_input([str(tmp_path / "evil.zip")], tmp_path / "work4")
    assert not (tmp_path / "outside.png").exists()
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(demo_app.UploadError, match="bad.zip: not a readable zip file"):
        demo_app.prepare_input([str(tmp_path / "bad.zip")], tmp_path / "work5")
    with pytest.raises(demo_app.UploadError, match="notes.md: expected images and cameras.json"):
        demo_app.prepare_input([str(files[0]), str(tmp_path / "notes.md")], tmp_path / "work6")
    with pytest.raises(demo_app.UploadError, match="no files uploaded"):
        demo_app.prepare_input([], tmp_path / "work7")
