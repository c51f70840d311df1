"""``python -m local``: the whole backend on this machine, on one port.

Starts (or finds) DynamoDB and Redis, sets the environment the handlers read, then serves the
chat page, the WebSocket API and its @connections API until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import sys
import warnings

from aiohttp import web

from local.event_sources import QueuePoller
from local.gateway import Gateway, Limits
from local.lambda_runtime import load_handler
from local.output import whole_lines
from local.stack import Dependencies
from local.template import load_template

# Local conveniences the caller's environment may override: no X-Ray daemon, no EMF noise.
LOCAL_DEFAULTS = {"POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true"}
# Guest tokens are signed with this development key unless one is given (on AWS the key comes
# from Secrets Manager). Tokens then survive a restart, like the sessions they resume.
LOCAL_GUEST_KEY = "local-development-only-guest-token-signing-key"
# And cross-session retrieval's owner values with this one (on AWS: Secrets Manager's).
LOCAL_OWNER_KEY = "local-development-only-owner-key"
warnings.filterwarnings("ignore", message="No application metrics to publish")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    limits = Limits()
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--stage", default="local", help="the stage name events carry")
    parser.add_argument("--max-message-bytes", type=int, default=limits.max_message_bytes)
    parser.add_argument("--max-frame-bytes", type=int, default=limits.max_frame_bytes)
    parser.add_argument("--idle-seconds", type=float, default=limits.idle_seconds)
    parser.add_argument("--max-connection-seconds", type=float, default=limits.max_connection_seconds)
    parser.add_argument(
        "--integration-timeout",
        type=float,
        default=limits.integration_timeout_seconds,
        help="seconds before a route's client gets 'Endpoint request timed out' (API Gateway: 29)",
    )
    parser.add_argument("--workers", type=int, default=32, help="concurrent handler invocations")
    parser.add_argument(
        "--queue-retry-seconds",
        type=int,
        default=2,
        help="how soon a queued message a function failed comes back (AWS: the queue's visibility timeout)",
    )
    parser.add_argument(
        "--max-receive-count",
        type=int,
        default=None,
        help="receives before a failing message moves to its dead-letter queue (default: the template's)",
    )
    return parser.parse_args(argv)


def say(line: str) -> None:
    print(line, flush=True)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def serve(args: argparse.Namespace) -> None:
    # Installed first: Ctrl-C while starting still stops cleanly, once started.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The port must be known before the handlers' clients are built (CONNECTIONS_ENDPOINT_URL).
    sock = _bind(args.host, args.port)
    port = int(sock.getsockname()[1])
    reachable = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    base = f"http://{reachable}:{port}"

    deps = await Dependencies(say=say, max_receive_count=args.max_receive_count).start(os.environ)
    pollers: list[QueuePoller] = []
    try:
        env = {**LOCAL_DEFAULTS, **deps.environment(base, os.environ)}
        env.setdefault(
            "IDENTITY__GUEST_TOKEN_KEY", os.environ.get("IDENTITY__GUEST_TOKEN_KEY", LOCAL_GUEST_KEY)
        )
        env.setdefault("MEMORY__OWNER_KEY", os.environ.get("MEMORY__OWNER_KEY", LOCAL_OWNER_KEY))
        os.environ.pop("REDIS_URL", None)
        os.environ.update(env)
        template = load_template()
        routes = template.routes()
        authorizer = template.connect_authorizer()
        mappings = [m for m in template.queue_mappings() if m.queue in deps.queues]
        for function in [
            *routes.values(),
            *([authorizer.function] if authorizer else []),
            *(m.function for m in mappings),
        ]:
            load_handler(function)
        from chatmemory.services import get_services

        services = get_services()  # built now, from this environment, and failing here if it must
        say(f"Model:     {services.settings.llm.provider}")
        for mapping in mappings:
            pollers.append(
                QueuePoller(
                    deps.sqs_client(),
                    deps.queues[mapping.queue],
                    mapping,
                    retry_seconds=args.queue_retry_seconds,
                    say=say,
                ).start()
            )
            say(
                f"Events:    {mapping.queue} -> {mapping.function.logical_id}"
                f" (batches of {mapping.batch_size})"
            )
        gateway = Gateway(
            routes,
            template.route_selection_expression(),
            limits=Limits(
                args.max_message_bytes,
                args.max_frame_bytes,
                args.idle_seconds,
                args.max_connection_seconds,
                args.integration_timeout,
            ),
            stage=args.stage,
            faults=deps.faults,
            workers=args.workers,
            authorizer=authorizer,
        )
        runner = web.AppRunner(gateway.app(), handle_signals=False, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        say(f"Chat page: {base}/")
        say(f"WebSocket: ws://{reachable}:{port}/ws")
        say("Press Ctrl-C to stop.")
        await stop.wait()
        say("Stopping...")
        await gateway.close()
        await runner.cleanup()
    finally:
        for poller in pollers:
            await poller.close()
        await deps.stop()
    say("Stopped.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    whole_lines()
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(f"Port {args.port} on {args.host} is taken: stop what uses it, or pick another (--port 0).")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
