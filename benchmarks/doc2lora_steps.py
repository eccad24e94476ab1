"""Steps the hypernetwork's start saves: refined doc2lora from its LoRA (init=hypernet) against a zero LoRA
of the same shapes (init=zero), each document learned alone in a fresh model copy.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/doc2lora_steps.py dev-01,dev-02,dev-03 --epochs 1,2,4 -o objective=next-token

For each start and each epoch count: the document's questions answered (contains-answer), the steps and
seconds the refinement took, and the training loss per step (the step losses of the longest run say how many
steps the zero start needs to reach the loss the hypernetwork's start reaches).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

from clslm.benchdata import load_facts
from clslm.documents import Document
from clslm.models import load_model, resolve_model
from clslm.paths import clslm_home
from clslm.scoring import contains_answer
from clslm.strategies.base import StrategyContext
from clslm.strategies.config import parse_options
from clslm.strategies.doc2lora import Doc2LoRA, Doc2LoRAConfig


def run(base, tokenizer, fingerprint: str, record, options: dict[str, str]) -> dict:
    config = parse_options(Doc2LoRAConfig, options)
    strategy = Doc2LoRA(copy.deepcopy(base), tokenizer, config, StrategyContext(fingerprint, cache_dir=clslm_home()))
    losses: list[float] = []
    start = time.perf_counter()
    report = strategy.learn(Document(record.id, record.document), on_step=lambda s: s.loss is not None and s.phase == "refinement" and losses.append(round(s.loss, 4)))
    seconds = time.perf_counter() - start
    hits = sum(contains_answer(strategy.answer(qa.question, max_new_tokens=40).text, list(qa.answers)) for qa in record.qa)
    phases = report.extra.get("phase_seconds", {})
    steps_seconds = sum(phases.get(k, 0.0) for k in ("forward", "backward", "optimizer"))
    return {"hits": hits, "questions": len(record.qa), "steps": report.extra.get("steps"), "learn_s": round(seconds, 2), "steps_s": round(steps_seconds, 2), "tokens": report.tokens, "losses": losses}


def first_at_or_below(losses: list[float], target: float, window: int) -> int | None:
    """The first step whose mean loss over the last `window` steps is at most `target` (None: never)."""
    for i in range(window, len(losses) + 1):
        if sum(losses[i - window : i]) / window <= target:
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", help="comma-separated document ids of the facts set")
    parser.add_argument("--epochs", default="1,2,4", help="comma-separated epoch counts")
    parser.add_argument("-o", dest="options", action="append", default=[], help="KEY=VALUE doc2lora options for both starts")
    parser.add_argument("--facts", default=None)
    parser.add_argument("--json", dest="json_out", default=None, help="write every run here")
    args = parser.parse_args()
    records = {doc.id: doc for doc in load_facts(args.facts)}
    source = resolve_model("smollm2-135m")
    base, tokenizer = load_model(source, device="cpu", dtype="float32")
    options = dict(o.split("=", 1) for o in args.options)
    runs = []
    for doc_id in args.ids.split(","):
        for init in ("hypernet", "zero"):
            for epochs in [int(e) for e in args.epochs.split(",")]:
                result = run(base, tokenizer, source.fingerprint, records[doc_id], options | {"mode": "refined", "init": init, "epochs": str(epochs)})
                runs.append({"doc": doc_id, "init": init, "epochs": epochs} | result)
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "losses"}), flush=True)
    summarize(runs)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(runs, f, indent=1)


def summarize(runs: list[dict]) -> None:
    epochs = sorted({r["epochs"] for r in runs})
    print("| epochs | start | answered | steps | step seconds | learn seconds |")
    print("|---:|---|---:|---:|---:|---:|")
    for e in epochs:
        for init in ("hypernet", "zero"):
            rs = [r for r in runs if r["epochs"] == e and r["init"] == init]
            print(f"| {e} | {init} | {sum(r['hits'] for r in rs)}/{sum(r['questions'] for r in rs)} | {sum(r['steps'] for r in rs)} | {sum(r['steps_s'] for r in rs):.1f} | {sum(r['learn_s'] for r in rs):.1f} |")
    longest = max(epochs)
    for doc in sorted({r["doc"] for r in runs}):
        hyper = next(r for r in runs if r["doc"] == doc and r["init"] == "hypernet" and r["epochs"] == longest)
        zero = next(r for r in runs if r["doc"] == doc and r["init"] == "zero" and r["epochs"] == longest)
        per_epoch = max(1, hyper["steps"] // max(1, longest))
        for e in [e for e in epochs if e > 0]:
            target = sum(hyper["losses"][e * per_epoch - per_epoch : e * per_epoch]) / per_epoch
            reached = first_at_or_below(zero["losses"], target, per_epoch)
            print(f"{doc}: hypernet start after {e * per_epoch} steps has loss {target:.3f}; the zero start reaches it after {reached if reached is not None else '>' + str(len(zero['losses']))} steps")


if __name__ == "__main__":
    main()
