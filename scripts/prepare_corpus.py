"""The reproductions' training corpus: text files rewritten as UTF-8 with one paragraph per line.

Gutenberg books are hard-wrapped at about 70 columns; joined, a paragraph's sentences sit in one
line, so packing puts running prose (not line fragments and newline runs) into each sequence.
`gutenberg/chesterton-ball.txt` is Latin-1; the KJV's verse numbers ("12 And the earth ...") are
dropped. A file is rewritten only when its text differs: the packed-data cache is keyed by the
files.

    python scripts/prepare_corpus.py OUT_DIR FILE...
"""

import re
import sys
from pathlib import Path

VERSE_NUMBER = re.compile(r"^\d+ ")


def paragraphs(text: str) -> list[str]:
    """The blank-line-separated blocks of `text`, each one line, verse numbers dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = (VERSE_NUMBER.sub("", line.strip()) for line in block.splitlines())
        if paragraph := " ".join(line for line in lines if line):
            out.append(paragraph)
    return out


def main(out: Path, sources: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for source in sources:
        raw = source.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        text = "\n".join(paragraphs(text)) + "\n"
        target = out / source.name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
