"""bigmodel report and compare on real runs; the report opened in headless Chromium, as a user opens it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigmodel.cli import main
from conftest import TEXT_ARGS, write_reviews

# One worker runs them all: one browser (conftest's `browser`), and each run trained once.
pytestmark = pytest.mark.xdist_group("chromium")
# A transformer trained two epochs is right about three texts in four: mistakes to show.
TEXT_RUN = ["model.name=transformer", "model.dim=32", "model.heads=2", "model.layers=1", "train.epochs=2"]
LM_RUN = [
    "data.name=rotten-tomatoes", "data.objective=clm", "data.tokenizer=bpe", "data.limit=200",
    "data.max_length=24", "data.vocab_size=300", "model.name=gpt", "model.hidden_size=16",
    "model.layers=1", "model.heads=2", "train.epochs=2", "train.batch_size=32", "train.monitor=val/loss",
    "train.progress=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    write_reviews(root / "reviews.csv")
    out = root / "reviews-run"
    assert main(["train", f"data.path={root / 'reviews.csv'}", *TEXT_ARGS, *TEXT_RUN, f"--out={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "gpt"
    assert main(["pretrain", *LM_RUN, f"--out={out}"]) == 0
    return out


def open_page(browser, page: Path) -> None:
    """Load the page; fail on any console error, any image that did not decode, anything fetched."""
    browser.get(page.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    broken = browser.execute_script(
        "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)"
    )
    assert broken == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def assert_drawn(png: bytes, colours: int = 64) -> np.ndarray:
    """A figure, not a blank or a broken-image box: many distinct colours and real contrast."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= colours
    assert pixels.std() > 20
    return pixels


@pytest.mark.slow
@pytest.mark.parametrize("which", ["digits_run", "text_run"])
def test_report_renders_in_chromium(which: str, request, browser, tmp_path: Path, capsys):
    from selenium.webdriver.common.by import By

    run = request.getfixturevalue(which)
    report = json.loads((run / "report.json").read_text())
    assert main(["report", str(run)]) == 0
    page = run / "report.html"
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {page}"
    open_page(browser, page)

    facts = {
        e.find_element(By.TAG_NAME, "dt").text.lower(): e.find_element(By.TAG_NAME, "dd").text
        for e in browser.find_elements(By.CSS_SELECTOR, ".fact")
    }
    # recomputed from the best checkpoint, it agrees with what training reported
    assert facts["test accuracy"] == f"{report['test']['accuracy']:.4f}"
    assert facts["parameters"] == f"{report['params']:,}"
    assert re.fullmatch(r"0\.\d{4}", facts["test ece"])

    for name in ("curves", "confusion", "calibration"):
        element = browser.find_element(By.CSS_SELECTOR, f"img.{name}")
        shot = element.screenshot_as_png
        assert_drawn(shot, colours=200)
        if name == "confusion":  # laid out at its own size, neither squeezed nor stretched
            width, height = (int(element.get_attribute(a)) for a in ("width", "height"))
            assert element.size == {"width": width, "height": height}
            # ±1 pixel: the screenshot's box is rounded from a fractional position on the page
            shot_width, shot_height = Image.open(io.BytesIO(shot)).size
            assert abs(shot_width - width) <= 1 and abs(shot_height - height) <= 1

    wrong = round(report["test"]["count"] * (1 - report["test"]["accuracy"]))
    cards = browser.find_elements(By.CSS_SELECTOR, ".mistakes figure.card")
    assert len(cards) == min(8, wrong) > 0
    for card in cards:
        if which == "digits_run":
            assert_drawn(card.find_element(By.TAG_NAME, "img").screenshot_as_png, colours=100)
        else:  # the text, each token on a background of its attribution's colour
            spans = card.find_elements(By.CSS_SELECTOR, "span[title]")
            assert len(spans) > 3
            assert any("rgba" in s.get_attribute("style") for s in spans)
        assert "predicted" in card.find_element(By.TAG_NAME, "figcaption").text

    height = browser.execute_script("return document.documentElement.scrollHeight")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280  # no sideways scroll
    browser.set_window_size(1280, height)
    try:
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        pixels = assert_drawn(shot.read_bytes(), colours=500)
        assert pixels.shape[0] >= 2000  # header, config, curves, metrics, calibration, mistakes, size
    finally:
        browser.set_window_size(1280, 1400)


@pytest.mark.slow
def test_compare_tabulates_report_json_and_overlays_curves(
    digits_run: Path, text_run: Path, lm_run: Path, browser, in_tmp: Path, capsys
):
    runs = [digits_run, text_run, lm_run]
    assert main(["compare", *map(str, runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["digits", "reviews-run", "gpt"]
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in lines[1:] if line)}
    reports = [json.loads((r / "report.json").read_text()) for r in runs]
    assert rows["params"] == [f"{r['params']:,}" for r in reports]
    assert rows["best epoch"] == [str(r["best_epoch"]) for r in reports]
    assert rows["test accuracy"] == [f"{r['test']['accuracy']:.4f}" for r in reports]
    assert rows["test F1 (macro)"] == [f"{r['test']['f1_macro']:.4f}" for r in reports[:2]] + ["—"]  # an LM
    assert rows["samples/s"] == [f"{r['samples_per_s_median']:,.0f}" for r in reports]

    page = in_tmp / "compare.html"
    open_page(browser, page)
    cells = [td.text for td in browser.find_elements("css selector", "table td")]
    assert f"{reports[0]['test']['accuracy']:.4f}" in cells
    curves = browser.find_element("css selector", "img.curves")
    src = curves.get_attribute("src")
    pixels = assert_drawn(base64.b64decode(src.removeprefix("data:image/png;base64,")), colours=200)
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):  # matplotlib's first three: one per run
        assert (np.abs(pixels.astype(int) - colour).sum(axis=2) < 30).sum() > 200

    twin = in_tmp / "copy" / "digits"
    shutil.copytree(digits_run, twin)
    assert main(["compare", str(digits_run), str(twin), "-o", "twins.html"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == [str(digits_run), str(twin)]  # same name: paths
    assert (in_tmp / "twins.html").is_file()


def test_lm_report_has_curves_and_size_only(lm_run: Path, tmp_path: Path):
    from bigmodel.evaluation.report import build_report

    page = build_report(lm_run, tmp_path / "lm.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["Config", "Learning curves", "Model size and compute"]
    assert page.count("<img") == 1  # the curves
    assert "test perplexity" in page


def test_what_is_not_a_run_is_a_one_line_error(digits_run: Path, tmp_path: Path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    for argv in (["report", str(tmp_path)], ["compare", str(digits_run), str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path} is not a bigmodel run directory") and err.count("\n") == 1
    assert main(["compare", str(digits_run)]) == 2
    assert "at least two runs" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written
