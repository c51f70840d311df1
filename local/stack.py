"""The local stack's dependencies: DynamoDB (moto, or a real endpoint), Redis (the one at
REDIS_URL, a throwaway redis-server, or none) and the environment the handlers read.

Everything here must be settled before a handler first calls ``get_services()``: the domain
builds its clients once per process, from the environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
import redis

from local.faults import FaultProxy
from local.template import Function, create_queues, create_tables, load_template

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_OFFLINE_DELAY = "0.05"  # three words every 50 ms: about Claude's pace
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}

Say = Callable[[str], None]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, ValueError):
        return False


def function_environment(functions: Mapping[str, Function]) -> dict[str, str]:
    """The template's plain-string variables of every function.

    CloudFormation intrinsics (``!Ref`` a table, ``!If``, ...) have no local meaning: the
    variables that need one get a local value, the others are left to the domain's defaults.
    All handlers share this process, hence one environment for all of them.
    """
    env: dict[str, str] = {}
    for function in functions.values():
        for name, value in function.environment.items():
            # An empty value declares a variable for other tools (sam local --env-vars): unset here.
            if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value) != "":
                env.setdefault(name, str(value))
    return env


def vector_dimensions(environ: Mapping[str, str]) -> int:
    """The vector index's dimensions: the environment's embedding dimensions, else the
    template parameter's default (the offline model's)."""
    given = environ.get("EMBEDDINGS__DIMENSIONS")
    return int(given) if given else int(load_template().parameter_default("EmbeddingDimensions"))


@dataclass
class Dependencies:
    """Starts what is missing, and stops what it started (in reverse order)."""

    say: Say = print
    dynamodb_url: str = ""
    redis_url: str | None = None
    proxy: FaultProxy | None = None
    redis_proxy: FaultProxy | None = None
    sqs_proxy: FaultProxy | None = None
    tables: dict[str, str] = field(default_factory=dict)
    queues: dict[str, str] = field(default_factory=dict)  # logical id -> URL (moto's SQS)
    sqs_endpoint: str = ""
    max_receive_count: int | None = None  # overrides the template's redrive policies (tests)
    _stops: list[Callable[[], Any]] = field(default_factory=list)

    async def start(self, environ: Mapping[str, str]) -> Dependencies:
        for name, value in FAKE_AWS.items():
            os.environ.setdefault(name, value)
        self.tables = {
            "ChatSessionsTable": environ.get("SESSIONS_TABLE", "ChatSessions"),
            "ConnectionsTable": environ.get("CONNECTIONS_TABLE", "ChatConnections"),
        }
        self.dynamodb_url = environ.get("DYNAMODB_ENDPOINT_URL") or self._start_moto()
        # SQS: the moto we started, or one named (e.g. the moto server a DynamoDB URL points at).
        self.sqs_endpoint = environ.get("SQS_ENDPOINT_URL") or (
            "" if environ.get("DYNAMODB_ENDPOINT_URL") else self.dynamodb_url
        )
        create_tables(
            boto3.resource("dynamodb", endpoint_url=self.dynamodb_url, region_name=os.environ["AWS_REGION"]),
            self.tables,
            vector_dimensions=vector_dimensions(environ),
        )
        await self._start_proxy()
        await self._start_queues(environ)
        self.redis_url = self._redis(environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
        if self.redis_url:
            parts = urlsplit(self.redis_url)
            self.redis_proxy = await FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379).start()
            self.say(f"Faults:    Redis through {self.handler_redis_url()} (POST /_local/faults to stall it)")
        return self

    @property
    def faults(self) -> dict[str, FaultProxy]:
        """The dependencies people and tests can make fail (POST /_local/faults)."""
        named = {"dynamodb": self.proxy, "redis": self.redis_proxy, "sqs": self.sqs_proxy}
        return {name: proxy for name, proxy in named.items() if proxy is not None}

    def handler_redis_url(self) -> str | None:
        """The Redis the handlers use: through its fault proxy, same database."""
        if not self.redis_url or self.redis_proxy is None:
            return self.redis_url
        parts = urlsplit(self.redis_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return parts._replace(netloc=f"{netloc}127.0.0.1:{self.redis_proxy.port}").geturl()

    def handler_url(self) -> str:
        """The DynamoDB endpoint the handlers use: through the fault proxy when there is one."""
        return self.proxy.url if self.proxy else self.dynamodb_url

    def environment(self, connections_url: str, environ: Mapping[str, str]) -> dict[str, str]:
        """What the handlers read: the template's plain values unless the caller's environment
        sets them, then the local endpoints (those must win, or the handlers would talk to
        something else). REDIS_URL is absent when the cache is off."""
        template = function_environment(load_template().routes())
        env = {k: v for k, v in template.items() if k not in environ}
        env.update({k: v for k, v in environ.items() if k != "REDIS_URL"})
        env.setdefault("LLM__OFFLINE_DELAY_SECONDS", DEFAULT_OFFLINE_DELAY)
        # The template's !Ref: the vector index's dimensions and the embedder's are one value.
        env.setdefault("EMBEDDINGS__DIMENSIONS", str(vector_dimensions(environ)))
        env.update(
            SESSIONS_TABLE=self.tables["ChatSessionsTable"],
            CONNECTIONS_TABLE=self.tables["ConnectionsTable"],
            DYNAMODB_ENDPOINT_URL=self.handler_url(),
            CONNECTIONS_ENDPOINT_URL=connections_url,
        )
        redis_url = self.handler_redis_url()
        if redis_url:
            env["REDIS_URL"] = redis_url
        if self.queues:
            # The functions' variables that name a queue (!Ref): its local URL. SQS requests
            # go through the SQS fault proxy; the queue URL only names the queue.
            for function in load_template().functions().values():
                for name, value in function.environment.items():
                    if isinstance(value, dict) and value.get("Ref") in self.queues:
                        env[name] = self.queues[value["Ref"]]
            env["OUTBOX__ENDPOINT_URL"] = self.sqs_url()
        return env

    def sqs_url(self) -> str:
        """The SQS endpoint the handlers use: moto's, through the SQS fault proxy."""
        return self.sqs_proxy.url if self.sqs_proxy else self.sqs_endpoint

    def sqs_client(self) -> Any:
        """SQS itself (moto), for the event source pollers: Lambda's service, not a handler."""
        return boto3.client("sqs", endpoint_url=self.sqs_endpoint, region_name=os.environ["AWS_REGION"])

    async def _start_queues(self, environ: Mapping[str, str]) -> None:
        """The template's queues, on the moto server we started or on ``SQS_ENDPOINT_URL``."""
        if not self.sqs_endpoint or not load_template().queues():
            self.say("Queues:    off (an external DynamoDB and no SQS_ENDPOINT_URL)")
            return
        self.queues = create_queues(self.sqs_client(), self.max_receive_count)
        parts = urlsplit(self.sqs_endpoint)
        self.sqs_proxy = await FaultProxy(parts.hostname or "127.0.0.1", parts.port or 80).start()
        self.say(f"Queues:    {', '.join(self.queues)} on moto; SQS through {self.sqs_proxy.url}")

    async def stop(self) -> None:
        for proxy in self.faults.values():
            await proxy.close()
        while self._stops:
            self._stops.pop()()

    def _start_moto(self) -> str:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access line per DynamoDB call

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        self._stops.append(server.stop)
        url = f"http://127.0.0.1:{port}"
        self.say(f"DynamoDB:  moto on {url} (in memory, gone on exit)")
        return url

    async def _start_proxy(self) -> None:
        parts = urlsplit(self.dynamodb_url)
        if parts.scheme != "http" or not parts.hostname:
            self.say("Faults:    off (the DynamoDB endpoint is not plain HTTP)")
            return
        self.proxy = await FaultProxy(parts.hostname, parts.port or 80).start()
        self.say(f"Faults:    DynamoDB through {self.proxy.url} (POST /_local/faults to stall it)")

    def _redis(self, url: str) -> str | None:
        if redis_answers(url):
            self.say(f"Redis:     {url}")
            return url
        binary = shutil.which("redis-server")
        if binary is None:
            self.say(f"Redis:     nothing answers at {url} and no redis-server found: the cache is OFF")
            return None
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._stops.append(lambda: _stop_process(proc))
        own = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            if redis_answers(own):
                self.say(f"Redis:     started redis-server on {own} (stopped on exit)")
                return own
            time.sleep(0.05)
        self.say("Redis:     redis-server did not start: the cache is OFF")
        return None


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
