"""A corpus of real English prose for `clslm doc2lora train --data`, built offline from Debian documentation packages.

    .venv/bin/python benchmarks/prose_corpus.py build/prose-corpus            # fetch, extract, write
    OMP_NUM_THREADS=1 clslm doc2lora train --data build/prose-corpus ...

Needs `apt-get` and `dpkg-deb` (a Debian or Ubuntu machine whose apt sources reach Debian's archive; no root:
`apt-get download` writes the .deb files to the current folder and `dpkg-deb -x` unpacks them into a scratch
folder). Only the standard library is used; HTML is stripped with `html.parser`.

Sources (English only): the Debian Administrator's Handbook, the Debian Reference, the Debian Developer's
Reference, the Debian FAQ, the New Maintainers' Guide, the Python 3.11 documentation (tutorial, HOWTOs, FAQ,
What's New, language reference, library reference, setup) and the Jargon File. From the HTML the text of every
`<p>` element (and the Handbook's `<div class="para">`) is kept (code blocks, tables and navigation are dropped); from the Jargon File each entry
becomes one paragraph ("term (grammar): definition"). A paragraph is kept when it has at least 12 words and is
mostly letters. Consecutive paragraphs of one page are joined into pieces of at most 220 words (the size
`clslm doc2lora train` cuts plain text into), each source is capped at `--cap-words` words (a seeded sample of
its pieces), and the pieces of all sources are shuffled with `--seed` and written one per file,
`NNNNN-source.txt`, so that the trainer — which walks a folder's files in name order, keeping the last
`--val-docs` for validation — sees the sources mixed from its first step and validates on a mix.

The packages are Debian bookworm's (the versions apt offers then); the script prints each .deb's version and
sha256 and writes them with the piece counts to OUT/../<OUT name>.manifest.json. Nothing here is committed:
rebuild it with this script.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from clslm.strategies.doc2lora.corpus import WORDS, paragraph_pieces

MIN_WORDS = 12

PACKAGES = {
    # source name: (package, path globs inside the package)
    "handbook": ("debian-handbook", ["usr/share/doc/debian-handbook/html/en-US/*.html"]),
    "debian-reference": ("debian-reference-en", ["usr/share/debian-reference/*.en.html"]),
    "developers-reference": ("developers-reference", ["usr/share/developers-reference/*.html"]),
    "debian-faq": ("debian-faq", ["usr/share/doc/debian/FAQ/*.en.html"]),
    "maint-guide": ("maint-guide", ["usr/share/doc/maint-guide/html/*.en.html"]),
    "python-docs": (
        "python3.11-doc",
        [f"usr/share/doc/python3.11/html/{part}/**/*.html" for part in ("tutorial", "howto", "faq", "whatsnew", "reference", "library", "using", "installing", "distributing", "extending")],
    ),
    "jargon": ("jargon-text", ["usr/share/doc/jargon-text/jargon.txt.gz"]),
}
SKIP_PAGES = re.compile(r"(genindex|search|index\.html$|py-modindex|changelog|license|copyright)")


class Paragraphs(html.parser.HTMLParser):
    """The text of each <p> element and each <div class="para"> (the Handbook's paragraphs), outside <pre>,
    <table>, <nav>, <script>, <style>; whitespace collapsed."""

    SKIP = {"pre", "table", "nav", "script", "style", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.current: list[str] | None = None
        self.divs: list[bool] = []  # open <div>s: True for a paragraph

    def handle_starttag(self, tag, attrs):
        para_div = tag == "div" and "para" in (dict(attrs).get("class") or "").split()
        if tag == "div":
            self.divs.append(para_div)
        if tag in self.SKIP:
            self.skip += 1
        elif (tag == "p" or para_div) and not self.skip:
            self._flush()
            self.current = []

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "p" or (tag == "div" and self.divs and self.divs.pop()):
            self._flush()

    def handle_data(self, data):
        if self.current is not None and not self.skip:
            self.current.append(data)

    def _flush(self) -> None:
        if self.current is not None:
            self.out.append(" ".join("".join(self.current).split()))
        self.current = None

    def close(self):
        super().close()
        self._flush()


def prose(paragraph: str) -> bool:
    words = paragraph.split()
    if len(words) < MIN_WORDS:
        return False
    letters = sum(c.isalpha() for c in paragraph)
    return letters / max(1, len(paragraph)) > 0.7 and paragraph.count("$ ") < 2 and "©" not in paragraph


def html_pages(files: list[Path]) -> list[list[str]]:
    pages = []
    for file in files:
        parser = Paragraphs()
        parser.feed(file.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        pages.append([p.replace("¶", "").strip() for p in parser.out])
    return pages


def jargon_pages(file: Path) -> list[list[str]]:
    """The Jargon File's entries (':term: grammar' then indented paragraphs), one paragraph each, grouped 20 a page."""
    text = gzip.decompress(file.read_bytes()).decode("utf-8", errors="replace")
    entries, current = [], None
    for block in re.split(r"\n\s*\n", text):
        block = " ".join(block.split())
        head = re.match(r"^:([^:]+):\s*(.*)$", block)
        if head:
            if current:
                entries.append(current)
            term, grammar = head.group(1).strip(), head.group(2).strip().rstrip(",")
            current = [f"{term} ({grammar}):" if grammar else f"{term}:"]
        elif current is not None and block:
            current.append(block)
    if current:
        entries.append(current)
    paragraphs = [" ".join(e) for e in entries]
    return [paragraphs[i : i + 20] for i in range(0, len(paragraphs), 20)]


def fetch(package: str, debs: Path, root: Path) -> dict:
    if not list(debs.glob(f"{package}_*.deb")):
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, stdout=subprocess.DEVNULL)
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    target = root / package
    if not target.is_dir():
        partial = root / f"{package}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        partial.rename(target)
    return {"deb": deb.name, "bytes": deb.stat().st_size, "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write the pieces to (replaced)")
    parser.add_argument("--debs", type=Path, default=Path(tempfile.gettempdir()) / "clslm-prose-debs", help="where the .deb files are downloaded and unpacked (kept, reused)")
    parser.add_argument("--cap-words", type=int, default=300_000, help="at most this many words per source (a seeded sample of its pieces)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.debs.mkdir(parents=True, exist_ok=True)
    root = args.debs / "x"
    root.mkdir(exist_ok=True)
    rng = random.Random(args.seed)
    manifest, everything = {"sources": {}, "seed": args.seed, "cap_words": args.cap_words, "words_per_piece": WORDS}, []
    for source, (package, globs) in PACKAGES.items():
        info = fetch(package, args.debs, root)
        base = root / package
        files = sorted({f for g in globs for f in base.glob(g) if not SKIP_PAGES.search(f.name)})
        pages = jargon_pages(files[0]) if source == "jargon" else html_pages(files)
        mine = [p for page in pages for p in paragraph_pieces([q for q in page if prose(q)])]
        rng.shuffle(mine)
        kept, words = [], 0
        for piece in mine:
            n = len(piece.split())
            if words + n > args.cap_words:
                break
            kept.append(piece)
            words += n
        everything += [(source, piece) for piece in kept]
        manifest["sources"][source] = info | {"package": package, "files": len(files), "pieces": len(kept), "words": words, "pieces_available": len(mine)}
        print(f"{source:22s} {info['deb']:50s} {len(files):5d} files {len(kept):5d} pieces {words:8d} words (of {len(mine)} pieces)")
    rng.shuffle(everything)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for i, (source, piece) in enumerate(everything):
        (args.out / f"{i:05d}-{source}.txt").write_text(piece + "\n", encoding="utf-8")
    total = sum(len(p.encode()) for _, p in everything)
    manifest |= {"pieces": len(everything), "bytes": total, "words": sum(len(p.split()) for _, p in everything)}
    (args.out.parent / f"{args.out.name}.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(everything)} pieces, {manifest['words']} words, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
