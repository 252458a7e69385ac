"""Browser fixtures: Debian's Chromium (installed here if missing) driven by
Playwright for Python, and the demo market with activity."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts"


def _install_chromium() -> None:
    """apt-get install chromium (needs root and the Debian mirror); fail saying what to do if it cannot."""
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail(f"{CHROMIUM} is missing and there is no apt-get to install it: install Debian's chromium package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium"]):
        try:
            subprocess.run(command, check=True, capture_output=True, env=env, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, PermissionError) as exc:
            output = getattr(exc, "stderr", b"") or b""
            pytest.fail(
                f"{CHROMIUM} is missing and `{' '.join(command)}` failed ({exc}); run it as root with access to "
                f"the Debian mirror. {output.decode(errors='replace')[-600:]}"
            )
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing")


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        _install_chromium()
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright for Python: pip install -r requirements.txt")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def artefacts() -> Path:
    ARTEFACTS.mkdir(exist_ok=True)
    return ARTEFACTS


@pytest.fixture
def demo_market(transactional_db: None) -> None:
    """The demo market, programmes and activity, as ``bin/run`` users would see them."""
    for command in ("load_demo_market", "load_demo_vouchers", "load_demo_activity"):
        call_command(command, stdout=io.StringIO())
