"""The OpenAI-compatible HTTP gateway: FastAPI in front of a router's gRPC Generate stream."""
