"""A server process settles its heap once its code is loaded: what exists then
is frozen out of the garbage collector's walks, and young collections are
spaced out (see :mod:`core.heap`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core import heap

ROOT = Path(__file__).resolve().parents[2]
REPORT = "import gc, json, sys; import config.wsgi; print(json.dumps([gc.get_freeze_count(), gc.get_threshold()]))"


def test_loading_the_wsgi_application_settles_the_heap(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    out = subprocess.run([sys.executable, "-c", REPORT], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    frozen, threshold = json.loads(out.stdout.strip().splitlines()[-1])
    assert frozen > 50_000  # Django, DRF and every view loaded before the freeze
    assert threshold == [heap.YOUNG_THRESHOLD, heap.MIDDLE_THRESHOLD, heap.OLD_THRESHOLD]
