"""The service's pages in a real browser: Debian's Chromium, headless, driven by Selenium,
against the service under gunicorn on 127.0.0.1, serving the session's learned run.

Screenshots go to tmp_path, or to FACET_SCREENSHOTS when set (`make screenshots` refreshes
the ones in docs/screenshots/)."""

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_same_probabilities, post_jpeg, run_monitor, serving
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from lib import synthetic

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn, pytest.mark.flow]

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT_SECONDS = 60
# Headless, and nothing Chromium would fetch by itself: the tests run without a network.
BROWSER_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--window-size=1280,1800",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in BROWSER_ARGUMENTS:
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def server(learned_home, isolated, tmp_path) -> Iterator[tuple[str, str]]:
    """The learned run, copied into this test's datastore, served by gunicorn: (its base URL,
    the run's pathspec)."""
    home, pathspec = learned_home
    shutil.copytree(home / "datastore", isolated / "datastore", dirs_exist_ok=True)
    with serving(tmp_path, MODEL_RUN=pathspec) as (_, base, _):
        yield base, pathspec


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[Path]:
    root = synthetic.generate(tmp_path_factory.mktemp("faces"), synthetic.make_spec(48, seed=9))
    return sorted((root / "img_align_celeba").iterdir())


def predict(base: str, image: Path) -> dict:
    status, answer = post_jpeg(f"{base}/predict", image.read_bytes())
    assert status == 200, status
    return answer


def wait_for_elements(driver: WebDriver, css: str, count: int = 1) -> list:
    """The elements matching `css` once there are at least `count`."""
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count
    )
    return driver.find_elements(By.CSS_SELECTOR, css)


def screenshot(driver: WebDriver, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("FACET_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")


def test_the_try_it_page_shows_what_the_api_answers(server, browser, faces, tmp_path):
    base, _ = server
    browser.get(f"{base}/")
    browser.find_element(By.ID, "images").send_keys(str(faces[0]))
    [result] = wait_for_elements(browser, '.result[data-state="done"]')
    bars = result.find_elements(By.CSS_SELECTOR, ".bar")
    shown = {b.get_attribute("data-attribute"): b.get_attribute("data-probability") for b in bars}
    answer = predict(base, faces[0])["predictions"][0]
    assert_same_probabilities({name: float(p) for name, p in shown.items()}, answer["attributes"])
    thresholds = json.loads(urllib.request.urlopen(f"{base}/model").read())["thresholds"]
    marked = {b.get_attribute("data-attribute"): b.get_attribute("data-threshold") for b in bars}
    assert {name: float(t) for name, t in marked.items()} == thresholds
    present = result.find_elements(By.CSS_SELECTOR, ".present li")
    assert [li.get_attribute("data-attribute") for li in present] == answer["present"]
    screenshot(browser, "try-it", tmp_path)

    text = tmp_path / "notes.txt"
    text.write_text("not a face")
    browser.find_element(By.ID, "images").send_keys(str(text))
    [failed] = wait_for_elements(browser, '.result[data-state="error"]')
    error = failed.find_element(By.CSS_SELECTOR, ".error")
    assert error.get_attribute("data-code") == "invalid_image"
    assert "invalid_image: " in error.text and "notes.txt" in error.text


def test_docs_and_the_monitoring_history_render(server, browser, faces, tmp_path):
    base, model_run = server
    log = str(tmp_path / "predictions.db")
    for batch in (faces[:24], faces[24:]):
        for image in batch:
            predict(base, image)
        run_monitor(model_run=model_run, log=log, min_rows=20)

    browser.get(f"{base}/monitoring")
    assert len(wait_for_elements(browser, "#runs tr.run", 2)) == 2
    points = wait_for_elements(browser, "#chart-verdicts svg .mark-symbol.role-mark path", 2)
    assert len(points) == 2  # one per MonitorFlow run
    wait_for_elements(browser, "#chart-scores svg .role-mark path")
    screenshot(browser, "monitoring", tmp_path)

    browser.get(f"{base}/docs")
    documented = json.loads(urllib.request.urlopen(f"{base}/openapi.json").read())
    methods = [m for item in documented["paths"].values() for m in item if m != "parameters"]
    assert len(wait_for_elements(browser, ".opblock", len(methods))) == len(methods)
    screenshot(browser, "docs", tmp_path)
