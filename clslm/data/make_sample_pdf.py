"""Render sample-report.md into sample-report.pdf, the bundled demo PDF.

Rerun after editing the markdown (from the repository root):

    .venv/bin/python clslm/data/make_sample_pdf.py

It needs PyMuPDF (``import pymupdf``).  The output is two A4 pages: the
``# title`` and ``## section`` headings in larger bold Helvetica, the
paragraphs wrapped and justified in Times.  Only the PDF base-14 fonts are
used, drawn without text shaping, so ``page.get_text()`` gives back plain
words (no ligature characters such as U+FB01 for "fi").  A section starts a new
page when it does not fit whole on the current one, so no sentence is split
across the page break.  Metadata is fixed and no document id is generated, so
rerunning on the same markdown with the same PyMuPDF gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import pymupdf

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "sample-report.md"
TARGET = HERE / "sample-report.pdf"

PAGE = pymupdf.paper_rect("a4")  # 595 x 842 points
MARGIN = 64  # points
EXPECTED_PAGES = 2

# (font name, size in points, space before, space after) per block kind
STYLES = {
    "h1": ("hebo", 20, 0, 10),  # Helvetica-Bold
    "h2": ("hebo", 13, 10, 4),
    "p": ("tiro", 11.5, 0, 6),  # Times-Roman
}
LINE_HEIGHT = 1.3
ALIGN = {"h1": pymupdf.TEXT_ALIGN_LEFT, "h2": pymupdf.TEXT_ALIGN_LEFT, "p": pymupdf.TEXT_ALIGN_JUSTIFY}

METADATA = {
    "title": "The Varrow Observatory",
    "author": "clslm sample data (invented)",
    "subject": "Invented two-page report for the clslm demo",
    "keywords": "",
    "creator": "clslm/data/make_sample_pdf.py",
    "producer": "PyMuPDF",
    "creationDate": "",
    "modDate": "",
    "trapped": "",
}


def parse_sections(markdown: str) -> list[list[tuple[str, str]]]:
    """Blocks (kind, text) grouped by section; the title goes with the first section.

    Only the markdown the report uses: ``#``/``##`` headings and paragraphs.
    """
    sections: list[list[tuple[str, str]]] = [[]]
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            sections[-1].append(("p", " ".join(paragraph)))
            paragraph.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if not line:
            flush()
        elif line.startswith("## "):
            flush()
            if any(kind != "h1" for kind, _ in sections[-1]):
                sections.append([])
            sections[-1].append(("h2", line[3:].strip()))
        elif line.startswith("# "):
            flush()
            sections[-1].append(("h1", line[2:].strip()))
        else:
            paragraph.append(line)
    flush()
    return [s for s in sections if s]


def block_height(kind: str, text: str, width: float) -> float:
    """Height the block's wrapped text takes, measured on a scratch page."""
    font, size, _, _ = STYLES[kind]
    scratch = pymupdf.open()
    page = scratch.new_page(width=PAGE.width, height=PAGE.height)
    box = pymupdf.Rect(0, 0, width, PAGE.height)
    left = page.insert_textbox(box, text, fontname=font, fontsize=size, lineheight=LINE_HEIGHT, align=ALIGN[kind])
    scratch.close()
    if left < 0:
        raise SystemExit(f"block longer than a page: {text[:60]!r}")
    return box.height - left


def section_height(section: list[tuple[str, str]], width: float) -> float:
    return sum(STYLES[k][2] + block_height(k, t, width) + STYLES[k][3] for k, t in section)


def render(markdown: str) -> pymupdf.Document:
    frame = PAGE + (MARGIN, MARGIN, -MARGIN, -MARGIN)
    doc = pymupdf.open()
    page, y = None, frame.y1
    for section in parse_sections(markdown):
        if page is None or y + section_height(section, frame.width) > frame.y1:
            page, y = doc.new_page(width=PAGE.width, height=PAGE.height), frame.y0
            first_on_page = True
        for kind, text in section:
            font, size, before, after = STYLES[kind]
            if not first_on_page:
                y += before
            first_on_page = False
            height = block_height(kind, text, frame.width)
            box = pymupdf.Rect(frame.x0, y, frame.x1, y + height + 1)
            left = page.insert_textbox(
                box, text, fontname=font, fontsize=size, lineheight=LINE_HEIGHT, align=ALIGN[kind]
            )
            if left < 0:
                raise SystemExit(f"text did not fit its measured box: {text[:60]!r}")
            y += height + after
    return doc


def main() -> None:
    doc = render(SOURCE.read_text(encoding="utf-8"))
    if doc.page_count != EXPECTED_PAGES:
        raise SystemExit(
            f"rendered {doc.page_count} pages, expected {EXPECTED_PAGES}: "
            "change the report's length or the styles above"
        )
    doc.set_metadata(METADATA)
    doc.del_xml_metadata()
    data = doc.tobytes(garbage=4, deflate=True, no_new_id=True)
    TARGET.write_bytes(data)
    print(f"wrote {TARGET} ({doc.page_count} pages, {len(data):,} bytes)")


if __name__ == "__main__":
    main()
