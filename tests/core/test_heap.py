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


WORKER_READY = (
    "import json, os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup(); "
    "from config.celery import _settle_heap; _settle_heap(); _settle_heap(); "
    "print(json.dumps(os.getpriority(os.PRIO_PROCESS, 0)))"
)


def test_a_ready_worker_runs_below_the_apis_cpu_priority(tmp_path):
    """Scheduling workers yield the cores to the API's requests when both want them (``CX_WORKER_NICE``)."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "CX_WORKER_NICE": "7"}
    for variable in ("CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"):
        env.pop(variable, None)
    started = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run([sys.executable, "-c", WORKER_READY], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == max(started, 7), "set once, not added per signal"
