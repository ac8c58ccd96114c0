"""`factory view`: the real server on 127.0.0.1, its JSON, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.test_export import replay_run

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`factory view` on a replayed, filtered run, as a user starts it; yields the URL it prints."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FACTORY_HOME", str(home))
    replay_run(tmp_path, home)
    env = {**os.environ, "FACTORY_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "view", "--run", "traces", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = proc.stdout.readline()  # "factory view: serving http://127.0.0.1:PORT/ (Ctrl-C to stop)"
        assert "serving http://127.0.0.1:" in line, (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        yield line.split("serving ", 1)[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=20) as response:
        return json.loads(response.read())


def test_view_api_filters_and_shows_every_verdict(served: str) -> None:
    facets = _json(f"{served}api/facets?run=traces")
    assert facets["generated"] == 12
    assert {"format", "correctness", "decontam", "selection"} <= {s["step"] for s in facets["steps"]}
    everything = _json(f"{served}api/samples?run=traces")
    wrong = _json(f"{served}api/samples?run=traces&step=correctness&verdict=rejected")
    assert everything["total"] == 12 and wrong["total"] == 4  # every third trace has a wrong answer
    assert all("wrong_answer" in r["rejected_by"] for r in wrong["rows"])
    assert _json(f"{served}api/samples?run=traces&reason=wrong_answer&task_type=logic")["total"] == 2
    sample = _json(f"{served}api/sample?run=traces&id={wrong['rows'][0]['sample_id']}")
    assert sample["reasoning"] and sample["answer"] and sample["prompt"]
    assert {"format", "correctness"} <= {v["step"] for v in sample["verdicts"]}
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(f"{served}api/samples?run=traces&verdict=maybe", timeout=20)
    assert bad.value.code == 400


def test_view_bad_run_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    proc = run_cli("view", "--run", "nope", "--port", "0", home=home, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--run nope" in proc.stderr


def _browser():
    """A headless Chromium driven by Selenium; skip (saying why) only when no browser is installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not chromium or not driver or webdriver is None:
        reason = "no headless browser: apt-get install chromium chromium-driver and pip install selenium (the dev extra)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_view_in_a_real_browser(served: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(served)

        def count() -> int:
            text = browser.find_element(By.ID, "count").text
            return int(text.split()[0]) if text else -1

        wait.until(lambda b: count() == 12)  # page loaded: every sample of the run listed
        assert len(browser.find_elements(By.CSS_SELECTOR, "#list .row")) == 12
        # A filter narrows the list.
        Select(browser.find_element(By.ID, "task_type")).select_by_value("math")
        wait.until(lambda b: count() == 6)
        Select(browser.find_element(By.ID, "task_type")).select_by_value("")
        wait.until(lambda b: count() == 12)
        # A funnel bar jumps to that step's rejected samples.
        browser.find_element(By.CSS_SELECTOR, '#funnel .bar[data-step="correctness"]').click()
        wait.until(lambda b: count() == 4)
        rows = browser.find_elements(By.CSS_SELECTOR, "#list .row")
        assert len(rows) == 4 and all("wrong_answer" in r.text for r in rows)
        assert Select(browser.find_element(By.ID, "verdict")).first_selected_option.text == "rejected"
        # A sample opens: prompt, folded reasoning and answer side by side, every verdict with its reason.
        rows[0].click()
        wait.until(lambda b: b.find_elements(By.ID, "verdicts"))
        assert "What is" in browser.find_element(By.ID, "prompt").text
        assert "boxed" in browser.find_element(By.ID, "answer").text
        reasoning = browser.find_element(By.ID, "reasoning")
        assert reasoning.get_attribute("open") is None  # folded until asked
        reasoning.find_element(By.TAG_NAME, "summary").click()
        assert "We add" in reasoning.text
        verdicts = browser.find_element(By.ID, "verdicts").text
        assert "correctness" in verdicts and "wrong_answer" in verdicts and "format" in verdicts
    finally:
        browser.quit()
