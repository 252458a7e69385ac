"""``python -m agent``: run the provider agent. See ``agent/README.md``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from agent.daemon import Agent, AgentConfig
from agent.state import StateLocked


def default_state_dir() -> Path:
    """``$CX_AGENT_STATE_DIR``, else systemd's ``$STATE_DIRECTORY``, else ``~/.cx-agent``."""
    explicit = os.environ.get("CX_AGENT_STATE_DIR") or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(explicit) if explicit else Path.home() / ".cx-agent"


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="Run the Compute Exchange provider agent: poll for leases, run their workloads, report usage.",
    )
    parser.add_argument("--server", required=True, help="platform root URL, e.g. https://exchange.example.cn")
    parser.add_argument("--token", help="agent token (prefer the CX_AGENT_TOKEN environment variable)")
    parser.add_argument("--secret", help="agent HMAC secret (prefer the CX_AGENT_SECRET environment variable)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where state, work dirs and logs live (default: $CX_AGENT_STATE_DIR, $STATE_DIRECTORY or ~/.cx-agent)",
    )
    parser.add_argument("--poll-seconds", type=_positive, default=5.0, help="lease poll interval (default 5)")
    parser.add_argument("--report-seconds", type=_positive, default=10.0, help="heartbeat and usage interval (10)")
    parser.add_argument("--grace-seconds", type=_positive, default=10.0, help="SIGTERM to SIGKILL delay (10)")
    parser.add_argument("--progress-seconds", type=_positive, default=2.0, help="least time between progress (2)")
    parser.add_argument(
        "--node", type=int, action="append", default=[], help="run only leases whose first node is N (repeatable)"
    )
    parser.add_argument(
        "--pool", action="append", default=[], help="run only leases on the pool with this identifier (repeatable)"
    )
    parser.add_argument("--runtime", choices=["docker", "podman"], help="run jobs that name an image in a container")
    parser.add_argument(
        "--container-arg",
        action="append",
        default=[],
        help="extra argument for `<runtime> run` (repeatable); {devices} becomes the lease's device list",
    )
    parser.add_argument("--once", action="store_true", help="one pass: run the leases due now to their end, exit")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("CX_AGENT_TOKEN")
    secret = args.secret or os.environ.get("CX_AGENT_SECRET")
    if not token or not secret:
        parser.error("token and secret are required: CX_AGENT_TOKEN and CX_AGENT_SECRET, or --token and --secret")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = AgentConfig(
        server=args.server,
        token=token,
        secret=secret,
        state_dir=args.state_dir or default_state_dir(),
        poll_seconds=args.poll_seconds,
        report_seconds=args.report_seconds,
        grace_seconds=args.grace_seconds,
        progress_seconds=args.progress_seconds,
        nodes=frozenset(args.node),
        pools=frozenset(pool.strip().upper() for pool in args.pool),
        runtime=args.runtime,
        container_args=tuple(args.container_arg),
    )
    try:
        agent = Agent(config)
    except StateLocked as error:
        logging.getLogger("agent").error("%s", error)
        return 1
    except ValueError as error:
        parser.error(str(error))

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("agent").info("received %s; shutting down", signal.Signals(signum).name)
        agent.request_stop()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.once:
            agent.run_once()
        else:
            agent.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
