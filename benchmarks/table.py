"""Render benchmarks/results/engine_speed.json as the README's markdown table.

    python benchmarks/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "engine_speed.json"
COLUMNS = ("pp128", "pp512", "tg128", "b8_tg", "peak_rss_mb")
ENGINES = ("luodi", "llama.cpp", "transformers", "luodi-fp32", "luodi-fp16")


def main() -> None:
    report = json.loads(RESULTS.read_text())
    print("| model | engine | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for model, summary in report["models"].items():
        for engine in ENGINES:
            row = summary.get(engine)
            if row and "error" not in row:
                cells = [f"{row[c]:.0f}" if c in row else "–" for c in COLUMNS]
                print(f"| {model} | {engine} | " + " | ".join(cells) + " |")
        for peer in ("transformers", "llama.cpp"):
            ratios = summary.get(f"luodi_vs_{peer}")
            if ratios:
                cells = [f"{ratios[c]:.2f}×" if c in ratios else "–" for c in COLUMNS]
                print(f"| {model} | **luodi ÷ {peer}** | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
