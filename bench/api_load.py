"""The API under an open-loop load of quotes and submissions, on the demo market.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test CELERY_BROKER_URL=redis://127.0.0.1:6379/10 \\
        .venv/bin/python bench/api_load.py

What it does, in order:

1. **Setup (not timed).** Creates a dedicated database (``cx_api_load`` on
   the server of ``DATABASE_URL``; never the database the URL names),
   migrates it, loads the demo market (``load_demo_market``) and the voucher
   programmes (``load_demo_vouchers``) and puts it to work (``load_demo_activity``:
   offers on the pools, jobs running and pending), and registers ``--buyers`` (50)
   buyer organisations through the services, each with a token and a
   wallet topped up with 10,000,000 CNY.
2. **The platform.** gunicorn (``--gunicorn-workers`` 2 processes for the
   machine's 2 cores, ``--gunicorn-threads`` 4 threads each: a request spends
   part of its time waiting for PostgreSQL, and the threads of a process
   share its market snapshot and prepared quote market, which one process
   per thread would each rebuild) and two Celery scheduling workers (one of them running beat),
   on that database and on the Redis database of ``CELERY_BROKER_URL``
   (its ``celery`` queue is purged before and after: give the bench a Redis
   database nobody else uses). All on 127.0.0.1.
3. **Warm-up (not counted).** Every buyer asks one quote, so each gunicorn
   worker has loaded its code and connected.
4. **Load (timed).** ``--rps`` (200) requests per second for ``--seconds``
   (60), **open loop**: arrival times are drawn in advance from a Poisson
   process (exponential gaps, seeded) and each request is sent at its time
   whatever the earlier ones are doing, so a slow server meets a growing
   queue rather than a slower client (no coordinated omission). Latency runs
   from the scheduled arrival to the end of the response. ``--quote-share``
   (0.8) of requests are ``POST /api/v1/quotes``, the rest
   ``POST /api/v1/jobs``; a random buyer and one of a handful of job shapes
   that fit the demo market (one A10 for an hour, 8 × A100 for two, CPU
   cores, an Ascend node …). The generator is asyncio + aiohttp in this
   process, one connection per request in flight, 10 s timeout. When
   ``--max-in-flight`` (256) requests are already waiting, an arrival is
   not sent and counts as an error: past that the server is hopelessly
   behind, and thousands of sockets would only starve the generator itself
   (whose lateness against the schedule is reported).
5. **Afterwards.** ``check_ledger`` and ``check_capacity`` (the overbooking
   check) on the database, their verdicts printed; jobs by state.
6. Processes stopped, database dropped (``--keep`` keeps it).

Errors are responses other than 2xx, timeouts and connection failures;
throttled answers (429) are counted among them and also on their own. The
throttle rates of ``CX_THROTTLE_*`` are set high for the run (the simulated
buyers are the load, not abusers).

The last line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.database import django_setup, drop_database, recreate_database, with_database  # noqa: E402

BIN = Path(sys.executable).parent
DB_NAME = "cx_api_load"
FUNDS = Decimal("10000000.00")
THROTTLE_OFF = "1000000/second"
SHED = -1

# Job shapes the demo market can run (quotes and submissions draw from them).
SHAPES: list[dict[str, Any]] = [
    {"software_stack": "cuda", "device_models": ["nvidia-a10-24gb"], "accelerators_per_node": 1, "hours": 1},
    {"software_stack": "cuda", "accelerators_per_node": 8, "hours": 2},
    {"software_stack": "cuda", "accelerators_per_node": 4, "hours": 3, "objective": "greenest"},
    {"software_stack": "cuda", "accelerator_milli": 500, "hours": 1},
    {"software_stack": "cann", "accelerators_per_node": 8, "hours": 4, "domestic_only": True},
    {"software_stack": "cpu", "cpu_architecture": "x86_64", "cpu_milli_per_node": 32000, "hours": 1},
    {"software_stack": "cuda", "accelerators_per_node": 8, "nodes": 2, "hours": 6, "objective": "earliest"},
    {"software_stack": "cuda", "accelerators_per_node": 2, "hours": 1, "allowed_hubs": ["GZ", "NX", "NMG"]},
]


def job_body(rng: random.Random, n: int) -> dict[str, Any]:
    shape = dict(rng.choice(SHAPES))
    hours = shape.pop("hours") * rng.choice((0.5, 1, 1.5, 2, 3))
    return {
        "name": f"load job {n}",
        "image": "registry.example/train:1",
        "command": ["python", "train.py"],
        "duration_seconds": int(hours * 3600),
        "nodes": shape.pop("nodes", 1),
        **shape,
    }


# --- the database and the market ---------------------------------------------------------------------------------


def make_market(buyers: int) -> tuple[list[str], dict[str, Any]]:
    """Migrate, load the demo market and vouchers, register the buyers; their tokens."""
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from billing import services as billing
    from marketplace import services
    from marketplace.domain.credit_code import with_check_character
    from marketplace.domain.geography import CITIES
    from scheduler.models import Offer

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    call_command("load_demo_market", verbosity=0)
    call_command("load_demo_vouchers", verbosity=0)
    call_command("load_demo_activity", verbosity=0)
    cities = sorted(CITIES)
    tokens = []
    for i in range(buyers):
        _org, user = services.organisation_register(
            name=f"Load Test Buyer {i:03d} Co., Ltd.",
            credit_code=with_check_character(f"91310115MA{9_000_000 + i:07d}"),
            category="enterprise",
            is_sme=i % 2 == 0,
            city=cities[i % len(cities)],
            username=f"load-buyer-{i:03d}",
            password="load-pass-2026",  # noqa: S106 - a throwaway database
        )
        billing.wallet_top_up(organisation=user.organisation, amount=FUNDS, reference=f"load-{i}", actor=user)
        tokens.append(Token.objects.get_or_create(user=user)[0].key)
    market = {"offers": Offer.objects.filter(status="active").count(), "seconds": time.perf_counter() - started}
    return tokens, market


def checks_after() -> dict[str, Any]:
    """``check_ledger`` and ``check_capacity`` as the operator runs them, and jobs by state."""
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.db import connections
    from django.db.models import Count

    from scheduler.models import Job

    connections.close_all()
    results: dict[str, Any] = {}
    for command in ("check_ledger", "check_capacity"):
        out = StringIO()
        try:
            call_command(command, stdout=out, stderr=out)
            results[command] = {"ok": True, "output": out.getvalue().strip()}
        except CommandError as error:
            results[command] = {"ok": False, "output": (out.getvalue() + str(error)).strip()}
    results["jobs"] = dict(Job.objects.values_list("status").annotate(n=Count("id")).order_by("status"))
    return results


# --- the platform ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Platform:
    url: str
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.names.append(name)
        with (self.logs / f"{name}.log").open("w") as log:
            self.processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each process and its children (gunicorn's workers)."""
        pairs = zip(self.names, self.processes, strict=True)
        return {name: round(_tree_cpu(process.pid), 1) for name, process in pairs}

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tree_cpu(pid: int) -> float:
    """user + system CPU seconds of a process and its living descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _tree_cpu(int(child))
    except (OSError, ValueError, IndexError):
        pass
    return total


def start_platform(
    db_url: str, broker: str, *, gunicorn_workers: int, gunicorn_threads: int = 1, logs: Path
) -> Platform:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CONN_MAX_AGE": "60",
        "CX_VAR_DIR": str(logs),
        **{f"CX_THROTTLE_{scope}": THROTTLE_OFF for scope in ("QUOTE", "SUBMIT", "LOGIN", "USER", "ANON", "BUYER")},
    }
    platform = Platform(url=f"http://127.0.0.1:{port}", logs=logs)
    platform.spawn(
        "gunicorn",
        [
            str(BIN / "gunicorn"),
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(gunicorn_workers),
            "--threads",
            str(gunicorn_threads),
            "--backlog",
            "4096",
            "--timeout",
            "60",
        ],
        env,
    )
    for index in range(2):
        command = [str(BIN / "celery"), "-A", "config", "worker", "--pool", "solo", "-Q", "celery"]
        command += ["-n", f"api-load-{index}@%h", "--without-gossip", "--without-mingle", "--loglevel", "warning"]
        if index == 0:
            command += ["--beat", "--schedule", str(logs / "beat-schedule")]
        platform.spawn(f"worker-{index}", command, env)
    return platform


def purge_queue(broker: str) -> None:
    import redis

    client = redis.Redis.from_url(broker)
    client.delete("celery", "unacked", "unacked_index")
    client.close()


def wait_healthy(url: str, timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health/?format=json", timeout=5) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the API server did not answer {url}/health/ within {timeout:.0f} s")


# --- the load ----------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    status: int  # 0: timeout or connection failure; SHED: not sent, too many in flight
    ms: float
    lag_ms: float  # how late the request left against its scheduled arrival


async def _send(session: Any, url: str, kind: str, token: str, body: dict, due: float) -> Outcome:
    import aiohttp

    loop = asyncio.get_running_loop()
    lag = (loop.time() - due) * 1000
    path = "/api/v1/quotes" if kind == "quote" else "/api/v1/jobs"
    try:
        async with session.post(url + path, json=body, headers={"Authorization": f"Token {token}"}) as answer:
            await answer.read()
            status = answer.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        status = 0
    return Outcome(kind, status, (loop.time() - due) * 1000, lag)


async def _drive(
    url: str,
    tokens: list[str],
    *,
    rps: float,
    seconds: float,
    quote_share: float,
    seed: int,
    warm_up: bool,
    max_in_flight: int = 10_000,
) -> tuple[list[Outcome], float]:
    import aiohttp

    rng = random.Random(seed)
    arrivals: list[tuple[float, str, str, dict]] = []
    if warm_up:
        arrivals = [(i / 20, "quote", token, job_body(rng, i)) for i, token in enumerate(tokens)]
    else:
        at = rng.expovariate(rps)
        while at < seconds:
            kind = "quote" if rng.random() < quote_share else "submit"
            arrivals.append((at, kind, rng.choice(tokens), job_body(rng, len(arrivals))))
            at += rng.expovariate(rps)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=10)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time() + 0.2
        tasks = []
        shed: list[Outcome] = []
        in_flight = 0

        async def tracked(kind: str, token: str, body: dict, due: float) -> Outcome:
            nonlocal in_flight
            try:
                return await _send(session, url, kind, token, body, due)
            finally:
                in_flight -= 1

        for offset, kind, token, body in arrivals:
            due = start + offset
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:  # the server is this far behind: count it failed, keep the schedule
                shed.append(Outcome(kind, SHED, 0.0, (loop.time() - due) * 1000))
                continue
            in_flight += 1
            tasks.append(asyncio.create_task(tracked(kind, token, body, due)))
        outcomes = [*await asyncio.gather(*tasks), *shed]
        wall = loop.time() - start
    return list(outcomes), wall


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=float, default=200.0, help="arrival rate, requests per second (200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs (60)")
    parser.add_argument("--buyers", type=int, default=50, help="simulated buyer organisations (50)")
    parser.add_argument("--quote-share", type=float, default=0.8, help="share of requests that are quotes (0.8)")
    parser.add_argument("--gunicorn-workers", type=int, default=2, help="gunicorn worker processes (2)")
    parser.add_argument(
        "--gunicorn-threads", type=int, default=4, help="threads per gunicorn worker (4; 1: sync workers)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=256,
        help="requests in flight at most; an arrival beyond it is not sent and counts as an error (256)",
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--keep", action="store_true", help=f"keep the database {DB_NAME} afterwards")
    args = parser.parse_args(argv)

    server_url = os.environ.get("DATABASE_URL", "")
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not server_url.startswith("postgres") or not broker.startswith("redis://"):
        raise SystemExit("set DATABASE_URL=postgres://… and CELERY_BROKER_URL=redis://…/<a database nobody uses>")
    db_url = with_database(server_url, DB_NAME)
    print(f"API load: {args.rps:g} requests/s for {args.seconds:g} s, {args.quote_share:.0%} quotes, open loop")
    print(f"setup: database {DB_NAME}, demo market and vouchers, {args.buyers} buyers …", flush=True)
    recreate_database(server_url, DB_NAME)
    platform: Platform | None = None
    try:
        django_setup(db_url)
        tokens, market = make_market(args.buyers)
        from django.db import connections

        connections.close_all()
        print(f"  {market['offers']} active offers; setup took {market['seconds']:.1f} s")
        purge_queue(broker)
        logs = Path(tempfile.mkdtemp(prefix="cx-api-load-"))
        platform = start_platform(
            db_url, broker, gunicorn_workers=args.gunicorn_workers, gunicorn_threads=args.gunicorn_threads, logs=logs
        )
        wait_healthy(platform.url)
        print(
            f"platform: gunicorn × {args.gunicorn_workers} workers × {args.gunicorn_threads} threads, "
            f"2 Celery workers (one with beat); logs in {logs}"
        )
        warm, _ = asyncio.run(
            _drive(platform.url, tokens, rps=0, seconds=0, quote_share=1, seed=args.seed, warm_up=True)
        )
        warm_errors = [o.status for o in warm if not 200 <= o.status < 300]
        print(f"warm-up: {len(warm)} quotes, {len(warm_errors)} errors {Counter(warm_errors) or ''}")
        load_before = os.getloadavg()
        cpu_before = os.times()
        platform_cpu_before = platform.cpu_seconds()
        print(f"load: {args.seconds:g} s … (load average before {load_before[0]:.2f})", flush=True)
        outcomes, wall = asyncio.run(
            _drive(
                platform.url,
                tokens,
                rps=args.rps,
                seconds=args.seconds,
                quote_share=args.quote_share,
                seed=args.seed,
                warm_up=False,
                max_in_flight=args.max_in_flight,
            )
        )
        cpu_after = os.times()
        load_after = os.getloadavg()
        platform_cpu = {
            name: round(seconds - platform_cpu_before[name], 1) for name, seconds in platform.cpu_seconds().items()
        }
    finally:
        if platform is not None:
            platform.stop()
            purge_queue(broker)
    try:
        checks = checks_after()
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(server_url, DB_NAME)

    by_kind: dict[str, list[Outcome]] = {"quote": [], "submit": []}
    for outcome in outcomes:
        by_kind[outcome.kind].append(outcome)
    statuses = Counter(o.status for o in outcomes)
    errors = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    ok = [o for o in outcomes if 200 <= o.status < 300]
    generator_cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    figures: dict[str, Any] = {
        "target_rps": args.rps,
        "seconds": args.seconds,
        "requests": len(outcomes),
        "requests_per_s": round(len(ok) / wall, 1) if wall else 0,
        "offered_per_s": round(len(outcomes) / args.seconds, 1),
        "errors": errors,
        "throttled": statuses.get(429, 0),
        "timeouts": statuses.get(0, 0),
        "shed": statuses.get(SHED, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "gunicorn_workers": args.gunicorn_workers,
        "gunicorn_threads": args.gunicorn_threads,
        "buyers": args.buyers,
        "load_average_before": round(load_before[0], 2),
        "load_average_after": round(load_after[0], 2),
        "generator_lag_p99_ms": round(percentile([o.lag_ms for o in outcomes], 99) or 0, 1),
        "generator_cpu_s": round(generator_cpu, 1),
        "platform_cpu_s": platform_cpu,
        "check_ledger_ok": checks["check_ledger"]["ok"],
        "check_capacity_ok": checks["check_capacity"]["ok"],
        "jobs": checks["jobs"],
    }
    print()
    print(f"{'':8} {'sent':>6} {'ok':>6} {'errors':>6} {'p50':>10} {'p90':>10} {'p99':>10} {'max':>10}")
    for kind, rows in by_kind.items():
        good = [o.ms for o in rows if 200 <= o.status < 300]
        p50, p90, p99 = (percentile(good, q) for q in (50, 90, 99))
        figures[f"{kind}_count"] = len(rows)
        figures[f"{kind}_p50_ms"] = round(p50, 1) if p50 is not None else None
        figures[f"{kind}_p90_ms"] = round(p90, 1) if p90 is not None else None
        figures[f"{kind}_p99_ms"] = round(p99, 1) if p99 is not None else None
        print(
            f"{kind:8} {len(rows):>6} {len(good):>6} {len(rows) - len(good):>6} "
            f"{_ms(p50):>10} {_ms(p90):>10} {_ms(p99):>10} {_ms(max(good) if good else None):>10}"
        )
    print()
    print(
        f"throughput: {figures['requests_per_s']} successful requests/s "
        f"(offered {figures['offered_per_s']}/s over {wall:.1f} s)"
    )
    print(
        f"errors: {errors} (statuses {figures['statuses']}; 429 throttled: {figures['throttled']}; timeouts: "
        f"{figures['timeouts']}; not sent with {args.max_in_flight} in flight: {figures['shed']})"
    )
    print(f"generator: lag p99 {figures['generator_lag_p99_ms']} ms, {generator_cpu:.1f} CPU s")
    print(f"CPU seconds during the load: {platform_cpu} (PostgreSQL's not counted)")
    print(f"load average: {load_before[0]:.2f} before, {load_after[0]:.2f} after (2 cores, shared machine)")
    target = figures["quote_p99_ms"]
    verdict = "met" if target is not None and target <= 50 else "missed"
    print(f"quote p99 target ≤ 50 ms: {verdict}")
    print(f"jobs afterwards: {checks['jobs']}")
    for command in ("check_ledger", "check_capacity"):
        state = "passed" if checks[command]["ok"] else "FAILED"
        print(f"{command}: {state}\n  " + checks[command]["output"].replace("\n", "\n  "))
    print(json.dumps(figures))
    return 0 if checks["check_ledger"]["ok"] and checks["check_capacity"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
