"""Typed Python clients of a tandem router: ``TandemClient`` (blocking) and ``AsyncTandemClient`` (asyncio).

    from tandem import SamplingParams
    from tandem.client import TandemClient

    with TandemClient("127.0.0.1:50051") as client:
        for delta in client.generate("The capital of France is", SamplingParams(max_tokens=8)):
            print(delta.text, end="", flush=True)
        done = client.complete([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0))
        print(done.samples[0].text, done.samples[0].finish_reason)

Both speak the router's gRPC API (``protos/tandem/v1/router.proto``) through
the generated stubs and return the dataclasses of ``tandem.client_types``.
A failed call raises :class:`TandemRpcError` with the status code and, when
the router refused the request for load, its retry-after hint. Leaving a
``generate`` loop early (``break``, an exception, closing the iterator)
cancels the call, which aborts the request on every worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import GRPC_OPTIONS, channel
from services.common.tracing import aio_client_interceptors
from services.engine.sampling_params import SamplingParams
from tandem._proto.tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tandem.client_types import (
    Completion,
    CompletionBuilder,
    GenerateDelta,
    ModelInfo,
    Prompt,
    TandemRpcError,
    build_request,
    delta_from_proto,
    rpc_error,
)

__all__ = ["AsyncTandemClient", "Completion", "GenerateDelta", "ModelInfo", "TandemClient", "TandemRpcError"]

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


def _models(response: router_pb2.ListModelsResponse) -> list[ModelInfo]:
    return [ModelInfo(m.id, m.max_model_len, m.fingerprint) for m in response.models]


class TandemClient:
    """Blocking client; safe to share between threads (one channel, many calls)."""

    def __init__(self, address: str, timeout: float | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = channel(address)
        self._router = router_pb2_grpc.RouterStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, *, model: str = "", request_id: str = "",
        add_generation_prompt: bool = True, timeout: float | None = None,
    ) -> Iterator[GenerateDelta]:
        """Stream the request's deltas as the router sends them."""
        request = build_request(prompt, params, model, request_id, add_generation_prompt)
        call = self._router.Generate(request, timeout=timeout or self.timeout)
        try:
            for response in call:
                yield delta_from_proto(response)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        finally:
            call.cancel()  # a no-op once the stream ended; otherwise the router aborts the request

    def complete(
        self, prompt: Prompt, params: SamplingParams | None = None, *, model: str = "", request_id: str = "",
        add_generation_prompt: bool = True, timeout: float | None = None,
    ) -> Completion:
        """Run the request to the end and return every sample."""
        builder = CompletionBuilder()
        for delta in self.generate(prompt, params, model=model, request_id=request_id,
                                   add_generation_prompt=add_generation_prompt, timeout=timeout):
            builder.add(delta)
        return builder.build()

    def abort(self, request_id: str) -> bool:
        try:
            response = self._router.Abort(common_pb2.AbortRequest(request_id=request_id), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        return response.aborted

    def list_models(self) -> list[ModelInfo]:
        try:
            return _models(self._router.ListModels(router_pb2.ListModelsRequest(), timeout=self.timeout))
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None

    def health(self, timeout: float = 5.0) -> bool:
        """Whether the router can serve now (it has a healthy decode worker)."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=timeout)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncTandemClient:
    """asyncio client (``grpc.aio``); create and use it inside one running event loop."""

    def __init__(self, address: str, timeout: float | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(address, options=GRPC_OPTIONS,
                                                  interceptors=aio_client_interceptors())
        self._router = router_pb2_grpc.RouterStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, *, model: str = "", request_id: str = "",
        add_generation_prompt: bool = True, timeout: float | None = None,
    ) -> AsyncIterator[GenerateDelta]:
        """Stream the request's deltas as the router sends them."""
        request = build_request(prompt, params, model, request_id, add_generation_prompt)
        call = self._router.Generate(request, timeout=timeout or self.timeout)
        try:
            async for response in call:
                yield delta_from_proto(response)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        finally:
            call.cancel()

    async def complete(
        self, prompt: Prompt, params: SamplingParams | None = None, *, model: str = "", request_id: str = "",
        add_generation_prompt: bool = True, timeout: float | None = None,
    ) -> Completion:
        """Run the request to the end and return every sample."""
        builder = CompletionBuilder()
        async for delta in self.generate(prompt, params, model=model, request_id=request_id,
                                         add_generation_prompt=add_generation_prompt, timeout=timeout):
            builder.add(delta)
        return builder.build()

    async def abort(self, request_id: str) -> bool:
        try:
            response = await self._router.Abort(common_pb2.AbortRequest(request_id=request_id), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        return response.aborted

    async def list_models(self) -> list[ModelInfo]:
        try:
            return _models(await self._router.ListModels(router_pb2.ListModelsRequest(), timeout=self.timeout))
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None

    async def health(self, timeout: float = 5.0) -> bool:
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=timeout)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

