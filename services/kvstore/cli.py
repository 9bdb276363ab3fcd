"""``tandem kvstore``: run the block registry as a process.

Every flag falls back to an environment variable (``TANDEM_KVSTORE_LISTEN``,
``TANDEM_REDIS_URL``, ...), then to a default. The process prints
``kvstore listening on HOST:PORT`` once it serves, and stops cleanly (payload
segments unlinked, replica announced gone) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence

from services.common.tracing import configure_tracing
from services.kvstore.errors import KvStoreError
from services.kvstore.metrics import kvstore_metrics_registry
from services.kvstore.server import DEFAULT_REDIS_PREFIX, serve_kvstore
from services.stats_metrics import listen_host, serve_metrics

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_CAPACITY = "4GiB"
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_bytes(text: str) -> int:
    """``"1073741824"``, ``"512MiB"``, ``"8G"`` (decimal) or ``"8GiB"`` (binary) as a byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r}")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    if value <= 0:
        raise argparse.ArgumentTypeError("a byte size must be positive")
    return int(value)


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(name) or default


def add_kvstore_arguments(parser: argparse.ArgumentParser) -> None:
    """The kvstore's flags, for ``tandem kvstore`` and this module's ``main``."""
    parser.add_argument("--listen", default=_env("TANDEM_KVSTORE_LISTEN", DEFAULT_LISTEN),
                        help="host:port to serve on (env TANDEM_KVSTORE_LISTEN)")
    parser.add_argument("--capacity-bytes", type=parse_bytes,
                        default=_env("TANDEM_KVSTORE_CAPACITY_BYTES", DEFAULT_CAPACITY),
                        help="payload memory, e.g. 8GiB (env TANDEM_KVSTORE_CAPACITY_BYTES)")
    parser.add_argument("--redis-url", default=_env("TANDEM_REDIS_URL", None),
                        help="keep metadata in Redis, e.g. redis://127.0.0.1:6379/0; in memory when absent "
                        "(env TANDEM_REDIS_URL)")
    parser.add_argument("--mesh", default=_env("TANDEM_MESH", "default"),
                        help="mesh name; the Redis key prefix is tandem:{MESH}: (env TANDEM_MESH)")
    parser.add_argument("--redis-prefix", default=_env("TANDEM_REDIS_PREFIX", None),
                        help="explicit Redis key prefix, overriding --mesh (env TANDEM_REDIS_PREFIX)")
    parser.add_argument("--replica-id", default=_env("TANDEM_KVSTORE_REPLICA_ID", None),
                        help="this process's id among replicas sharing Redis; default host:port "
                        "(env TANDEM_KVSTORE_REPLICA_ID)")
    parser.add_argument("--lease-ttl-ms", type=int, default=int(_env("TANDEM_KVSTORE_LEASE_TTL_MS", "30000")),
                        help="lease time when a client asks for 0 (env TANDEM_KVSTORE_LEASE_TTL_MS)")
    metrics_port = _env("TANDEM_METRICS_PORT", None)
    parser.add_argument("--metrics-port", type=int, default=int(metrics_port) if metrics_port else None,
                        help="serve Prometheus metrics on this port (0 picks one), on --listen's host "
                        "(env TANDEM_METRICS_PORT)")


def redis_prefix_of(args: argparse.Namespace) -> str:
    if args.redis_prefix:
        return args.redis_prefix
    return DEFAULT_REDIS_PREFIX.replace("{default}", "{" + args.mesh + "}")


def run_kvstore(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    server = serve_kvstore(
        args.listen,
        capacity_bytes=args.capacity_bytes,
        metadata=args.redis_url or "memory",
        redis_prefix=redis_prefix_of(args),
        replica_id=args.replica_id,
        default_lease_ttl_ms=args.lease_ttl_ms,
    )

    stop_signals: list[int] = []

    def _on_signal(signum: int, frame: object) -> None:
        # Only record it: a handler runs on the main thread between bytecodes,
        # possibly while that thread holds a lock stop() would need.
        stop_signals.append(signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print(f"kvstore listening on {server.address} (replica {server.replica_id})", flush=True)
    if args.metrics_port is not None:
        serve_metrics(listen_host(args.listen), args.metrics_port, kvstore_metrics_registry(server.registry))
    while not stop_signals:
        time.sleep(0.1)
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tandem kvstore", description="the mesh's block registry")
    add_kvstore_arguments(parser)
    parser.add_argument("--log-level", default=_env("TANDEM_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Set the level even when a caller (the tandem CLI) configured logging already.
    logging.getLogger().setLevel(args.log_level.upper())
    try:
        configure_tracing("tandem-kvstore")
        return run_kvstore(args)
    except (KvStoreError, OSError, ValueError) as exc:
        print(f"tandem kvstore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
