"""The quantized runtime: low-bit weights and the modules that run them (`weight_only`, `linear`,
`w8a8`), and Luodi's saved format (`format`).

It knows no model: a model's config reaches the format as the HF `config.json` dictionary, and
the tools that load models to quantize or evaluate them live above the models
(`luodi.quant_tools`). It knows nothing of the scheduler, the server or the CLI.
"""
