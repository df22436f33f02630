"""Render the benchmark results as the README's markdown tables.

    python benchmarks/table.py           # engine_speed.json
    python benchmarks/table.py --quant   # quant_report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "engine_speed.json"
QUANT_RESULTS = RESULTS.with_name("quant_report.json")
PEERS = {"int8": "Q8_0", "int4-g32": "Q4_0", "w8a8-auto": "Q8_0"}  # as in quant_report.py
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


def quant_table() -> None:
    report = json.loads(QUANT_RESULTS.read_text())
    print("| model | scheme | size ÷ bf16 | Δppl/byte | greedy agreement | pp512 | tg128 | "
          "tg ÷ llama.cpp | tg ÷ bandwidth limit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model, r in report["models"].items():
        accuracy, speed, limit = r.get("accuracy", {}), r["speed"], r["bandwidth_limit_tg"]
        for scheme, size in r["size_vs_bf16"].items():
            engine = scheme if scheme.startswith("llama.cpp") else f"luodi-{scheme}"
            acc, sp = accuracy.get(scheme, {}), speed.get(engine, {})
            peer = speed.get(f"llama.cpp-{PEERS[scheme]}", {}) if scheme in PEERS else {}
            cells = [
                f"{size:.3f}",
                f"{acc['delta_ppl_pct']:+.2f} %" if "delta_ppl_pct" in acc else "–",
                f"{acc['greedy_agreement']:.3f}" if "greedy_agreement" in acc else "–",
                f"{sp['pp512']:.0f}" if "pp512" in sp else "–",
                f"{sp['tg128']:.1f}" if "tg128" in sp else "–",
                f"{sp['tg128'] / peer['tg128']:.2f}× {PEERS[scheme]}" if peer.get("tg128") and "tg128" in sp else "–",
                f"{limit[engine]['fraction']:.2f}" if limit.get(engine, {}).get("fraction") else "–",
            ]
            print(f"| {model} | {scheme} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    quant_table() if "--quant" in sys.argv[1:] else main()
