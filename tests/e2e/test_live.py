"""Lecture mode in a real browser: ``testbed run --live`` on a short real run (lab 5's
load, about 25 s), its page loaded in headless Chromium, seen to update while the run
goes and to show the verdict when it ends; then the server is gone and its port free.
Also through the CLI: a port in use refused before anything starts, and Ctrl-C mid-run
stopping the page with the run.
The screenshot it takes is the one kept in docs/img/live.png (copied from the test's
folder, see the test's output)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "labs" / "05-linux-3.6" / "gorman.yaml"     # completes in ~25 s
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# what Chromium needs as root in a container, and nothing that reaches the network
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1150"]


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)
    return got


def start_live_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """``testbed run SCENARIO --live`` on a free port, its output in a file."""
    log = tmp_path / "testbed.out"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", str(SCENARIO), "--out",
                              str(tmp_path / "run"), "--live", "--live-port", "0"],
                             stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    return p, log


def live_url(log: Path) -> re.Match:
    """The page's URL as the run printed it (group 1) and its port (group 2)."""
    return wait_for(lambda: re.search(r"live: (http://127\.0\.0\.1:(\d+)/) ", log.read_text()),
                    30, "the URL to be printed")


def browser(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the test extra) "
                                    "is not installed: scripts/setup.sh installs it")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromium-driver are not "
                    "installed (scripts/setup.sh installs them)")
def test_the_live_page_updates_and_shows_the_verdict(tmp_path: Path) -> None:
    driver = browser(tmp_path / "profile")     # first: the run's samples last about 10 s
    p, log = start_live_run(tmp_path)
    try:
        url = live_url(log)
        driver.set_page_load_timeout(20)
        driver.get(url.group(1))
        text = lambda id_: driver.find_element("id", id_).text   # noqa: E731
        first = wait_for(lambda: text("v-t") if text("v-t") != "-" else None, 60,
                         "the first sample on the page")
        second = wait_for(lambda: text("v-t") if text("v-t") != first else None, 20,
                          "the page to update")
        assert float(second.split()[0]) > float(first.split()[0])
        assert text("v-free").endswith(" MiB")
        verdict = wait_for(lambda: text("verdict") or None, 120, "the verdict on the page")
        assert verdict == "verdict: completed (expected completed)"
        assert text("lines").startswith("completed in ")
        assert text("title") == "lab5-gorman (gorman-3.6)"
        driver.save_screenshot(str(tmp_path / "live.png"))
        print(f"screenshot: {tmp_path / 'live.png'}")
        assert p.wait(timeout=60) == 0, log.read_text()
        state = wait_for(lambda: "server has stopped" in text("state") and text("state"), 10,
                         "the page to see the server stop")
        assert state == "the run is over; the server has stopped"
    finally:
        driver.quit()
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=60)
    with socket.socket() as s:                  # the port is released
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(url.group(2))))
    assert (tmp_path / "live.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["run", "baseline"],
                                  ["compare", "baseline", "--policies", "none"]])
def test_a_port_in_use_is_one_line_and_starts_nothing(tmp_path: Path, argv: list[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "testbed.cli", *argv, "--out",
                            str(tmp_path / "out"), "--live", "--live-port", str(port)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"--live-port {port}: port {port} on 127.0.0.1 is in use" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_ctrl_c_stops_the_page_with_the_run_and_frees_its_port(tmp_path: Path) -> None:
    p, log = start_live_run(tmp_path)
    try:
        url = live_url(log)

        def rows() -> int:
            with urllib.request.urlopen(url.group(1) + "data", timeout=5) as r:
                return len(json.loads(r.read())["rows"])
        wait_for(lambda: rows() >= 10, 60, "1 s of samples on the page")
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=90) == 130, log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
    with pytest.raises(OSError):
        urllib.request.urlopen(url.group(1), timeout=5)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(url.group(2))))
