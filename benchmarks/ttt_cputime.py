"""CPU seconds (process time on one thread: robust to other jobs on the machine) of ttt's learn per variant.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ttt_cputime.py dev-01 '' 'prefix_cache=false'
Each variant (KEY=VALUE,... of ttt's options; '' for the defaults) learns the document in a fresh copy of the
model; REPS=N in the environment repeats the round.
"""

from __future__ import annotations

import copy
import os
import sys
import time

import torch

from clslm.benchdata import load_facts
from clslm.documents import Document
from clslm.models import load_model, resolve_model
from clslm.strategies.base import StrategyContext
from clslm.strategies.config import parse_options
from clslm.strategies.ttt import TTT, TTTConfig


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    doc_id, variants = sys.argv[1], sys.argv[2:]
    record = {d.id: d for d in load_facts(None)}[doc_id]
    source = resolve_model("smollm2-135m")
    base, tokenizer = load_model(source, device="cpu", dtype="float32")
    for rep in range(int(os.environ.get("REPS", "1"))):
        for variant in variants:
            config = parse_options(TTTConfig, dict(item.split("=", 1) for item in variant.split(",") if item))
            strategy = TTT(copy.deepcopy(base), tokenizer, config, StrategyContext(model_fingerprint=source.fingerprint))
            cpu0, wall0 = time.process_time(), time.perf_counter()
            report = strategy.learn(Document(doc_id, record.document))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            print(f"[{variant}] rep {rep}: cpu {cpu:.1f} s = {cpu / report.tokens * 1000:.1f} cpu-s/1k, wall {wall:.1f}, loss {report.loss_before}->{report.loss_after}", flush=True)


if __name__ == "__main__":
    main()
