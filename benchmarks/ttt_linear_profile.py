"""CPU seconds (process time, one thread) of one ttt-linear learn, by phase: the examples and the frozen prefix,
TF-IDF gating, the reported loss before/after, training.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ttt_linear_profile.py dev-01 'keys=mlp,lr=2e-3,vocab=0' 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ttt_linear_profile.py dev-01 '' 2

Arguments: a document id of the bundled dev set, ttt-linear's options (KEY=VALUE,...; '' for the defaults), the
number of rounds (the second round also prints cProfile's top functions). Phases are timed by wrapping the
strategy module's functions, so the learn itself is unchanged.
"""
import cProfile
import copy
import io
import pstats
import sys
import time

import torch
from clslm.benchdata import load_facts
from clslm.documents import Document
from clslm.models import load_model, resolve_model
from clslm.paths import clslm_home
from clslm.strategies.base import StrategyContext
from clslm.strategies.config import parse_options
from clslm.strategies import ttt_linear as tl

torch.set_num_threads(1)
doc_id, variant = sys.argv[1], sys.argv[2]
record = {d.id: d for d in load_facts(None)}[doc_id]
source = resolve_model("smollm2-135m")
base, tokenizer = load_model(source, device="cpu", dtype="float32")
config = parse_options(tl.TTTLinearConfig, dict(i.split("=", 1) for i in variant.split(",") if i))
phases = {}
def timed(name, fn):
    def wrap(*a, **k):
        t = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0) + time.process_time() - t
    return wrap
tl.mean_loss = timed("probe loss before/after", tl.mean_loss)
tl.descend = timed("training (descend)", tl.descend)
tl.key_neurons = timed("tfidf gating", tl.key_neurons)
tl.TTTLinear._batches = timed("examples + frozen prefix", tl.TTTLinear._batches)
for rep in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1):
    phases.clear()
    s = tl.TTTLinear(copy.deepcopy(base), tokenizer, config, StrategyContext(source.fingerprint, cache_dir=clslm_home()))
    prof = cProfile.Profile() if rep == 1 else None
    t = time.process_time()
    if prof: prof.enable()
    r = s.learn(Document(doc_id, record.document))
    if prof: prof.disable()
    cpu = time.process_time() - t
    print(f"[{variant}] rep {rep}: {r.tokens} tok, cpu {cpu:.1f}s = {cpu / r.tokens * 1000:.1f} CPU-s/1k; steps {r.extra['steps']}; loss {r.loss_before}->{r.loss_after}", flush=True)
    print("   ", {k: round(v, 1) for k, v in phases.items()}, flush=True)
    if prof:
        out = io.StringIO(); pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18); print(out.getvalue()[-4000:])
