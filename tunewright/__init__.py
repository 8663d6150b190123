"""tunewright: self-hosted LLM fine-tuning as three gRPC services.

Plugins implement hooks with ``from tunewright import hookimpl``; programs call the services
with ``from tunewright import Client`` (see ``tunewright.client``).
"""

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "tunewright"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "Client", "ServiceError", "__version__", "hookimpl"]


def __getattr__(name: str):
    # The client pulls in gRPC and the generated stubs; plugins importing ``hookimpl`` need neither.
    if name in ("Client", "ServiceError"):
        from tunewright import client

        return getattr(client, name)
    raise AttributeError(f"module 'tunewright' has no attribute {name!r}")
