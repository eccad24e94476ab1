"""Cold and warm `clslm ask` on a learned session: where a fresh process's seconds go.

    .venv/bin/python benchmarks/ask_latency.py SESSION "QUESTION" [--runs 5]

Each run is a fresh `clslm ask --json` process (cold: process start to exit, as a user waits); the answer's
own `seconds` is the generation alone (warm: what a second question in the same process costs). For scale,
the same number of bare `python -c "import torch"` and `python -c "import transformers..."` processes.
Medians of `--runs` runs, alternating, with the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROBES = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "python -c 'import torch, transformers; AutoModelForCausalLM'": [sys.executable, "-c", "import torch; from transformers import AutoModelForCausalLM, LlamaForCausalLM"],
}


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("session")
    parser.add_argument("question")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    clslm = [os.path.join(os.path.dirname(sys.executable), "clslm"), "ask", args.question, "-s", args.session, "--json"]
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    cold, generating, probes = [], [], {name: [] for name in PROBES}
    for run in range(args.runs):
        seconds, out = timed(clslm)
        answer = json.loads(out.strip().splitlines()[-1])
        cold.append(seconds)
        generating.append(answer["seconds"])
        for name, command in PROBES.items():
            probes[name].append(timed(command)[0])
        print(f"run {run + 1}: cold ask {seconds:.2f} s, of it generating {answer['seconds']:.2f} s", flush=True)
    print(f"answer: {answer['answer']!r}")
    print(f"cold ask (median of {args.runs}): {statistics.median(cold):.2f} s")
    print(f"generating (warm ask): {statistics.median(generating):.2f} s")
    print(f"start-up (cold - generating): {statistics.median(c - g for c, g in zip(cold, generating)):.2f} s")
    for name, values in probes.items():
        print(f"{name}: {statistics.median(values):.2f} s")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
