"""A benchmark's tables in the README: the text between its two markers, replaced by this run's."""

from __future__ import annotations

from pathlib import Path


def replace_section(readme: Path, start_marker: str, end_marker: str, text: str) -> None:
    """Put ``text`` between the markers (each on its own line); no file or no markers: leave it be."""
    if not readme.is_file():
        return
    old = readme.read_text()
    start, end = old.find(start_marker), old.find(end_marker)
    if start < 0 or end < start:
        return
    readme.write_text(old[:start + len(start_marker)] + "\n" + text.strip() + "\n" + old[end:])
