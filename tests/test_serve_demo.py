"""``bigmodel serve``'s demo page (``GET /``) in real headless Chromium, against a real server: a review
typed and submitted from the keyboard, an image uploaded behind a token. The page shows what /predict and
/explain answer, writes no error to the console, and asks nothing of any origin but its own."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from bigmodel.deploy.serve import ServeSettings, create_app, demo_page
from conftest import console_problems, digit_png, requested_urls, served

REVIEW = "the plot was wonderful and the actors brilliant, a moving story"
TOKEN = "demo-s3cret"
WAIT = 30  # seconds, at most, for the page to show an answer


def shown_classes(browser) -> list[tuple[str, float]]:
    items = browser.find_elements(By.CSS_SELECTOR, "#classes li")
    return [(li.get_attribute("data-label"), float(li.get_attribute("data-score"))) for li in items]


def assert_only_its_own_origin(browser, origin: str) -> None:
    """Every request the page made since it was opened went to ``origin`` (the page, /info, /predict,
    /explain); ``data:`` URLs (the favicon, the chosen image, the heat map) are read from the page itself."""
    urls = requested_urls(browser)
    assert any(u.endswith("/predict") for u in urls) and any(u.endswith("/explain") for u in urls), urls
    assert [u for u in urls if not (u.startswith(f"{origin}/") or u.startswith("data:"))] == []
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(u.startswith(f"{origin}/") for u in resources), resources


def open_demo(browser, origin: str) -> None:
    browser.get_log("browser"), browser.get_log("performance")  # what earlier pages left
    browser.get(f"{origin}/")
    assert browser.title == "bigmodel serve"


@pytest.mark.slow
def test_a_typed_review_shows_the_served_classes_and_coloured_tokens(bow_run: Path, browser):
    with served(create_app(bow_run)) as client:
        origin = str(client.base_url).rstrip("/")
        (expected,) = client.post("/predict", json={"inputs": [REVIEW], "top_k": 2}).json()
        (explained,) = client.post("/explain", json={"inputs": [REVIEW], "steps": 32}).json()
        open_demo(browser, origin)
        box = WebDriverWait(browser, WAIT).until(EC.visibility_of_element_located((By.ID, "text")))
        assert browser.find_element(By.CSS_SELECTOR, "label[for=text]").text == "Text to classify"
        assert "2 classes, torch backend, test accuracy" in browser.find_element(By.ID, "about").text
        assert browser.switch_to.active_element == box  # ready to type
        box.send_keys(REVIEW)
        box.send_keys(Keys.CONTROL, Keys.ENTER)  # submitted from the keyboard
        tokens = WebDriverWait(browser, WAIT).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, "#tokens .token") or False
        )

        assert shown_classes(browser) == [(t["label"], t["score"]) for t in expected]
        top = browser.find_element(By.CSS_SELECTOR, "#classes li")
        assert top.find_element(By.CLASS_NAME, "label").text == expected[0]["label"] == "pos"
        assert top.find_element(By.CLASS_NAME, "score").text == f"{expected[0]['score']:.4f}"
        bar = (
            top.find_element(By.CLASS_NAME, "fill").size["width"]
            / top.find_element(By.CLASS_NAME, "bar").size["width"]
        )
        assert bar == pytest.approx(expected[0]["score"], abs=0.02)

        assert [t.text for t in tokens] == [t["token"] for t in explained["tokens"]]
        assert {"wonderful", "brilliant"} <= {t.text for t in tokens}
        peak = max(abs(t["score"]) for t in explained["tokens"])
        for shown, t in zip(tokens, explained["tokens"], strict=True):  # green for, red against; by weight
            colour = shown.value_of_css_property("background-color")
            red, green, blue, alpha = re.fullmatch(
                r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", colour
            ).groups()
            assert (red, green, blue) == (("0", "160", "0") if t["score"] > 0 else ("220", "0", "0")), colour
            assert float(alpha or 1) == pytest.approx(abs(t["score"]) / peak, abs=0.01), colour
        scores = {t["token"]: t["score"] for t in explained["tokens"]}
        assert scores["wonderful"] > 0 and scores["brilliant"] > 0
        assert "Why pos" in browser.find_element(By.ID, "why").text
        assert not browser.find_element(By.ID, "error").is_displayed()

        assert console_problems(browser) == []
        assert_only_its_own_origin(browser, origin)


@pytest.mark.slow
def test_behind_a_token_the_page_asks_for_it_then_classifies_an_uploaded_image(
    digits_run: Path, browser, tmp_path: Path
):
    png, _ = digit_png(tmp_path / "digit.png", 7)
    image = base64.b64encode(png.read_bytes()).decode()
    with served(create_app(digits_run, settings=ServeSettings(token=TOKEN)), TOKEN) as client:
        origin = str(client.base_url).rstrip("/")
        (expected,) = client.post("/predict", json={"inputs": [image], "top_k": 5}).json()
        page = httpx.get(f"{origin}/")  # no token: the page is public, and holds nothing of the run
        assert page.status_code == 200 and page.text == demo_page()[0]
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        open_demo(browser, origin)

        field = WebDriverWait(browser, WAIT).until(EC.visibility_of_element_located((By.ID, "token")))
        assert browser.find_element(By.CSS_SELECTOR, "label[for=token]").text == "Access token"
        assert field.get_attribute("type") == "password"
        field.send_keys("not-the-token", Keys.ENTER)
        error = browser.find_element(By.ID, "error")
        WebDriverWait(browser, WAIT).until(lambda b: "wrong token" in error.text)
        assert error.text.startswith("401: ") and error.get_attribute("role") == "alert"
        assert EC.alert_is_present()(browser) is False  # shown in the page, not in a dialog
        field.clear()
        field.send_keys(TOKEN, Keys.ENTER)

        upload = WebDriverWait(browser, WAIT).until(EC.visibility_of_element_located((By.ID, "image")))
        assert not error.is_displayed() and not field.is_displayed()
        assert "Image to classify" in browser.find_element(By.CSS_SELECTOR, "label[for=image]").text
        upload.send_keys(str(png))
        WebDriverWait(browser, WAIT).until(EC.visibility_of_element_located((By.ID, "preview")))
        browser.find_element(By.CSS_SELECTOR, "#image-form button").click()
        heatmap = WebDriverWait(browser, WAIT).until(EC.visibility_of_element_located((By.ID, "heatmap")))

        assert shown_classes(browser) == [(t["label"], t["score"]) for t in expected]
        assert browser.find_element(By.CSS_SELECTOR, "#classes li .label").text == expected[0]["label"]
        assert (
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap) > 0
        )
        src = heatmap.get_attribute("src")
        drawn = Image.open(io.BytesIO(base64.b64decode(src.removeprefix("data:image/png;base64,"))))
        assert drawn.format == "PNG" and drawn.width > 8
        assert heatmap.get_attribute("alt") == f"Integrated Gradients heat map for {expected[0]['label']}"

        # the two refusals of /info (no token, then a wrong one) are the browser's own log lines
        assert console_problems(browser, allowed=r"status of 401 \(Unauthorized\)") == []
        assert_only_its_own_origin(browser, origin)
