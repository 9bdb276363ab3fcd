"""The generated stubs in tandem/_proto match protos/ (regenerate with scripts/gen_protos.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_generated_stubs_import_as_a_package() -> None:
    from tandem._proto.tandem.v1 import kvstore_pb2, kvstore_pb2_grpc, router_pb2

    assert kvstore_pb2.DESCRIPTOR.name == "tandem/v1/kvstore.proto"
    assert hasattr(kvstore_pb2_grpc, "KvStoreStub")
    assert router_pb2.GenerateResponse.DESCRIPTOR.fields_by_name["delta"].message_type.name == "TokenDelta"
