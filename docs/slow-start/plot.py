#!/usr/bin/env python3
"""Plots the newcomer's share over its slow-start window from the table in
docs/slow-start.md (the output of the integration test
`slow_start::a_new_endpoints_share_grows_over_its_window_as_the_formula_says`):
the formula as lines, the measured shares as dots, one colour per aggression.
Writes docs/slow-start/share.svg. No dependencies beyond Python 3.

    python3 docs/slow-start/plot.py
"""
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
DOC = HERE.parent / "slow-start.md"

rows = []
in_table = False
for line in DOC.read_text().splitlines():
    if line.startswith("| t (s) | aggression"):
        in_table = True
        continue
    if in_table:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].startswith("---"):
            continue
        rows.append([float(cells[0])] + [float(c.rstrip("%")) for c in cells[1:]])

W, H = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 60, 170, 40, 50
t_max = max(r[0] for r in rows)
y_max = 55.0


def x(t):
    return LEFT + (W - LEFT - RIGHT) * t / t_max


def y(share):
    return H - BOTTOM - (H - TOP - BOTTOM) * share / y_max


colours = ["#1f77b4", "#d62728", "#2ca02c"]
labels = ["aggression 1 (linear)", "aggression 2", "aggression 0.5"]
out = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
    f'font-family="sans-serif" font-size="12">',
    f'<rect width="{W}" height="{H}" fill="white"/>',
    f'<text x="{W / 2 - 60}" y="22" font-size="15" text-anchor="middle">'
    "A new endpoint's share, one of two of weight 1 (30 s window, 10% minimum)</text>",
]
for share in range(0, 51, 10):
    out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(share)}" y2="{y(share)}" stroke="#ddd"/>')
    out.append(f'<text x="{LEFT - 8}" y="{y(share) + 4}" text-anchor="end">{share}%</text>')
for t in range(0, int(t_max) + 1, 4):
    out.append(f'<text x="{x(t)}" y="{H - BOTTOM + 18}" text-anchor="middle">{t}</text>')
out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">seconds since it joined</text>')
out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(0)}" y2="{y(0)}" stroke="black"/>')
out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{y(0)}" y2="{y(y_max)}" stroke="black"/>')
for k, colour in enumerate(colours):
    formula = " ".join(f"{x(r[0]):.1f},{y(r[1 + 2 * k]):.1f}" for r in rows)
    out.append(f'<polyline points="{formula}" fill="none" stroke="{colour}" stroke-width="2"/>')
    for r in rows:
        out.append(f'<circle cx="{x(r[0]):.1f}" cy="{y(r[2 + 2 * k]):.1f}" r="3" fill="{colour}"/>')
    ly = TOP + 20 + 22 * k
    out.append(f'<line x1="{W - RIGHT + 12}" x2="{W - RIGHT + 32}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
    out.append(f'<text x="{W - RIGHT + 38}" y="{ly + 4}">{labels[k]}</text>')
ly = TOP + 20 + 22 * 3
out.append(f'<circle cx="{W - RIGHT + 22}" cy="{ly}" r="3" fill="#555"/>')
out.append(f'<text x="{W - RIGHT + 38}" y="{ly + 4}">measured (dots)</text>')
out.append(f'<text x="{W - RIGHT + 38}" y="{ly + 22}">formula (lines)</text>')
out.append("</svg>")
(HERE / "share.svg").write_text("\n".join(out) + "\n")
print(f"wrote {HERE / 'share.svg'} from {len(rows)} rows")
