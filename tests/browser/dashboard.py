#!/usr/bin/env python3
"""The dashboard in a real browser: Debian's headless Chromium, driven over
WebDriver (chromedriver) with Selenium, against the real `tswatch serve`.

usage: tests/browser/dashboard.py BINARY [--screenshot PATH]

Checks: the page loads with no console errors; every channel's chart has
points, its baseline band and the anomalous rows marked; a file processed
while the page is open appears without a reload; the stream selector
switches streams. Saves a screenshot (default target/dashboard.png).
Then the API page, /docs: it lists every path and method of /openapi.json
with an example for every JSON response, fits a phone screen, and logs no
console errors.
Binds 127.0.0.1 only; stops every process it started, also on failure.
"""

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drop(data: Path, name: str, text: str):
    """Write, then rename into raw/, as a careful producer does."""
    dest = data / "raw" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = data / (".part-" + name.replace("/", "_"))
    tmp.write_text(text)
    tmp.rename(dest)


def batch(start_min: int, rows: int, spike_at=None, phase=0.0) -> str:
    """Two channels with a daily-ish wave and a little noise; one spike."""
    out = ["timestamp,temperature,humidity"]
    for i in range(rows):
        m = start_min + i
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1767225600 + 60 * m))
        temp = 20 + 3 * math.sin(m / 90 + phase) + 0.3 * math.sin(m * 7.3)
        hum = 55 + 5 * math.cos(m / 120) + 0.5 * math.sin(m * 3.1)
        if spike_at == i:
            temp += 40
        out.append(f"{t},{temp:.3f},{hum:.3f}")
    return "\n".join(out) + "\n"


def wait(what, timeout, fn, interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the page may be mid-render
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def check_docs(driver, base, screenshot):
    """/docs lists every operation of /openapi.json, each with its responses
    and an example of every JSON body, on a laptop and a phone screen."""
    doc = json.load(urllib.request.urlopen(base + "/openapi.json"))
    methods = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
    wanted = sorted((p, m) for p, item in doc["paths"].items() for m in item if m in methods)
    assert len(wanted) >= 11, wanted
    driver.set_window_size(1280, 1800)
    driver.get(base + "/docs")
    wait("the API page rendered", 20,
         lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-operations"))
    shown = sorted((s.get_attribute("data-path"), s.get_attribute("data-method"))
                   for s in driver.find_elements(By.CSS_SELECTOR, "section.op"))
    assert shown == wanted, f"/docs shows {shown}, the document has {wanted}"
    for path, method in wanted:
        sec = driver.find_element(By.CSS_SELECTOR, f'section.op[data-path="{path}"][data-method="{method}"]')
        assert path in sec.text and sec.find_element(By.CSS_SELECTOR, ".method").text.lower() == method
        statuses = sorted(r.get_attribute("data-status") for r in sec.find_elements(By.CSS_SELECTOR, ".resp"))
        assert statuses == sorted(doc["paths"][path][method]["responses"]), (path, statuses)
        for r in doc["paths"][path][method]["responses"].values():
            if "application/json" in r.get("content", {}):
                examples = sec.find_elements(By.CSS_SELECTOR, "pre.example")
                assert examples and all(json.loads(e.get_attribute("textContent")) is not None
                                        for e in examples), f"{method} {path}: no example"
    nav = driver.find_element(By.ID, "nav").text
    assert all(p in nav for p, _ in wanted), nav
    limit = driver.find_element(By.CSS_SELECTOR, 'section.op[data-path="/anomalies/recent"]').text
    assert "limit" in limit and "x-tswatch-limit-clamped" in limit, limit
    driver.save_screenshot(screenshot)
    driver.set_window_size(390, 844)
    time.sleep(0.5)
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
    assert overflow <= 1, f"/docs is {overflow}px wider than a phone screen"
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"console errors on /docs: {errors}"
    print(f"docs: ok ({len(wanted)} operations, screenshot {screenshot})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--screenshot", default="target/dashboard.png")
    ap.add_argument("--phone-screenshot")
    ap.add_argument("--docs-screenshot", default="target/docs.png")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tswatch-browser-"))
    data = work / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = []
    driver = None
    try:
        log = open(work / "tswatch.log", "w")
        (work / "none.toml").write_text("")
        procs.append(subprocess.Popen(
            [args.binary, "serve", "--data-dir", str(data), "--bind", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "TSWATCH_CONFIG": str(work / "none.toml")}))
        wait("tswatch /health", 30, lambda: urllib.request.urlopen(base + "/health", timeout=2).status == 200)

        # Two streams: the default one with a spike, and "north".
        for k in range(3):
            drop(data, f"site_{k}.csv", batch(k * 200, 200, spike_at=150 if k == 2 else None))
        drop(data, "north/site_0.csv", batch(0, 300, phase=1.0))
        drop(data, "broken.csv", "timestamp,temperature\n2026-01-01T00:00:00,1,2\n")
        wait("four files processed", 60, lambda: json.load(
            urllib.request.urlopen(base + "/anomalies/summary")).get("files_processed", 0) >= 4
            and (data / "processed" / "broken_error.json").exists())

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", f"--user-data-dir={work / 'chromium'}", "--window-size=1280,1800"]:
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER, log_output=str(work / "chromedriver.log")),
                                  options=opts)
        driver.get(base + "/#stream=default")
        wait("the first refresh", 20, lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-refreshes"))
        # A marker that a reload would wipe.
        driver.execute_script("window.__noReload = 42;")

        charts = wait("two channel charts with points", 20, lambda: [
            c for c in driver.find_elements(By.CSS_SELECTOR, "#channels .chart")
            if int(c.get_attribute("data-points") or 0) > 0])
        names = sorted(c.get_attribute("data-channel") for c in charts)
        assert names == ["humidity", "temperature"], names
        for c in charts:
            assert c.find_elements(By.CSS_SELECTOR, "polyline.values"), "no value line"
            assert c.find_elements(By.CSS_SELECTOR, "polygon.band"), "no baseline band"
        temp = next(c for c in charts if c.get_attribute("data-channel") == "temperature")
        assert temp.find_elements(By.CSS_SELECTOR, "circle.anomaly"), "the spike is not marked"
        rows = driver.find_elements(By.CSS_SELECTOR, "#anomalies tbody tr")
        assert any("temperature" in r.text for r in rows), [r.text for r in rows]
        assert driver.find_elements(By.CSS_SELECTOR, "#files-chart rect.file-bar"), "no files chart"
        refused = driver.find_element(By.ID, "errors").text
        assert "raw/broken.csv" in refused and "line 2" in refused, refused

        # A new file shows up without a reload.
        drop(data, "site_3.csv", batch(600, 200))
        wait("the new file on the page", 30,
             lambda: "raw/site_3.csv" in driver.find_element(By.ID, "files").text)
        assert driver.execute_script("return window.__noReload;") == 42, "the page reloaded"

        driver.save_screenshot(args.screenshot)

        # The stream selector.
        Select(driver.find_element(By.ID, "stream")).select_by_value("north")
        wait("stream north's files", 20, lambda: "raw/north/site_0.csv" in driver.find_element(By.ID, "files").text
             and "raw/site_3.csv" not in driver.find_element(By.ID, "files").text)
        assert driver.execute_script("return location.hash;") == "#stream=north"
        assert driver.execute_script("return window.__noReload;") == 42, "the page reloaded"

        # On a phone: nothing wider than the screen (wide tables scroll inside their box).
        driver.set_window_size(390, 844)
        time.sleep(0.5)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        assert overflow <= 1, f"the page is {overflow}px wider than a phone screen"
        if args.phone_screenshot:
            driver.save_screenshot(args.phone_screenshot)

        status = driver.find_element(By.ID, "status").text
        assert status.startswith("updated"), f"the last refresh failed: {status}"
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"console errors: {errors}"
        print(f"dashboard: ok (charts {names}, screenshot {args.screenshot})")

        check_docs(driver, base, args.docs_screenshot)
    except BaseException:
        print(f"dashboard test failed; logs in {work}", file=sys.stderr)
        for f in ["tswatch.log", "chromedriver.log"]:
            p = work / f
            if p.exists():
                print(f"--- {f} (tail)\n" + "".join(p.read_text(errors="replace").splitlines(True)[-30:]), file=sys.stderr)
        raise
    finally:
        if driver is not None:
            driver.quit()
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
