"""Structured output: grammar backends that implement `luodi.engine.grammar`'s Protocols."""
