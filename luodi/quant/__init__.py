"""Quantization: low-bit weights and the modules that run them (`weight_only`, `linear`, `w8a8`),
choosing how to scale them from calibration text (`calibration`, `smoothing`), Luodi's saved
format (`format`), the `luodi quantize` flow (`quantize`) and how much a model lost (`evaluate`).

It sits above the models (it rewrites their linear layers and folds scales into their norms)
and uses the naive reference forward for calibration and evaluation; it knows nothing of the
scheduler, the server or the CLI.
"""
