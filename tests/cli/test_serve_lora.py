"""`luodi serve --lora NAME=DIR`: each bad value is refused with one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_cache import cache_home, pulled_model_path
from safetensors.torch import save_file

SMOLLM2 = "smollm2-135m-instruct"


def serve(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUODI_HOME": str(cache_home())}
    return subprocess.run([sys.executable, "-m", "luodi", "serve", "--port", "0", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    message = " ".join(errors)
    for needle in needles:
        assert needle in message, result.stderr


def _adapter(path: Path, hidden: int) -> Path:
    """A peft-format adapter on layer 0's q_proj of a model `hidden` wide."""
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                          "target_modules": ["q_proj"]}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": torch.zeros(2, hidden), f"{prefix}.lora_B.weight": torch.zeros(hidden, 2)},
              str(path / "adapter_model.safetensors"))
    return path


@pytest.mark.parametrize("value,needle", [
    ("nodir", "is not NAME=DIR"),
    ("a:b=/tmp", "is not NAME=DIR"),
    ("x=/no/such/dir", "is not a directory"),
])
def test_bad_lora_values(value, needle):
    assert_one_line_error(serve("--lora", value), needle)


def test_not_an_adapter(tmp_path):
    assert_one_line_error(serve("--lora", f"x={tmp_path}"), "is not a LoRA adapter", "adapter_config.json")


def test_adapter_for_another_model(tmp_path):
    adapter = _adapter(tmp_path / "small", hidden=64)
    result = serve("-m", str(pulled_model_path(SMOLLM2)), "--lora", f"small={adapter}")
    assert_one_line_error(result, "could not serve", "trained for another model")
