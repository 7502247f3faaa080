"""The run report renders in headless Chromium (Debian's) and every figure on the page loads."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def render(page: Path, tmp: Path) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (make install installs Debian's chromium as root)")
    cmd = [
        chromium,
        *FLAGS,
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def test_report_of_a_real_run_loads_every_image(tmp_path):
    bin_ = Path(sys.executable).parent / "agentfactory"
    r = subprocess.run(
        [
            str(bin_),
            "run",
            "pipelines/quickstart.yaml",
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            "synth.worlds=1",
            "--set",
            "synth.domains=[retail_orders,bank_accounts]",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    page = tmp_path / "quickstart" / "report.html"
    dom = render(page, tmp_path)
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m, dom[:500]
    loaded, total = map(int, m.groups())
    assert total >= 2 and loaded == total  # the synthesis figure and the timings, at least
    assert "Example trajectories" in dom and "accepted" in dom
