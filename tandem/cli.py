"""The ``tandem`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from services.common.tracing import configure_tracing
from services.engine.errors import TandemError
from tandem import mesh_cli, serving_cli
from tandem.mesh_cli import env_default as _env


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    def opt_int(name: str) -> int | None:
        value = _env(name)
        return int(value) if value else None

    parser.add_argument("--model", default=_env("model"), help="HF checkpoint folder or .gguf file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default=_env("dtype", "auto"), help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default=_env("device", "auto"), help="auto, cpu or cuda[:N]")
    parser.add_argument("--max-model-len", type=int, default=opt_int("max_model_len"))
    parser.add_argument("--block-size", type=int, default=opt_int("block_size") or 16)
    parser.add_argument("--num-kv-blocks", type=int, default=opt_int("num_kv_blocks"), help="fixed KV pool size (default: from memory)")
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=float(_env("kv_cache_memory_fraction", "0.5")))
    parser.add_argument("--max-num-batched-tokens", type=int, default=opt_int("max_num_batched_tokens") or 2048)
    parser.add_argument("--max-num-seqs", type=int, default=opt_int("max_num_seqs") or 256)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--load-format", default=_env("load_format", "auto"), choices=["auto", "dummy"],
                        help="dummy: random weights from config.json alone (benchmarks)")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        default=_env("no_cuda_graphs", "") not in ("", "0", "false"),
                        help="run every decode step eagerly (CUDA graphs are on by default on GPUs)")
    parser.add_argument("--cuda-graph-max-batch", type=int, default=opt_int("cuda_graph_max_batch"),
                        help="largest decode batch captured in a CUDA graph (default: --max-num-seqs)")
    parser.add_argument("--no-overlap-scheduling", action="store_true",
                        default=_env("no_overlap_scheduling", "") not in ("", "0", "false"),
                        help="collect each step before scheduling the next (overlap is on by default on GPUs)")


def _engine_kwargs(args: argparse.Namespace) -> dict:
    return {
        "dtype": args.dtype,
        "device": args.device,
        "max_model_len": args.max_model_len,
        "block_size": args.block_size,
        "num_kv_blocks": args.num_kv_blocks,
        "kv_cache_memory_fraction": args.kv_cache_memory_fraction,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
        "enable_prefix_caching": not args.no_prefix_caching,
        "load_format": args.load_format,
        "cuda_graphs": not args.no_cuda_graphs,
        "cuda_graph_max_batch": args.cuda_graph_max_batch,
        "overlap_scheduling": False if args.no_overlap_scheduling else None,
    }


def _generate(args: argparse.Namespace) -> int:
    from tandem import LLM, SamplingParams

    llm = LLM(model=args.model, **_engine_kwargs(args))
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop or [],
    )
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], params)
    else:
        outputs = llm.generate(args.prompt, params)
    for prompt, output in zip(args.prompt, outputs):
        sample = output.outputs[0]
        if args.json:
            print(json.dumps({
                "prompt": prompt,
                "text": sample.text,
                "token_ids": sample.token_ids,
                "finish_reason": sample.finish_reason,
                "time_to_first_token_s": output.metrics.time_to_first_token,
                "decode_time_s": output.metrics.decode_time,
            }))
        else:
            print(sample.text if args.chat else prompt + sample.text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="LLM inference with disaggregated prefill and decode")
    parser.add_argument("--log-level", default="WARNING")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate text offline for one or more prompts")
    _add_engine_args(gen)
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user chat message")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=None)
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
    gen.set_defaults(handler=_generate)

    mesh_cli.add_serve_parser(commands, _add_engine_args)
    mesh_cli.add_worker_parser(commands, "prefill", _add_engine_args, "prefill")
    mesh_cli.add_worker_parser(commands, "decode", _add_engine_args, "decode")
    mesh_cli.add_worker_parser(commands, "worker", _add_engine_args, None)
    mesh_cli.add_router_parser(commands)
    serving_cli.add_gateway_parser(commands)
    kvstore = commands.add_parser("kvstore", help="run the block registry", add_help=False)
    kvstore.set_defaults(handler=_kvstore)
    return parser


def _kvstore(args: argparse.Namespace) -> int:
    from services.kvstore.cli import main as kvstore_main

    return kvstore_main(args.kvstore_argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["kvstore"]:
        # The kvstore owns its flags (services/kvstore/cli.py).
        args = argparse.Namespace(log_level="WARNING", handler=_kvstore, kvstore_argv=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.handler is not _kvstore:  # the kvstore's own main configures its tracing
            configure_tracing(f"tandem-{args.command}")
        if args.handler is _generate or args.handler is _kvstore:
            return args.handler(args)
        return args.handler(args, _engine_kwargs(args) if hasattr(args, "dtype") else {})
    except (TandemError, ValueError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
