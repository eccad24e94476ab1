"""How doc2lora's chunk and document LoRAs should combine: KL to the in-context teacher on a document's own
questions (lower is better), and the mean answer NLL of the first 12 general questions (drift).

    .venv/bin/python benchmarks/doc2lora_combine.py dev-04,dev-05 --others dev-06,dev-07

For each document: no LoRA; its chunk LoRAs summed (concat) or averaged (mean); then with the LoRAs of the
`--others` documents added as a session would hold them: summed, or averaged over the documents.
"""

from __future__ import annotations

import argparse

import torch

from clslm.benchdata import load_facts, load_general
from clslm.likelihood import answer_nll
from clslm.models import load_model, resolve_model
from clslm.strategies.doc2lora import lora
from clslm.strategies.doc2lora.distill import kl_loss, question_probe, teach
from clslm.strategies.doc2lora.hypernet import load_hypernet
from clslm.strategies.doc2lora.reading import chunks, read_chunks, reader_prefix
from clslm.strategies.doc2lora.strategy import BUNDLED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", help="comma-separated document ids of the facts set")
    parser.add_argument("--others", default="dev-06,dev-07", help="documents learned alongside each one")
    parser.add_argument("--hypernet", default=str(BUNDLED))
    args = parser.parse_args()
    model, tokenizer = load_model(resolve_model("smollm2-135m"), device="cpu", dtype="float32")
    net = load_hypernet(args.hypernet)
    names = lora.module_names(model, net.config.layers, net.config.targets)
    prefix, facts, general = reader_prefix(tokenizer), {d.id: d for d in load_facts()}, load_general()[:12]

    def parts(doc) -> list[lora.Factors]:
        pieces = chunks(tokenizer, doc.document, net.config.chunk_tokens)
        return [dict(zip(names, net(r))) for r in read_chunks(model, prefix, pieces, net.config.layers, names)]

    def measure(targets, factors) -> str:
        with torch.no_grad(), lora.applied(model, factors):
            kl = float(kl_loss(model, targets, tokenizer.pad_token_id))
            nll = sum(answer_nll(model, tokenizer, g.question, g.answers[0]) for g in general) / len(general)
        return f"KL {kl:.3f}  general NLL {nll:.3f}"

    others = [lora.mean(parts(facts[i])) for i in args.others.split(",")]
    for doc_id in args.ids.split(","):
        doc = facts[doc_id]
        document = [t for piece in chunks(tokenizer, doc.document, net.config.chunk_tokens) for t in piece]
        targets = teach(model, tokenizer, prefix, document, [question_probe(q.question, q.answers[0]) for q in doc.qa])
        own = parts(doc)
        rows = {
            "no LoRA": {},
            "chunks summed (concat)": lora.concat(own),
            "chunks averaged (mean)": lora.mean(own),
            "+ others, documents summed": lora.concat([lora.mean(own), *others]),
            "+ others, documents averaged": lora.mean([lora.mean(own), *others]),
        }
        print(f"{doc_id} ({len(own)} chunks)")
        for label, factors in rows.items():
            print(f"  {label:30s} {measure(targets, factors)}")


if __name__ == "__main__":
    main()
