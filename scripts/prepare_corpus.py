"""The reproductions' training corpus: text files rewritten as UTF-8 with one paragraph per line.

Gutenberg books are hard-wrapped at about 70 columns; joined, a paragraph's sentences sit in one
line (`dlm_jax.data.sources.joined_paragraphs`, as for the built-in corpus), so packing puts
running prose into each sequence, not line fragments and newline runs.
`gutenberg/chesterton-ball.txt` is Latin-1; the KJV's verse numbers ("12 And the earth ...") are
dropped. A file is rewritten only when its text differs: the packed-data cache is keyed by the
files.

    python scripts/prepare_corpus.py OUT_DIR FILE...
"""

import re
import sys
from pathlib import Path

from dlm_jax.data.sources import joined_paragraphs

VERSE_NUMBER = re.compile(r"^\d+ ")  # at the start of a stripped line


def main(out: Path, sources: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for source in sources:
        raw = source.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        paragraphs = joined_paragraphs(
            text.replace("\r\n", "\n"), clean_line=lambda line: VERSE_NUMBER.sub("", line.strip())
        )
        text = "\n".join(paragraphs) + "\n"
        target = out / source.name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
