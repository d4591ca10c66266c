"""report.html: self-contained, written with no optional package, and loaded by a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from onnxmp.pipeline import optimize
from tests.conftest import classic

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


class _Marks(HTMLParser):
    """The SVG's marks by class, with their position and hover text (parsed independently of onnxmp)."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[dict] = []
        self.tags: set[str] = set()
        self.links: list[str] = []
        self._open: dict | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        self.links += [attrs[a] for a in ("src", "href") if a in attrs]
        if "point" in attrs.get("class", "").split():
            y = float(attrs["cy"]) if "cy" in attrs else (float(attrs["y"]) + float(attrs["height"]) / 2 if "y" in attrs
                                                          else float(attrs["points"].split()[1].split(",")[1]))
            self._open = {"class": attrs["class"].split()[1], "y": y, "title": ""}
            self.marks.append(self._open)
        self._in_title = tag == "title" and self._open is not None

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title, self._open = False, None

    def handle_data(self, data):
        if self._in_title:
            self._open["title"] += data


def _run_with_report(model: Path, folder: Path, **options) -> dict:
    optimize(str(model), str(folder / "out.onnx"), classic(report_dir=str(folder / "rep"), **options))
    return json.loads((folder / "rep" / "report.json").read_text())


def _expected_marks(record: dict) -> dict[str, int]:
    curve = record["pareto_curve"]
    return {"estimated": len(curve), "measured": sum(p["measured_sqnr_db"] is not None for p in curve),
            "uniform": len(record["uniform"]), "chosen": 1}


def test_report_html_needs_no_optional_package(cnn_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if it were not installed
    record = _run_with_report(cnn_path, tmp_path, calib=str(tmp_path / "calib.npz"))
    rep = tmp_path / "rep"
    assert not (rep / "pareto.png").exists() and (rep / "summary.md").exists()
    assert record["files"]["output_bytes"] == (tmp_path / "out.onnx").stat().st_size
    assert record["files"]["input_bytes"] == cnn_path.stat().st_size
    page = (rep / "report.html").read_text(encoding="utf-8")
    parser = _Marks()
    parser.feed(page)
    assert "script" not in parser.tags and parser.links == []  # nothing to fetch, nothing to run
    counts = {cls: sum(m["class"] == cls for m in parser.marks) for cls in ("estimated", "measured", "uniform", "chosen")}
    assert counts == _expected_marks(record)
    # higher SQNR is drawn higher: the measured marks' heights rank as their values do
    measured = [p["measured_sqnr_db"] for p in record["pareto_curve"] if p["measured_sqnr_db"] is not None]
    heights = [-m["y"] for m in parser.marks if m["class"] == "measured"]
    assert sorted(range(len(measured)), key=measured.__getitem__) == sorted(range(len(heights)), key=heights.__getitem__)
    chosen = next(m for m in parser.marks if m["class"] == "chosen")
    mix = ", ".join(f"{n}× {c}" for c, n in record["chosen"]["mix"].items())
    assert mix in chosen["title"] and f"{record['chosen']['relative_cost']:.3f}" in chosen["title"]
    # every group's row, and every stage's time
    for group in record["groups"]:
        assert re.search(rf"<td>{group['group']}</td><td>[^<]*</td><td>{group['candidate']}</td>", page)
    assert all(f"<td>{stage}</td>" in page for stage in record["timings_s"])


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium here (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1300"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_report_loads_in_a_real_browser(tmp_path):
    """The shipped digits model's report in headless Chromium: no console message, every mark
    drawn with its hover text. The screenshot is the README's picture: set ONNXMP_SCREENSHOT to a
    path to keep it (the README names the command)."""
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        record = _run_with_report(DIGITS, tmp_path)
        driver.get((tmp_path / "rep" / "report.html").as_uri())
        assert driver.title == "onnxmp: digits_cnn.onnx"
        assert driver.get_log("browser") == []
        marks = driver.find_elements(By.CSS_SELECTOR, "svg .point")
        classes = [m.get_attribute("class").split()[1] for m in marks]
        assert {c: classes.count(c) for c in set(classes)} == _expected_marks(record)
        assert all(m.is_displayed() and m.size["width"] > 0 for m in marks)
        titles = [m.find_element(By.TAG_NAME, "title").get_attribute("textContent") for m in marks]
        assert all("cost" in t for t in titles)
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
        if os.environ.get("ONNXMP_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["ONNXMP_SCREENSHOT"])
    finally:
        driver.quit()
