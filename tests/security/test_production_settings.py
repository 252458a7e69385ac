"""Production settings come from the environment only: with CX_ENV=production
the deployment checks pass, and the service refuses to start without its
secret key, without allowed hosts, or with DEBUG on. The first run (no
environment at all) keeps working with development defaults."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``manage.py`` in a fresh process with only ``env`` (and PATH) set."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CX_VAR_DIR": str(tmp_path / "var")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def production() -> dict[str, str]:
    return {
        "CX_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "cx.example.cn",
        "DATABASE_URL": "postgres://cx@db.internal:5432/cx",
        "CELERY_BROKER_URL": "redis://redis.internal:6379/0",
    }


def test_the_deployment_checks_pass_with_production_settings(tmp_path, production):
    done = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **production)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_the_deployment_checks_fail_on_the_development_defaults(tmp_path):
    done = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in done.stderr


def test_production_refuses_to_start_without_a_secret_key(tmp_path, production):
    del production["DJANGO_SECRET_KEY"]
    done = manage(tmp_path, "check", **production)
    assert done.returncode != 0
    assert "CX_ENV=production needs DJANGO_SECRET_KEY" in done.stderr


def test_production_refuses_debug_and_missing_allowed_hosts(tmp_path, production):
    debug = manage(tmp_path, "check", **{**production, "DEBUG": "1"})
    assert debug.returncode != 0 and "refuses DEBUG" in debug.stderr
    del production["ALLOWED_HOSTS"]
    hosts = manage(tmp_path, "check", **production)
    assert hosts.returncode != 0 and "needs ALLOWED_HOSTS" in hosts.stderr


def test_production_settings_are_those_of_an_https_service_behind_a_proxy(tmp_path, production):
    probe = (
        "from django.conf import settings as s;"
        "print(s.DEBUG, s.SECRET_KEY == {!r}, s.ALLOWED_HOSTS, s.SECURE_PROXY_SSL_HEADER, s.SECURE_SSL_REDIRECT,"
        " s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE,"
        " s.CACHES['default']['BACKEND'].rsplit('.', 1)[1], s.CACHES['default']['LOCATION'],"
        " s.REST_FRAMEWORK['NUM_PROXIES'])"
    ).format(production["DJANGO_SECRET_KEY"])
    done = manage(tmp_path, "shell", "-c", probe, **production)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].split() == [
        "False",
        "True",
        "['cx.example.cn']",
        "('HTTP_X_FORWARDED_PROTO',",
        "'https')",
        "True",
        "31536000",
        "True",
        "True",
        "RedisCache",
        "redis://redis.internal:6379/0",
        "1",
    ]


def test_the_first_run_needs_no_environment(tmp_path):
    done = manage(tmp_path, "check")
    assert done.returncode == 0, done.stderr
    probe = "from django.conf import settings as s; print(s.CACHES['default']['BACKEND'].rsplit('.', 1)[1])"
    cache = manage(tmp_path, "shell", "-c", probe)
    assert cache.stdout.strip().splitlines()[-1] == "FileBasedCache"


@pytest.mark.django_db
def test_the_demo_market_with_its_published_password_is_not_loaded_in_production(settings):
    from django.core.management import CommandError, call_command

    from marketplace.models import User

    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="published password"):
        call_command("load_demo_market")
    assert not User.objects.filter(username="operator").exists()
