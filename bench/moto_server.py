"""A moto server over HTTP in a process of its own: ``python -m bench.moto_server PORT``.

Running it beside the benchmark (not in a thread of it) keeps moto's request handling off the
measuring process's GIL, as a real DynamoDB endpoint would be. It stops when its stdin closes,
so it never outlives the benchmark that started it.
"""

from __future__ import annotations

import sys

from moto.server import ThreadedMotoServer

import local.moto_isolation  # one request at a time: moto is not thread-safe
import local.vector_search  # noqa: F401  (SearchVectors, which moto lacks)


def main() -> None:
    port = int(sys.argv[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()  # until the parent closes the pipe or exits
    finally:
        server.stop()


if __name__ == "__main__":
    main()
