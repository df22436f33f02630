"""Quantization tools: making a quantized model from a float one, and judging what it lost.

Choosing how to scale weights from calibration text (`calibration`, `smoothing`: SmoothQuant and
AWQ), GPTQ's error-feedback rounding (`gptq`), the `luodi quantize` / `luodi convert` flow
(`quantize`), the bundled calibration and held-out texts (`texts`) and the quality figures
(`evaluate`: perplexity per byte, greedy agreement).

It sits above the models: it loads them, runs the naive reference forward
(`luodi.models.reference`), rewrites their linear layers with the runtime's modules
(`luodi.quant`) and folds scales into their norms. It knows nothing of the engine, the server or
the CLI; nothing below it imports it.
"""
