"""Label savings at every horizon from one ``curate simulate`` result: for H = 1 .. rounds, the labels each strategy
needs to reach random's accuracy after H rounds, as a fraction of random's labels then (the curves cut at H
rounds), and whether it is ever below random within them (mean over seeds).

    .venv/bin/python bench/simulate_horizons.py digits10.json --from 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from curation.simulate.simulation import horizon_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="a curate simulate --out JSON")
    parser.add_argument("--from", dest="first", type=int, default=1, help="first horizon (rounds)")
    args = parser.parse_args()
    data = json.loads(args.result.read_text())
    curves = {
        name: {int(n): (p["mean"], p["std"]) for n, p in points.items()} for name, points in data["curves"].items()
    }
    table = horizon_table(curves, data["initial"], data["step"], data["rounds"])
    names = [n for n in curves if n != "random"]
    print("| rounds | random labels | " + " | ".join(names) + " |")
    print("|---:|---:|" + "---:|" * len(names))
    for h, row in table.items():
        if h < args.first:
            continue
        cells = []
        for name in names:
            fraction, below = row["strategies"][name]
            text = "not reached" if fraction is None else f"{fraction:.0%}"
            cells.append(text + (" (below random)" if below else ""))
        print(f"| {h} | {row['random_labels']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
