"""``tandem kvstore | prefill | decode | worker | router | serve``: one service per process.

Every flag falls back to an environment variable (``--kvstore`` to
``TANDEM_KVSTORE``, ``--listen`` to ``TANDEM_LISTEN``, and so on), so a
container needs no command-line changes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from services.stats_metrics import listen_host, serve_metrics
from tandem import serving_cli

logger = logging.getLogger(__name__)


def env_default(name: str, default: str | None = None) -> str | None:
    """Flags fall back to ``TANDEM_<NAME>`` environment variables (containers set those)."""
    return os.environ.get(f"TANDEM_{name.upper().replace('-', '_')}", default)


def wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def add_worker_parser(commands: argparse._SubParsersAction, name: str, add_engine_args, role: str | None) -> None:
    parser = commands.add_parser(name, help=f"run a {role or 'prefill/decode'} worker")
    add_engine_args(parser)
    parser.add_argument("--listen", default=env_default("listen", "127.0.0.1:0"))
    parser.add_argument("--advertise", default=env_default("advertise"),
                        help="host:port routers dial to reach this worker (default: the bound address; "
                             "a 0.0.0.0 host becomes this host's name)")
    parser.add_argument("--kvstore", default=env_default("kvstore"), help="kvstore address (host:port)")
    parser.add_argument("--kv-transport", default=env_default("kv_transport", "auto"), choices=["auto", "grpc", "shm"])
    parser.add_argument("--worker-id", default=env_default("worker_id"))
    parser.add_argument("--served-model-name", default=env_default("served_model_name", "default"))
    if role is None:
        parser.add_argument("--role", default=env_default("role", "both"), choices=["prefill", "decode", "both"])
    add_metrics_port_arg(parser)
    parser.set_defaults(handler=run_worker, fixed_role=role)


def add_metrics_port_arg(parser: argparse.ArgumentParser,
                         help_text: str = "serve Prometheus metrics on this port (0 picks one), on --listen's host",
                         ) -> None:
    metrics_port = env_default("metrics_port")
    parser.add_argument("--metrics-port", type=int, default=int(metrics_port) if metrics_port else None,
                        help=help_text)


def run_worker(args: argparse.Namespace, engine_kwargs: dict) -> int:
    from services.engine.config import EngineConfig
    from services.worker.server import WorkerConfig, start_worker

    config = WorkerConfig(
        role=args.fixed_role or args.role,
        listen=args.listen,
        kvstore=args.kvstore,
        kv_transport=args.kv_transport,
        served_model_name=args.served_model_name,
        engine=EngineConfig(model=args.model, **engine_kwargs),
        advertise=args.advertise,
    )
    if args.worker_id:
        config.worker_id = args.worker_id
    worker = start_worker(config)
    print(f"tandem {config.role} worker {config.worker_id} listening on {worker.address}", flush=True)
    if args.metrics_port is not None:
        from services.worker.metrics import worker_metrics_registry

        serve_metrics(listen_host(args.listen), args.metrics_port, worker_metrics_registry([worker.worker]))
    wait_for_signal()
    worker.stop()
    return 0


def add_router_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("router", help="run the router")
    parser.add_argument("--model", default=env_default("model"), help="checkpoint for the tokenizer (default model if unset)")
    parser.add_argument("--listen", default=env_default("listen", "127.0.0.1:50051"))
    parser.add_argument("--kvstore", default=env_default("kvstore"), required=env_default("kvstore") is None)
    parser.add_argument("--prefill", action="append", default=[], help="static prefill worker address (repeatable)")
    parser.add_argument("--decode", action="append", default=[], help="static decode worker address (repeatable)")
    serving_cli.add_served_name_arg(parser)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--disagg-min-tokens", type=int, default=int(env_default("disagg_min_tokens", "32")))
    serving_cli.add_http_args(parser, "--http-port", None)
    add_metrics_port_arg(parser, "serve Prometheus metrics on this port when there is no --http-port")
    serving_cli.add_admission_args(parser)
    parser.set_defaults(handler=run_router)


def run_router(args: argparse.Namespace, engine_kwargs: dict) -> int:
    from services.router.server import RouterSettings, start_router

    peers = [(a, "prefill") for a in args.prefill] + [(a, "decode") for a in args.decode]
    router = start_router(RouterSettings(
        kvstore=args.kvstore, listen=args.listen, model=args.model,
        served_model_names=serving_cli.served_names(args), max_model_len=args.max_model_len,
        peers=peers, disagg_min_tokens=args.disagg_min_tokens, admission=serving_cli.admission_limits(args),
    ))
    print(f"tandem router listening on {router.address}", flush=True)
    registry = router.router.metrics.registry
    gateway = None
    if args.http_port is not None:
        gateway = serving_cli.start_http(args, router.address, router.servicer.tokenizer, (registry,))
    elif args.metrics_port is not None:
        serve_metrics(args.host, args.metrics_port, registry)
    wait_for_signal()
    if gateway is not None:
        gateway.stop()
    router.stop()
    return 0


def add_serve_parser(commands: argparse._SubParsersAction, add_engine_args) -> None:
    parser = commands.add_parser(
        "serve", help="run the whole mesh: in this process (the default) or one process per service (--processes)")
    add_engine_args(parser)
    parser.add_argument("--listen", default=env_default("listen", "127.0.0.1:50051"), help="router gRPC address")
    serving_cli.add_served_name_arg(parser)
    parser.add_argument("--disagg-min-tokens", type=int, default=int(env_default("disagg_min_tokens", "32")))
    parser.add_argument("--colocated", action="store_true", default=env_default("colocated") == "1",
                        help="one worker in both roles (single-GPU hosts: no KV copy between engines)")
    parser.add_argument("--processes", action="store_true", default=env_default("processes") == "1",
                        help="run each service (kvstore, workers, router, HTTP gateway) as its own child "
                             "process: one interpreter lock per service instead of one for all, for much "
                             "higher throughput under load on a GPU; the default runs them as threads here")
    serving_cli.add_http_args(parser, "--port", 8000)
    serving_cli.add_admission_args(parser)
    parser.set_defaults(handler=run_serve, add_engine_args=add_engine_args)


def engine_argv(add_engine_args, args: argparse.Namespace) -> list[str]:
    """``args``'s engine flags as a command line, for a child that takes the same flags.

    Read off the flags ``add_engine_args`` defines, so a new engine flag reaches
    the children of ``serve --processes`` without another edit.
    """
    scratch = argparse.ArgumentParser(add_help=False)
    add_engine_args(scratch)
    argv: list[str] = []
    for action in scratch._actions:
        value, flag = getattr(args, action.dest), action.option_strings[0]
        if action.nargs == 0:  # store_true
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _serve_processes(args: argparse.Namespace) -> int:
    from tandem.process_mesh import MeshPlan, serve_processes

    limits = {"--max-queued-requests": args.max_queued_requests,
              "--max-queued-prompt-tokens": args.max_queued_prompt_tokens,
              "--max-predicted-ttft-ms": args.max_predicted_ttft_ms}
    return serve_processes(MeshPlan(
        engine_argv=engine_argv(args.add_engine_args, args), model=args.model, served_names=serving_cli.served_names(args),
        colocated=args.colocated, router_listen=args.listen, disagg_min_tokens=args.disagg_min_tokens,
        max_model_len=args.max_model_len,
        admission_argv=[part for flag, value in limits.items() if value is not None for part in (flag, str(value))],
        host=args.host, port=args.http_port, api_key=args.api_key, log_level=args.log_level,
    ))


def run_serve(args: argparse.Namespace, engine_kwargs: dict) -> int:
    if args.processes:
        return _serve_processes(args)
    from services.embedded_mesh import start_embedded_mesh
    from services.engine.config import EngineConfig

    mesh = start_embedded_mesh(
        EngineConfig(model=args.model, **engine_kwargs), router_listen=args.listen,
        served_model_names=serving_cli.served_names(args), disagg_min_tokens=args.disagg_min_tokens,
        admission=serving_cli.admission_limits(args), colocated=args.colocated,
    )
    print(f"tandem router listening on {mesh.address}", flush=True)
    gateway = serving_cli.start_http(args, mesh.address, mesh.router.servicer.tokenizer, mesh.metrics_registries())
    wait_for_signal()
    gateway.stop()
    mesh.stop()
    return 0
