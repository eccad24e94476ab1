"""Calibrate the router threshold (router.py): how document questions and general questions score.

Tunes on the first half of a facts set, reports on the second half (never tune on reported figures).
Usage: python benchmarks/router_threshold.py [FACTS] [GENERAL]
"""

import json
import sys
from importlib.resources import files

from clslm.strategies.router import DocumentKeys, scores


def load(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def split_scores(docs, general):
    keys = [DocumentKeys.from_text(d["document"]) for d in docs]
    own = [scores(keys, qa["question"])[i] for i, d in enumerate(docs) for qa in d["qa"]]
    top = [max(scores(keys, g["question"])) for g in general]
    return own, top


def report(own, top, threshold):
    hit = sum(s >= threshold for s in own) / len(own)
    leak = sum(s >= threshold for s in top) / len(top)
    return f"threshold {threshold:.2f}: document questions routed {hit:.3f}, general questions routed {leak:.3f}"


if __name__ == "__main__":
    data = files("clslm").joinpath("data")
    facts = load(sys.argv[1] if len(sys.argv) > 1 else data / "facts-dev.jsonl")
    general = load(sys.argv[2] if len(sys.argv) > 2 else data / "general-dev.jsonl")
    half = len(facts) // 2
    own, top = split_scores(facts[:half], general[:100])
    best = max((t / 100 for t in range(5, 60)), key=lambda t: sum(s >= t for s in own) / len(own) - 2 * sum(s >= t for s in top) / len(top))
    print("tune  (docs 1-%d, general 1-100):  " % half + report(own, top, best))
    own, top = split_scores(facts[half:], general[100:])
    print("held out (docs %d-%d, general 101-200): " % (half + 1, len(facts)) + report(own, top, best))
