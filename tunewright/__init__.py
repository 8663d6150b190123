"""tunewright: self-hosted LLM fine-tuning as three gRPC services.

Plugins implement hooks with ``from tunewright import hookimpl``.
"""

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "tunewright"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]
