"""fidesr-app in a real browser: the console script serves a checkpoint from a real (2-step) training run on
127.0.0.1, and headless Chromium (Debian's ``chromium`` + ``chromium-driver``, installed by ``.ci/run``) uploads
an image, runs it, moves the high-frequency slider, sees the result change, and gets a message for a bad file.

Skipped only when Chromium or its driver is not installed on this machine.
"""

from __future__ import annotations

import io
import json
import os
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

pytest.importorskip("gradio", reason="fidesr-app needs the extra fidesr[app] (make install installs it)")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (extra dev)")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver; .ci/run does it)",
    ),
]


def _env(cache_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FIDESR_CACHE_DIR": str(cache_dir),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "HYDRA_FULL_ERROR": "0",
    }


@pytest.fixture
def checkpoint(fast_train_overrides: list[str], cache_dir: Path, tmp_path: Path) -> Path:
    """last.ckpt of a 2-step fidesr-train run of the tiny model with every component on (about 15 s)."""
    args = [
        *fast_train_overrides,
        "callbacks.validation_images=null",
        "validate_before_fit=false",
        "logger=csv",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(
        [str(BIN / "fidesr-train"), *args], capture_output=True, text=True, timeout=600, env=_env(cache_dir)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(checkpoint: Path, cache_dir: Path, tmp_path: Path):
    """``fidesr-app --checkpoint CKPT --host 127.0.0.1 --port P`` running; yields (url, log file)."""
    port = _free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                str(BIN / "fidesr-app"),
                "--checkpoint",
                str(checkpoint),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=_env(cache_dir),
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (
                f"fidesr-app exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"fidesr-app did not serve {url}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _picture(path: Path, h: int = 32, w: int = 40) -> Path:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([128 + 100 * np.sin(x / 3), 128 + 100 * np.cos(y / 4), 255.0 * ((x // 8 + y // 8) % 2)], 2)
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def _fetch_image(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=10) as resp:
        return np.asarray(Image.open(io.BytesIO(resp.read())).convert("RGB"))


def test_app_in_headless_chromium(app_url: tuple[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = app_url
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(url)
        file_input = "#fidesr-upload input[type=file]"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, file_input))
        driver.find_element(By.CSS_SELECTOR, file_input).send_keys(str(_picture(tmp_path / "lq.png")))
        wait.until(lambda d: "lq.png" in d.find_element(By.ID, "fidesr-upload").text.replace("\n", ""))
        driver.find_element(By.ID, "fidesr-run").click()

        def result(d) -> tuple[str, str] | None:
            srcs = [
                img.get_attribute("src") for img in d.find_elements(By.CSS_SELECTOR, "#fidesr-compare img")
            ]
            return tuple(srcs) if len(srcs) == 2 and all(srcs) else None

        bicubic_src, sr_src = wait.until(result)
        wait.until(lambda d: "px ->" in d.find_element(By.ID, "fidesr-time").text)
        assert "40 x 32 px -> 160 x 128 px" in driver.find_element(By.ID, "fidesr-time").text  # w x h, x4
        sr, bicubic = _fetch_image(sr_src), _fetch_image(bicubic_src)
        assert sr.shape == bicubic.shape == (128, 160, 3) and not np.array_equal(sr, bicubic)
        assert driver.find_element(By.ID, "fidesr-download").is_enabled()

        # Move the high-frequency strength from 0.2 to about 0.9 (a click on the track, released at once).
        track = driver.find_element(By.CSS_SELECTOR, "#fidesr-hf input[type=range]")
        ActionChains(driver).move_to_element_with_offset(
            track, int(track.size["width"] * 0.4), 0
        ).click().perform()
        assert float(track.get_attribute("value")) > 0.5
        _, sr_src2 = wait.until(lambda d: (r := result(d)) and r[1] != sr_src and r)
        sr2 = _fetch_image(sr_src2)
        assert sr2.shape == sr.shape and np.abs(sr2.astype(int) - sr.astype(int)).mean() > 0.05
        wait.until(lambda d: "hf 0.90" in d.find_element(By.ID, "fidesr-time").text)
        driver.save_screenshot(str(tmp_path / "app.png"))
        print(f"screenshot: {tmp_path / 'app.png'}")

        # A file that is not an image: a message in the page, no traceback anywhere.
        driver.find_element(By.CSS_SELECTOR, "#fidesr-upload button[aria-label='Clear']").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, file_input))
        bad = tmp_path / "notes.png"
        bad.write_text("these are not pixels\n" * 20)
        driver.find_element(By.CSS_SELECTOR, file_input).send_keys(str(bad))
        wait.until(lambda d: "notes.png" in d.find_element(By.ID, "fidesr-upload").text.replace("\n", ""))
        driver.find_element(By.ID, "fidesr-run").click()
        message = "cannot read image notes.png: cannot identify image file"
        wait.until(lambda d: message in d.find_element(By.TAG_NAME, "body").text)
        assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text

        # Offline: every request the page made went to the app itself (no fonts, scripts or analytics).
        requested = set()
        for entry in driver.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            if event["method"] == "Network.requestWillBeSent":
                requested.add(event["params"]["request"]["url"])
        foreign = sorted(u for u in requested if not u.startswith((url, "data:", "blob:")))
        assert len(requested) > 10 and not foreign, foreign
    finally:
        driver.quit()
    server_log = log.read_text()
    assert "rejected upload: cannot read image notes.png" in server_log and "Traceback" not in server_log
