"""The mutation score per module from ``mutmut results --all true`` (docs/testing.md).

    mutmut results --all true | python tools/mutation_score.py [--equivalent FILE] [--survivors]

score = killed / (mutants - equivalent); a mutant no selected test reaches ("no tests") or that
survives counts against it; a timeout counts as killed (the mutant hung the code). ``--equivalent``:
a file of mutant names (one a line, ``#`` comments) judged equivalent by reading them.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict

LINE = re.compile(r"^\s*(?P<name>[\w.]+?)\.x(?:_|ǁ)(?P<func>\S+?)__mutmut_\d+: (?P<status>.+)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--equivalent", help="file of mutant names judged equivalent")
    ap.add_argument("--survivors", action="store_true", help="list the survivors and the untested")
    args = ap.parse_args()
    equivalent = set()
    if args.equivalent:
        for line in open(args.equivalent, encoding="utf-8"):
            line = line.split("#", 1)[0].strip()
            if line:
                equivalent.add(line)
    counts: dict[str, Counter] = defaultdict(Counter)
    left: list[str] = []
    for raw in sys.stdin:
        m = LINE.match(raw.rstrip())
        if not m:
            continue
        mutant = raw.split(":")[0].strip()
        status = "equivalent" if mutant in equivalent else m["status"].strip()
        counts[m["name"]][status] += 1
        if status in ("survived", "no tests"):
            left.append(f"{mutant}: {status}")
    print("| module | mutants | killed | timeout | survived | no tests | equivalent | not checked | score |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|--:|")
    total = Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        print(_row(module, c))
    print(_row("**all**", total))
    if args.survivors:
        print("\n" + "\n".join(left))


def _row(name: str, c: Counter) -> str:
    n = sum(c.values())
    killed = c["killed"] + c["timeout"]
    judged = n - c["equivalent"] - c["not checked"]
    score = f"{100 * killed / judged:.1f}%" if judged else "-"
    return (f"| {name} | {n} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no tests']} | "
            f"{c['equivalent']} | {c['not checked']} | {score} |")


if __name__ == "__main__":
    main()
