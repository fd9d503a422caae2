"""bench.readme_section: a benchmark's tables put between the README's markers, nothing else touched."""

from __future__ import annotations

from bench.readme_section import replace_section

START, END = "<!-- x:start -->", "<!-- x:end -->"


def test_replaces_what_is_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n{START}\nold table\n{END}\nrest\n")
    replace_section(readme, START, END, "\n| new | table |\n\n")
    assert readme.read_text() == f"# Title\n{START}\n| new | table |\n{END}\nrest\n"


def test_leaves_a_readme_without_both_markers_alone(tmp_path):
    for text in ["no markers\n", f"{START} only\n", f"{END}\nbefore the start\n{START}\n"]:
        readme = tmp_path / "README.md"
        readme.write_text(text)
        replace_section(readme, START, END, "table")
        assert readme.read_text() == text


def test_no_readme_no_file(tmp_path):
    replace_section(tmp_path / "README.md", START, END, "table")
    assert not (tmp_path / "README.md").exists()
