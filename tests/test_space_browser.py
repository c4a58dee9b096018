"""The Space in a real browser: `python space/app.py` as users start it, driven by Playwright in Debian's chromium.

Needs `apt-get install -y chromium` and `pip install playwright` (the Python package only: the system chromium is
used, nothing is downloaded). Set RP_SPACE_SCREENSHOT=PATH to also keep the screenshot there.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rp_diffusers.codecs import get_codec
from rp_diffusers.evaluation.sweep import EXAMPLES_DIR
from rp_diffusers.pipelines.testing import build_tiny_random_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 150  # seconds for `python space/app.py` to serve its page on a loaded 2-core machine

if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)", allow_module_level=True
    )
sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason="playwright (Python package) not installed: pip install playwright"
).sync_playwright


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`python space/app.py` on 127.0.0.1 (free port) with a tiny random model, as a subprocess."""
    model = build_tiny_random_model(tmp_path_factory.mktemp("tiny-rp"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "RP_SPACE_MODEL": str(model),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path_factory.mktemp("space-log") / "app.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "space" / "app.py")], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"space/app.py exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"space/app.py did not serve {url} within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}"
                    )
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def page(app_url):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _open(page, url: str, upload: Path) -> None:
    page.goto(url)
    page.wait_for_selector("#run-button")
    page.locator("#input-image input[type=file]").set_input_files(str(upload))
    page.wait_for_selector("#input-image img")


def test_space_browser_upload_compare_shows_images_table_and_downloads(page, app_url, tmp_path):
    photo = tmp_path / "photo.png"
    with Image.open(EXAMPLES_DIR / "chalet.png") as image:  # 192x176: MS-SSIM runs (>= 161 px per side)
        image.convert("RGB").crop((120, 60, 312, 236)).save(photo)
    _open(page, app_url, photo)
    assert "Tiny RANDOM model" in page.locator("#model-banner").inner_text()
    page.click("#run-button")
    page.wait_for_function("document.querySelector('#results-table')?.innerText.includes('rp + codec')")

    table = page.evaluate(
        """() => Array.from(document.querySelectorAll('#results-table [role=grid] [role=row]')).map(row =>
            Array.from(row.querySelectorAll('[role=columnheader], [role=gridcell]')).map(cell => cell.innerText.trim()))"""
    )
    header = table[0]
    assert header[:6] == ["variant", "quality", "bpp", "bytes", "PSNR (dB)", "MS-SSIM"]
    # then every weight-free perceptual metric this machine has (SSIMULACRA2 always: it is ours)
    assert "SSIMULACRA2" in header[6:]
    rows = {row[0]: dict(zip(header[1:], row[1:])) for row in table[1:]}
    assert list(rows) == ["codec alone", "rp + codec"]
    for row in rows.values():
        bpp, size = float(row["bpp"]), int(row["bytes"])
        assert 0 < bpp < 24 and bpp == pytest.approx(8 * size / (192 * 176), abs=1e-4)
        assert 5 < float(row["PSNR (dB)"]) < 100 and 0 < float(row["MS-SSIM"]) <= 1 and 1 <= int(row["quality"]) <= 100
        assert float(row["SSIMULACRA2"]) <= 100
    assert re.search(r"rp \+ codec\*?\*?: [0-9.]+ bpp", page.locator("#summary").inner_text())

    outputs = "#comparison-slider img, #codec-alone img, #rp-codec img"
    page.wait_for_function(  # the table can arrive before the images finish loading
        "sel => { const all = [...document.querySelectorAll(sel)]; "
        "return all.length === 4 && all.every(i => i.complete && i.naturalWidth > 0); }",
        arg=outputs,
    )
    images = page.evaluate(
        "sel => [...document.querySelectorAll(sel)].map(i => [i.naturalWidth, i.naturalHeight])", outputs
    )
    assert images == [[192, 176]] * 4
    links = page.evaluate(
        "() => Array.from(document.querySelectorAll('#codec-alone-file a, #rp-codec-file a'))"
        ".map(a => [a.getAttribute('download'), a.href])"
    )
    assert [name for name, _ in links] == ["photo.jpg", "photo.rp.jpg"]
    for (_, href), variant in zip(links, ("codec alone", "rp + codec")):
        with urllib.request.urlopen(href, timeout=10) as response:
            data = response.read()
        assert data[:2] == b"\xff\xd8" and len(data) == int(rows[variant]["bytes"])  # the JPEG the table measured

    screenshot = tmp_path / "space_screenshot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get("RP_SPACE_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["RP_SPACE_SCREENSHOT"])
    print(f"screenshot: {screenshot}")
    shot = np.asarray(Image.open(screenshot).convert("L"))
    assert shot.shape[1] == 1400 and shot.std() > 10  # a rendered page, not a blank one


def test_space_browser_corrupt_upload_shows_a_message(page, app_url, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:80])
    _open(page, app_url, broken)
    page.click("#run-button")
    toast = page.locator("[data-testid=toast-text]").filter(has_text="broken.png")
    toast.first.wait_for()
    text = toast.first.inner_text()
    assert text.startswith("broken.png is truncated or corrupt") and "Traceback" not in text


def test_space_browser_choosing_vvc_warns_and_sets_its_quality_range(page, app_url):
    page.goto(app_url)
    page.wait_for_selector("#run-button")
    page.locator("#codec input").click()
    page.get_by_role("option", name="vvc (slow)").click()
    page.locator("[data-testid=toast-text]").filter(has_text="VVC (vvenc) is slow").first.wait_for()
    vvc = get_codec("vvc")
    number = page.locator("#quality input[type=number]")
    page.wait_for_function(
        "max => document.querySelector('#quality input[type=number]').max === max", arg=str(vvc.quality_range[1])
    )
    assert number.input_value() == str(vvc.default_quality)
