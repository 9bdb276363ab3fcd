"""compose.yaml is a deployment nobody runs in CI (it needs GPUs), so check what can go stale.

Each container's command must parse with tandem's own CLI, every address one
service dials must be another service's listen port, workers must advertise an
address other containers can reach, and no two workers may share a GPU.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from services.kvstore.cli import add_kvstore_arguments
from tandem.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
WORKER_COMMANDS = ("prefill", "decode", "worker")


def _substitute(text: str) -> str:
    """Compose's ${VAR:?message} / ${VAR:-default} as a test value."""
    return re.sub(r"\$\{(\w+)(?::[?-][^}]*)?\}", lambda m: f"/models/{m.group(1).lower()}", text)


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def _tandem_services(services: dict[str, dict]) -> dict[str, argparse.Namespace]:
    parsed = {}
    for name, spec in services.items():
        if spec.get("image", "").startswith("redis"):
            continue
        command = [_substitute(part) for part in spec["command"]]
        if command[0] == "kvstore":
            parser = argparse.ArgumentParser()
            add_kvstore_arguments(parser)
            parsed[name] = parser.parse_args(command[1:])
            parsed[name].command = "kvstore"
        else:
            parsed[name] = build_parser().parse_args(command)
    return parsed


def test_every_command_parses_with_the_cli(services) -> None:
    parsed = _tandem_services(services)
    assert {args.command for args in parsed.values()} >= {"kvstore", "prefill", "decode", "router"}


def test_dialed_addresses_are_listen_ports_of_other_services(services) -> None:
    parsed = _tandem_services(services)
    listen_ports = {name: args.listen.rpartition(":")[2] for name, args in parsed.items()}
    for name, args in parsed.items():
        if getattr(args, "kvstore", None):
            host, _, port = args.kvstore.rpartition(":")
            assert host in parsed and listen_ports[host] == port, f"{name} dials {args.kvstore}"
        if getattr(args, "redis_url", None):
            assert re.match(r"redis://(\w+):6379/", args.redis_url).group(1) in services


def test_workers_advertise_their_service_and_own_a_gpu_each(services) -> None:
    parsed = _tandem_services(services)
    gpus: list[str] = []
    for name, args in parsed.items():
        if args.command not in WORKER_COMMANDS:
            continue
        assert args.advertise == f"{name}:{args.listen.rpartition(':')[2]}"
        assert args.worker_id == name
        # Containers share no /dev/shm, so blocks must move over gRPC.
        assert args.kv_transport == "grpc"
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        gpus += [gpu for device in devices for gpu in device["device_ids"]]
    assert gpus and len(gpus) == len(set(gpus))


def test_the_image_builds_from_the_packages_the_project_ships() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+) \1$", dockerfile, flags=re.MULTILINE)
    assert set(copied) == {"tandem", "services", "kernels", "protos"}
    assert all((ROOT / path).is_dir() for path in copied)
    assert 'ENTRYPOINT ["tandem"]' in dockerfile
