"""The web page in headless Chromium (Debian packages chromium + chromium-driver, driven by
Selenium): upload a real EmotionTTS clip, read the label the page shows, keep a screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import LABELS

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            pytest.fail(f"{binary} missing; install with: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1000,1400", f"--user-data-dir={tmp_path / 'profile'}",
                 # a fake microphone (a beeping tone) that needs no permission prompt
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_shows_label_bars_timeline_and_contribution(browser, live_server, clip, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    expected = httpx.post(f"{live_server}/v1/predict", files={"file": (clip.name, clip.read_bytes(), "audio/wav")},
                          timeout=120).json()

    browser.get(live_server + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(EC.text_to_be_present_in_element((By.ID, "model-info"), "labels:"))
    assert "neutral, happy, sad, angry" in browser.find_element(By.ID, "model-info").text
    browser.find_element(By.ID, "file").send_keys(str(clip))
    wait.until(EC.visibility_of_element_located((By.ID, "result")))
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "done"))

    label = browser.find_element(By.ID, "result-label").get_attribute("data-label")
    assert label in LABELS
    assert label == expected["label"]
    assert browser.find_element(By.ID, "transcript").text == expected["transcript"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert sorted(b.get_attribute("data-label") for b in bars) == sorted(LABELS)
    assert bars[0].get_attribute("data-label") == label  # sorted by probability
    segs = browser.find_elements(By.CSS_SELECTOR, "#timeline .seg")
    assert [s.get_attribute("data-label") for s in segs] == [s["label"] for s in expected["segments"]]
    contribution = browser.find_element(By.ID, "contribution").text
    assert "audio" in contribution and "text" in contribution
    assert not expected["warnings"] and not browser.find_element(By.ID, "warnings").is_displayed()

    shot = tmp_path / "koemo-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    if os.environ.get("KOEMO_TEST_OUTPUT"):  # e.g. CI's artifact folder
        keep = Path(os.environ["KOEMO_TEST_OUTPUT"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)
    # a clip with too little speech: answered, and the page says the answer is a guess
    import numpy as np
    import soundfile as sf

    audio, sr = sf.read(clip, dtype="float32")
    short = tmp_path / "short.wav"
    sf.write(short, np.concatenate([np.zeros(sr // 2, np.float32), audio[sr: sr + sr // 4]]), sr)
    browser.find_element(By.ID, "file").send_keys(str(short))
    wait.until(EC.text_to_be_present_in_element((By.ID, "warnings"), "too short to judge"))


def test_bad_upload_shows_the_error(browser, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.wav"
    bad.write_text("not audio, just text " * 20)
    browser.get(live_server + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    WebDriverWait(browser, 60).until(EC.text_to_be_present_in_element((By.ID, "status"), "notes.wav:"))
    status = browser.find_element(By.ID, "status")
    assert "not a supported audio format" in status.text
    assert "error" in status.get_attribute("class")
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_record_from_the_microphone_uploads_and_shows_a_result(browser, live_server):
    """Record -> Stop with Chromium's fake microphone: MediaRecorder's webm/opus is uploaded,
    decoded and classified like a file."""
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live_server + "/")
    record = browser.find_element(By.ID, "record")
    record.click()
    WebDriverWait(browser, 20).until(EC.text_to_be_present_in_element((By.ID, "record"), "Stop"))
    time.sleep(2.5)
    record.click()
    # Not just "done": the recording prompt ("press Stop when done.") contains it too.
    WebDriverWait(browser, 120).until(
        lambda b: b.find_element(By.ID, "status").text.startswith("recording.webm:")
        or "error" in b.find_element(By.ID, "status").get_attribute("class"))
    assert browser.find_element(By.ID, "status").text.startswith("recording.webm: done")
    assert browser.find_element(By.ID, "result-label").get_attribute("data-label") in LABELS
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == len(LABELS)
