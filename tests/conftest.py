"""Suite-wide pytest setup. Its presence puts `tests/` on sys.path, so test modules can
`from model_cache import pulled_model_path`."""
