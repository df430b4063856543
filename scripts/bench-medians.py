#!/usr/bin/env python3
"""Prints the median (and mean) of every criterion benchmark under target/criterion."""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
for f in sorted(root.glob("**/new/estimates.json")):
    e = json.loads(f.read_text())
    name = str(f.parent.parent.relative_to(root))
    med, mean = e["median"]["point_estimate"], e["mean"]["point_estimate"]
    unit, div = ("µs", 1e3) if med < 1e6 else ("ms", 1e6)
    print(f"{name:45} median {med / div:9.2f} {unit}   mean {mean / div:9.2f} {unit}")
