"""The serving flags: HTTP (vLLM's names), admission control, metrics; and ``tandem gateway``.

``tandem serve`` and ``tandem router --http-port`` run the gateway in the
router's process, pointed at that router; ``tandem gateway --router
HOST:PORT`` runs it alone in front of a router elsewhere. Each flag falls
back to a ``TANDEM_<NAME>`` environment variable.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from services.router.admission import AdmissionLimits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from services.gateway.server import RunningGateway


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TANDEM_{name.upper().replace('-', '_')}", default)


def _optional_int(name: str) -> int | None:
    value = _env(name)
    return int(value) if value else None


def add_http_args(parser: argparse.ArgumentParser, port_flag: str, default_port: int | None) -> None:
    parser.add_argument("--host", default=_env("host", "127.0.0.1"), help="HTTP bind address")
    from_env = _optional_int(port_flag.lstrip("-"))
    parser.add_argument(port_flag, dest="http_port", type=int, default=default_port if from_env is None else from_env,
                        help="HTTP port of the OpenAI-compatible API (0 picks a free one)")
    parser.add_argument("--api-key", default=_env("api_key"),
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")


def add_served_name_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--served-model-name", action="append", default=None,
                        help="name clients use for the model; repeat for aliases (default: the --model value, "
                             "or the default model's name)")


def served_names(args: argparse.Namespace) -> list[str]:
    # From the engine's light default-model module: the launcher of serve --processes
    # calls this too, and must not import the gateway (and torch).
    from services.engine.models.default_model import default_served_model_name

    return args.served_model_name or [default_served_model_name(args.model)]


def add_admission_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("admission control (requests over a bound get RESOURCE_EXHAUSTED / HTTP 429)")
    group.add_argument("--max-queued-requests", type=int, default=_optional_int("max_queued_requests"),
                       help="admitted requests without a first token")
    group.add_argument("--max-queued-prompt-tokens", type=int, default=_optional_int("max_queued_prompt_tokens"),
                       help="prompt tokens of those requests")
    ttft = _env("max_predicted_ttft_ms")
    group.add_argument("--max-predicted-ttft-ms", type=float, default=float(ttft) if ttft else None,
                       help="refuse when the predicted time to first token is longer")


def admission_limits(args: argparse.Namespace) -> AdmissionLimits:
    return AdmissionLimits(args.max_queued_requests, args.max_queued_prompt_tokens, args.max_predicted_ttft_ms)


def start_http(args: argparse.Namespace, router_address: str, tokenizer: PreTrainedTokenizerBase | None = None,
               registries: tuple[CollectorRegistry, ...] = ()) -> RunningGateway:
    """Serve the gateway on a thread and print its address."""
    from services.gateway.app import build_app
    from services.gateway.server import load_gateway_tokenizer, start_gateway_thread

    tokenizer = tokenizer or load_gateway_tokenizer(args.model)
    app = build_app(router_address, tokenizer, served_names(args), args.api_key, registries)
    gateway = start_gateway_thread(app, args.host, args.http_port)
    print(f"tandem HTTP API listening on {gateway.url}", flush=True)
    return gateway




def add_gateway_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("gateway", help="serve the OpenAI-compatible HTTP API in front of a router")
    parser.add_argument("--router", default=_env("router"), required=_env("router") is None,
                        help="router gRPC address (host:port)")
    parser.add_argument("--model", default=_env("model"),
                        help="the router's checkpoint, for its tokenizer (default model if unset)")
    add_http_args(parser, "--port", 8000)
    add_served_name_arg(parser)
    parser.add_argument("--metrics-from", action="append", default=[], metavar="URL",
                        help="another process's /metrics URL to merge into this /metrics (repeatable)")
    parser.set_defaults(handler=run_gateway)


def run_gateway(args: argparse.Namespace, engine_kwargs: dict) -> int:
    from services.stats_metrics import remote_metrics_registry
    from tandem.mesh_cli import wait_for_signal

    registries = (remote_metrics_registry(args.metrics_from),) if args.metrics_from else ()
    gateway = start_http(args, args.router, registries=registries)
    wait_for_signal()
    gateway.stop()
    return 0
