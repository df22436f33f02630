"""The `luodi` command as a user runs it: exit codes and one-line messages, real model output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from model_cache import cache_home, pulled_model_path

SMOLLM2 = "smollm2-135m-instruct"


def luodi(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUODI_HOME": str(cache_home()), **(env or {})}
    return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True, input=stdin,
                          env=env, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    message = " ".join(lines)
    for needle in needles:
        assert needle in message, message


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return pulled_model_path(SMOLLM2)


def test_unknown_catalog_name():
    assert_one_line_error(luodi("generate", "-m", "no-such-model", "-p", "hi"), "no-such-model", "luodi models")


@pytest.mark.parametrize(("args", "message"), [
    (("generate", "-m", SMOLLM2), "Missing option '--prompt'"),
    (("generate", "--bogus"), "No such option: --bogus"),
    (("nosuchcmd",), "No such command 'nosuchcmd'"),
])
def test_usage_errors_print_usage_not_a_traceback(args, message):
    result = luodi(*args)
    assert result.returncode == 2
    assert_one_line_error(result, message, "--help")


def test_missing_gguf_path(tmp_path):
    assert_one_line_error(luodi("generate", "-m", str(tmp_path / "absent.gguf"), "-p", "hi"), "does not exist")


def test_truncated_gguf(tmp_path, smollm2):
    broken = tmp_path / "broken.gguf"
    with open(smollm2, "rb") as src:
        broken.write_bytes(src.read(5_000_000))
    assert_one_line_error(luodi("generate", "-m", str(broken), "-p", "hi"), "broken.gguf", "truncated")


def test_unknown_architecture(tmp_path):
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_one_line_error(luodi("generate", "-m", str(path), "-p", "hi"), "bert", "llama")


def test_invalid_sampling_value(smollm2):
    assert_one_line_error(luodi("generate", "-p", "hi", "--temperature", "5"), "temperature")


def test_prompt_longer_than_context(smollm2):
    result = luodi("generate", "-p", "-", "--raw", "-n", "8", stdin="hello " * 9000)
    assert_one_line_error(result, "context window", "8192")


def test_generate_json_reports_tokens_and_timings(smollm2):
    result = luodi("generate", "-p", "What is 2+2?", "-n", "12", "-t", "0", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["completion_tokens"] == len(data["completion_token_ids"]) <= 12
    assert data["finish_reason"] in ("stop", "length")
    assert data["prompt_tokens"] > 5 and data["ttft_s"] > 0 and data["decode_tok_s"] > 0
    assert "4" in data["text"]


def test_chat_reads_piped_stdin_and_resets(smollm2):
    result = luodi("chat", "-t", "0", "-n", "16", stdin="What is the capital of France?\n/reset\nSay hi.\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_models_lists_pulled(smollm2):
    result = luodi("models")
    assert result.returncode == 0 and SMOLLM2 in result.stdout


def test_cuda_requested_without_gpu(smollm2):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line_error(luodi("generate", "-p", "hi", "--device", "cuda"), "no CUDA GPU", "--device cpu")


def test_unknown_dtype(smollm2):
    assert_one_line_error(luodi("generate", "-p", "hi", "--dtype", "float64"), "float64", "bfloat16")


def test_chat_without_a_template_says_so_and_completes():
    pulled_model_path("gemma3-270m")
    result = luodi("chat", "-m", "gemma3-270m", "-t", "0", "-n", "8", stdin="The capital of France is\n")
    assert result.returncode == 0, result.stderr
    assert "no chat template" in result.stderr and "plain text" in result.stderr
    assert result.stdout.strip()  # a plain continuation of the line


@pytest.mark.parametrize("prompt", ["", "   ", "\ufeff\u200b"])
def test_generate_refuses_an_empty_prompt(prompt):
    result = luodi("generate", "-p", prompt)
    assert result.returncode == 2
    assert_one_line_error(result, "--prompt", "is empty")
    assert not result.stdout


def test_chat_never_sends_an_empty_message(smollm2):
    """Blank and invisible-only lines are skipped, not sent: no answer is produced for them."""
    result = luodi("chat", "-t", "0", "-n", "4", stdin="\n   \n\ufeff\n\u200b\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_help_and_usage_errors_do_not_import_torch():
    """`luodi --help`, a command's --help and a usage error answer without loading the model stack."""
    probe = (
        "import sys\n"
        "from luodi.cli.main import main\n"
        "sys.argv = ['luodi', *sys.argv[1:]]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'transformers', 'fastapi') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'EXIT', code)\n"
    )
    for args, code in ((["--help"], 0), (["generate", "--help"], 0), (["kb", "add", "--help"], 0),
                       (["serve", "--bogus"], 2), (["nosuchcmd"], 2)):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert f"HEAVY [] EXIT {code}" in result.stdout, (args, result.stdout[-300:], result.stderr[-300:])


def test_eval_off_a_terminal_reports_progress_in_plain_lines(smollm2):
    """Piped stderr gets plain progress lines (a live bar would draw nothing there)."""
    result = luodi("eval", "--seq-len", "32", "--max-windows", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("loading ") and "(100 %), done in" in line for line in lines), result.stderr
    assert "scoring 3 windows: 0/3 (0 %)" in lines, result.stderr
    assert any(line.startswith("scoring 3 windows: 3/3 (100 %), done in") for line in lines), result.stderr
    assert "\x1b[" not in result.stderr  # no terminal escape codes in a log
    assert "perplexity_per_byte" in result.stdout


def test_speculative_decoding_on_and_off_give_the_same_tokens(smollm2):
    """--speculative ngram verifies prompt-lookup drafts; the tokens are those of --speculative none
    (batch-invariant kernels, the default: a verified position's logits equal its decode step's bit for bit)."""
    prompt = "Repeat exactly: The train to Lyon leaves at 9:40 from platform 7, the one to Nice at 10:15."
    outputs = {}
    for method in ("none", "ngram"):
        result = luodi("generate", "-p", prompt, "-n", "32", "-t", "0", "--json", "--speculative", method)
        assert result.returncode == 0, result.stderr
        outputs[method] = json.loads(result.stdout)["completion_token_ids"]
    assert outputs["ngram"] == outputs["none"] and len(outputs["none"]) > 10
    result = luodi("chat", "-t", "0", "-n", "8", "--speculative", "none", stdin="Say hi.\n/exit\n")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


@pytest.mark.parametrize("command", [("generate", "-p", "hi"), ("chat",), ("serve", "--port", "0")])
def test_an_unknown_speculative_method_is_one_line_error(command):
    result = luodi(*command, "--speculative", "eagle", stdin="hi\n")
    assert_one_line_error(result, "'eagle'", "none, ngram")


def test_kernels_shows_the_path_of_each_kernel_group():
    from luodi.kernels.report import cpu_kernel_paths

    result = luodi("kernels")
    assert result.returncode == 0, result.stderr
    rows = [" ".join(line.split()) for line in result.stdout.splitlines()]
    for path in cpu_kernel_paths():
        assert any(row.startswith(f"{path.kernels} {path.path}") for row in rows), (path, result.stdout)
