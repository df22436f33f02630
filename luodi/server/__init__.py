"""The OpenAI-compatible HTTP server: protocol, auth, errors, metrics and the web chat page.

Owns everything between an HTTP request and the engine's async interface. Must not know how a
model computes: it reaches generation only through `LLM` (tokenization, the chat template) and
`AsyncLLMEngine` (streams of `RequestOutput`). Start it with `luodi serve` or `create_app`.
"""

from luodi.server.app import create_app
from luodi.server.service import ModelService, ServerConfig

__all__ = ["ModelService", "ServerConfig", "create_app"]
