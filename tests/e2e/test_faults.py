"""Faults injected into a running platform: PostgreSQL crashed and restarted,
Redis restarted (losing every queued message), while the API server, a
scheduling worker with beat and two provider agents run real jobs.

The platform runs on a PostgreSQL server and a Redis server of the test's
own (``initdb`` in a temporary directory, ``redis-server`` without
persistence, both on free loopback ports), so the fault harms nobody else;
the test's own database connection is pointed at that server while it runs.

After each fault: every job the API accepted reaches success (none lost,
none stuck: what a lost message or callback left behind, the beat's repair
sweep moves on), every usage sample is charged exactly once, every hold is
closed, no offer is overbooked (``check_capacity``) and the ledger is
balanced (``check_ledger``)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import InterfaceError, OperationalError, connection
from django.db.models import Sum
from rest_framework.authtoken.models import Token

from billing import services as billing
from billing.models import AccountKind, Charge, Hold, UsageSample
from scheduler.execution import agent_create
from scheduler.models import HOLDING_LEASE_STATES, Job, Lease
from tests import factories
from tests.conftest import REQUIRE_SERVICES
from tests.e2e.conftest import BIN, Platform, _free_port, launch, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

FUNDS = Decimal("1000000.00")
PRICE = Decimal("50.0000")  # per NCU-hour: a few seconds of usage cost whole fen
DATABASE = "cx_faults"
DEADLINE = 180  # seconds for every accepted job to finish after a fault
SHORT_JOB = [
    "python3",
    "-c",
    "import time\nprint('CX-PROGRESS 10 started', flush=True)\ntime.sleep(3)\n"
    "print('CX-PROGRESS 100 done', flush=True)",
]


def _missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


# --- servers of our own ----------------------------------------------------------------------------------------------


@dataclass
class OwnPostgres:
    """A throwaway PostgreSQL cluster on a loopback port (run as the
    ``postgres`` user when we are root: the server refuses to run as root)."""

    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *command: str) -> None:
        argv = [str(self.bindir / command[0]), *command[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.data, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"


@dataclass
class OwnRedis:
    """A Redis server without persistence: a restart loses every message."""

    root: Path
    port: int
    process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.root / "redis.log").open("a") as log:
            self.process = subprocess.Popen(command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        wait_for("redis to answer", lambda: _pings(client), timeout=30)
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@dataclass
class Faulty:
    """The platform on servers of our own, and those servers."""

    platform: Platform
    postgres: OwnPostgres
    redis: OwnRedis


@pytest.fixture
def faulty(django_db_blocker: Any, tmp_path: Path) -> Iterator[Faulty]:
    bindir = _postgres_bin()
    if bindir is None or shutil.which("redis-server") is None:
        _missing("the fault tests start their own servers: they need initdb/pg_ctl and redis-server")
    root = Path(tempfile.mkdtemp(prefix="cx-faults-"))
    os.chmod(root, 0o755)  # noqa: S103 - the postgres user reaches its data directory through it
    (root / "pg").mkdir()
    (root / "redis").mkdir()
    postgres = OwnPostgres(bindir=bindir, root=root / "pg", port=_free_port())
    own_redis = OwnRedis(root=root / "redis", port=_free_port())
    platform: Platform | None = None
    saved = dict(connection.settings_dict)
    try:
        postgres.init()
        postgres.start()
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        own_redis.start()
        env = {
            **os.environ,
            "DATABASE_URL": postgres.url(DATABASE) + "?application_name=cx-faults",
            "CELERY_BROKER_URL": own_redis.url,
            "CELERY_RESULT_BACKEND": own_redis.url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            "CONN_MAX_AGE": "0",
            "CX_VAR_DIR": str(tmp_path / "var"),
            "CX_HEARTBEAT_TIMEOUT_SECONDS": "60",
            "CX_WATCH_SECONDS": "1",
            "CX_CYCLE_SECONDS": "1",
            "CX_CHARGE_SECONDS": "1",
            "CX_STUCK_SECONDS": "5",
            "CX_REPAIR_SECONDS": "2",
        }
        subprocess.run(
            [str(BIN / "python"), "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            check=True,
            timeout=300,
        )
        with django_db_blocker.unblock():
            connection.close()
            connection.settings_dict.update(
                NAME=DATABASE, USER="postgres", PASSWORD="", HOST="127.0.0.1", PORT=str(postgres.port)
            )
            ContentType.objects.clear_cache()
            try:
                platform = Platform(url="", env=env, logs=tmp_path)
                port = _free_port()
                platform.url = f"http://127.0.0.1:{port}"
                launch(platform, port)
                yield Faulty(platform=platform, postgres=postgres, redis=own_redis)
            finally:
                if platform is not None:
                    platform.stop_all()
                    platform.print_logs()
                connection.close()
                connection.settings_dict.clear()
                connection.settings_dict.update(saved)
                ContentType.objects.clear_cache()
    finally:
        own_redis.kill()
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            postgres.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# --- the story --------------------------------------------------------------------------------------------------------


def fresh(read: Callable[[], Any]) -> Callable[[], Any]:
    """``read`` for polling across a database restart: a broken connection is
    closed (the next query opens a new one) and counts as not yet."""

    def attempt() -> Any:
        try:
            return read()
        except (OperationalError, InterfaceError):
            connection.close()
            return None

    return attempt


@dataclass
class Market:
    buyer: Any
    token: str


def market(platform: Platform) -> Market:
    """Two providers, each with a one-node pool and an agent running it; a buyer with funds."""
    for n in range(2):
        provider = factories.provider()
        site = factories.site(provider)
        pool = factories.pool(provider, site, name=f"one node {n}", node_count=1)
        factories.offer(provider, pool, list_price=PRICE)
        issued = agent_create(user=provider, name=f"node-{n}")
        platform.start_agent(f"agent-{n}", token=issued.token, secret=issued.secret)
    buyer = factories.buyer(funds=FUNDS)
    return Market(buyer=buyer, token=Token.objects.get_or_create(user=buyer)[0].key)


def submit(platform: Platform, market_: Market, name: str) -> tuple[int, int | None]:
    """Submit a short job over HTTP: (status, job id if accepted). A failure to connect counts as 0."""
    body = {
        "name": name,
        "command": SHORT_JOB,
        "software_stack": "cuda",
        "accelerators_per_node": 8,
        "nodes": 1,
        "duration_seconds": 600,
    }
    try:
        status, answer = platform.request("POST", "/api/v1/jobs", token=market_.token, body=json.dumps(body).encode())
    except OSError:
        return 0, None
    return status, json.loads(answer)["id"] if status == 201 else None


def states(job_ids: list[int]) -> dict[int, str]:
    return dict(Job.objects.filter(pk__in=job_ids).values_list("pk", "status"))


def assert_nothing_lost(faulty: Faulty, market_: Market, accepted: list[int]) -> None:
    """Every accepted job succeeds; usage charged once; holds closed; no overbooking; the ledger balances."""
    wait_for(
        f"all {len(accepted)} accepted jobs to succeed",
        fresh(lambda: set(states(accepted).values()) == {"succeeded"}),
        timeout=DEADLINE,
    )
    assert faulty.platform.alive("server") and faulty.platform.alive("worker"), "a platform process died"
    leases = Lease.objects.filter(job_id__in=accepted)
    wait_for(
        "every usage sample charged and every hold closed",
        fresh(
            lambda: (
                not UsageSample.objects.filter(charged=False).exists()
                and not Hold.objects.filter(status="open").exists()
            )
        ),
        timeout=60,
    )
    assert not Lease.objects.filter(status__in=HOLDING_LEASE_STATES).exists()
    for job_id in accepted:
        assert leases.filter(job_id=job_id, status="completed").count() == 1, f"job {job_id} ran more than once"
    samples = UsageSample.objects.filter(lease__job_id__in=accepted)
    assert samples.exists()
    assert Charge.objects.filter(sample__in=samples).count() == samples.count()
    gross = Charge.objects.aggregate(t=Sum("gross"))["t"]
    org = market_.buyer.organisation_id
    assert billing.balance(billing.account_code(org, AccountKind.BUYER_HELD)) == 0
    assert billing.balance(billing.account_code(org, AccountKind.BUYER_AVAILABLE)) == FUNDS - gross
    for command, verdict in (("check_capacity", "No offer is overbooked."), ("check_ledger", "The ledger is sound")):
        out = StringIO()
        call_command(command, stdout=out, stderr=out)  # raises CommandError on any breach
        assert verdict in out.getvalue()


def test_postgresql_crashed_and_restarted_while_jobs_run(faulty: Faulty) -> None:
    platform = faulty.platform
    market_ = market(platform)
    before = [submit(platform, market_, f"before {i}") for i in range(3)]
    assert all(status == 201 for status, _ in before), before
    accepted = [job_id for _, job_id in before]
    wait_for("a job to run", lambda: "running" in states(accepted).values(), timeout=60)

    faulty.postgres.stop("immediate")  # a crash: every connection cut mid-flight, recovery on start
    connection.close()
    during = [submit(platform, market_, f"during {i}") for i in range(2)]
    time.sleep(2)
    faulty.postgres.start()

    assert all(status == 201 or status >= 500 or status == 0 for status, _ in during), during
    accepted += [job_id for status, job_id in during if status == 201]
    after = wait_for("the API to accept a job again", fresh(lambda: _accepted(platform, market_, "after")), timeout=60)
    accepted.append(after)
    status, job_id = submit(platform, market_, "after 1")
    assert status == 201
    accepted.append(job_id)

    # A request cut by the crash may have committed its job all the same: that job must finish too.
    assert set(accepted) <= set(Job.objects.values_list("pk", flat=True))
    assert_nothing_lost(faulty, market_, list(Job.objects.values_list("pk", flat=True)))


def test_redis_restarted_while_jobs_run_loses_no_work(faulty: Faulty) -> None:
    platform = faulty.platform
    market_ = market(platform)
    before = [submit(platform, market_, f"before {i}") for i in range(3)]
    assert all(status == 201 for status, _ in before), before
    accepted = [job_id for _, job_id in before]
    wait_for("a job to run", lambda: "running" in states(accepted).values(), timeout=60)

    sweeps = repair_sweeps(platform)
    faulty.redis.kill()  # every queued and unacknowledged message is gone
    during = [submit(platform, market_, f"during {i}") for i in range(2)]
    assert [status for status, _ in during] == [201, 201], "submissions do not need the broker"
    accepted += [job_id for _, job_id in during]
    time.sleep(2)
    faulty.redis.start()

    status, job_id = submit(platform, market_, "after 0")
    assert status == 201
    accepted.append(job_id)
    assert_nothing_lost(faulty, market_, accepted)
    wait_for("the beat's repair sweep to run again", lambda: repair_sweeps(platform) > sweeps + 1, timeout=30)


def repair_sweeps(platform: Platform) -> int:
    """How many repair sweeps the worker has finished, as its log says."""
    log = (platform.logs / "worker.log").read_text(errors="replace")
    return sum(1 for line in log.splitlines() if "repair_stuck_work[" in line and " succeeded in " in line)


def _accepted(platform: Platform, market_: Market, name: str) -> int | None:
    status, job_id = submit(platform, market_, name)
    return job_id if status == 201 else None
