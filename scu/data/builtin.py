"""Text that ships with every Python installation, for the offline demo and tests.

`stdlib_code` is Python source (a "base" domain); `pydoc_topics` is English reference prose
about Python (a fine-tuning domain). Both are read from the running interpreter, so no
download is ever needed.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path


def stdlib_code(max_chars: int = 2_000_000) -> list[str]:
    """Top-level stdlib modules as documents, sorted by name, up to `max_chars` in total."""
    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > max_chars:
            break
        docs.append(text)
        total += len(text)
    return docs


def pydoc_topics() -> list[str]:
    """The pydoc help topics (about 79 documents, 465 kB), sorted by topic name."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]
