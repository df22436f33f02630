"""Luodi (落地): run open language models privately and fast on the hardware you already have."""

__version__ = "0.1.0"
