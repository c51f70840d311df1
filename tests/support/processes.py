"""Real dependency processes that tests can stop, stall and restart: a redis-server of its
own and moto servers over HTTP."""

from __future__ import annotations

import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from moto.server import ThreadedMotoServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A throwaway redis-server on a free port (no persistence).

    ``cluster=True``: a one-node Redis Cluster owning all 16384 slots, as ElastiCache
    Serverless presents itself; its node file lives in a temporary directory, so a restart
    keeps the slots. ``extra_args``: more configuration, e.g.
    ``("--user", "chat", "on", ">pw", "~*", "+@all")``.
    """

    def __init__(self, cluster: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-redis.sh installs it)")
        self.binary = binary
        self.port = free_port()
        self.cluster = cluster
        self.extra_args = extra_args
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="redis-cluster-") if cluster else None
        self._bus_port = free_port() if cluster else 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *self.extra_args,
        ]
        if self._dir is not None:
            # The cluster bus defaults to port + 10000, past 65535 for a high free port: pick it too.
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"{self._dir.name}/nodes.conf"]
            args += ["--cluster-port", str(self._bus_port)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.2)
        deadline = time.monotonic() + 30  # a busy machine; it returns as soon as Redis answers
        while time.monotonic() < deadline:
            try:
                client.ping()
                if self.cluster:
                    self._own_all_slots(client, deadline)
                return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def _own_all_slots(self, client: redis.Redis[bytes], deadline: float) -> None:
        def info() -> dict[str, str]:
            raw = client.execute_command("CLUSTER", "INFO")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)

        if info().get("cluster_slots_assigned") == "0":
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        while info().get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster node did not take its slots")
            time.sleep(0.02)

    def running(self) -> bool:
        return self._proc is not None

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def stall(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
        self.kill()
        if self._dir is not None:
            self._dir.cleanup()


class MotoHttpServer:
    """moto over HTTP on a fixed port, stoppable and restartable (moto's state lives in this
    process, so what was stored survives a restart, as it would in DynamoDB)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host  # another address than loopback: for clients in containers
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> MotoHttpServer:
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> MotoHttpServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


DYNALITE = Path(__file__).resolve().parents[2] / "tools" / "dynalite"


class DynaliteProcess:
    """dynalite (tools/dynalite, installed by scripts/ensure-dynalite.sh) in memory on a free
    port: a second DynamoDB engine that rejects what the service rejects (expressions,
    reserved words, key conditions, sizes) where moto is lenient. It has no TransactWriteItems
    and no UpdateTimeToLive."""

    def __init__(self) -> None:
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> DynaliteProcess:
        node = shutil.which("node")
        if node is None or not (DYNALITE / "node_modules" / "dynalite").is_dir():
            raise RuntimeError("dynalite is not installed: run scripts/ensure-dynalite.sh (make test does)")
        # stdin stays open while we run: the server ends when it closes, even if we are killed.
        self._proc = subprocess.Popen(
            [node, str(DYNALITE / "serve.js"), "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        ready = select.select([self._proc.stdout], [], [], timeout)[0]
        line = self._proc.stdout.readline() if ready else ""
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"dynalite did not start within {timeout} s")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> DynaliteProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
