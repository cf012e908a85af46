"""The README's Quick start is exactly two lines, and CI runs the second one verbatim."""

from conftest import ROOT


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line.strip()]


def test_quick_start_is_two_lines():
    lines = quick_start()
    assert len(lines) == 2
    assert lines[0].endswith("python -m llamantino")
    assert lines[1].endswith("python -m pytest")


def test_ci_runs_the_readme_test_line():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == quick_start()[1]
