"""OpenAI-compatible speech server for Resemble AI's Chatterbox models, with T3 served by vLLM."""

from .log_config import configure_inherited_logging

__version__ = "0.1.0"

# A process the server starts (vLLM spawns its engine core, which imports this package before vLLM) logs as the
# server does from its first line; in any other process this does nothing.
configure_inherited_logging()
