"""Quantization: the numerics of low-bit weights and the inference modules that run them.

This package knows torch and the model's linear layers; it knows nothing of requests, the
engine, tokenizers or file formats beyond the state_dict names its modules save.
"""
