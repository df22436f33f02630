"""Assistant apps built on the engine (`LLM`), the knowledge base and constrained decoding.

Each app is a library function or small class; the CLI and the server call them. Apps know no HTTP.
"""
