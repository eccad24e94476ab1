"""Where one ttt learn spends its time: torch.profiler's operators, largest self time first.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ttt_profile.py dev-06 ['KEY=VALUE,...'] [--shapes]
A warm-up learn (dev-02) fills the neuron-statistics cache first, so the profiled learn is the one a user's
second document gets. `--shapes` groups operators by input shape (which tensors the time goes to).
"""

from __future__ import annotations

import argparse
import copy

from torch.profiler import ProfilerActivity, profile

from clslm.benchdata import load_facts
from clslm.documents import Document
from clslm.models import load_model, resolve_model
from clslm.paths import clslm_home
from clslm.strategies.base import StrategyContext
from clslm.strategies.config import parse_options
from clslm.strategies.ttt import TTT, TTTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("doc", help="a document id of the bundled facts set")
    parser.add_argument("options", nargs="?", default="", help="KEY=VALUE,... of ttt's options")
    parser.add_argument("--shapes", action="store_true", help="group operators by input shape")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    records = {d.id: d for d in load_facts(None)}
    source = resolve_model("smollm2-135m")
    base, tokenizer = load_model(source, device="cpu", dtype="float32")
    config = parse_options(TTTConfig, dict(item.split("=", 1) for item in args.options.split(",") if item))

    def fresh() -> TTT:
        return TTT(copy.deepcopy(base), tokenizer, config, StrategyContext(source.fingerprint, cache_dir=clslm_home()))

    fresh().learn(Document("dev-02", records["dev-02"].document))
    strategy = fresh()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        report = strategy.learn(Document(args.doc, records[args.doc].document))
    print(f"{args.doc}: {report.tokens} tokens, {report.seconds} s under the profiler; phases {report.extra['phase_seconds']}")
    table = prof.key_averages(group_by_input_shape=args.shapes)
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48, max_shapes_column_width=60))


if __name__ == "__main__":
    main()
