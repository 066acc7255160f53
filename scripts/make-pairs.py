#!/usr/bin/env python3
"""Writes N STS-B-like pairs for measuring crossenc on large data (issue 41).

Row k pairs STS-B train's first sentence of pair k with the second sentence of another pair
and carries a 0-5 score, so rows are the length of STS-B's (about 30 tokens a pair) and no two
nearby rows are equal. Deterministic: the same N gives the same file.

    scripts/make-pairs.py 1000000 pairs.jsonl      # JSONL: sentence1, sentence2, score
    scripts/make-pairs.py 1000000 pairs.csv        # CSV with a header row
"""
import csv
import json
import sys
from pathlib import Path

STSB = Path(__file__).resolve().parent.parent / "data/stsb/stsb-en-train.csv"


def main() -> None:
    if len(sys.argv) != 3 or not sys.argv[1].isdigit():
        sys.exit("usage: make-pairs.py N OUT.jsonl|OUT.csv")
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    with open(STSB, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if len(r) == 3]
    m = len(rows)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n") if out.suffix == ".csv" else None
        if writer:
            writer.writerow(["sentence1", "sentence2", "score"])
        for k in range(n):
            a, b = rows[k % m][0], rows[(k * 7919 + k // m) % m][1]
            score = round((k * 37 % 51) / 10, 1)
            if writer:
                writer.writerow([a, b, score])
            else:
                f.write(json.dumps({"sentence1": a, "sentence2": b, "score": score}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
