"""Execute the tutorials (``examples/0*.py``, jupytext percent format) as notebooks
and render them, with their figures, to Markdown under ``examples/rendered/``.

    python examples/render.py [tutorial.py ...]

``tests/test_tutorials.py`` executes the same notebooks (without writing them).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import jupytext
from nbclient import NotebookClient
from nbconvert import MarkdownExporter

HERE = Path(__file__).resolve().parent
RENDERED = HERE / "rendered"


def tutorials():
    return sorted(HERE.glob("0*.py"))


def execute(path: Path, timeout: int = 900):
    """The tutorial at ``path`` as an executed notebook (raises on any error)."""
    nb = jupytext.read(path)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def render(path: Path, out_dir: Path = RENDERED) -> Path:
    """Execute ``path`` and write ``<stem>.md`` and its figures to ``out_dir``."""
    nb = execute(path)
    files = f"{path.stem}_files"
    body, resources = MarkdownExporter().from_notebook_node(
        nb, resources={"output_files_dir": files, "unique_key": path.stem})
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / files, ignore_errors=True)  # no figures of an older run
    for name, data in resources.get("outputs", {}).items():
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    md = out_dir / f"{path.stem}.md"
    md.write_text(body)
    return md


def main(argv=None):
    paths = [Path(p) for p in (argv or sys.argv[1:])] or tutorials()
    for path in paths:
        start = time.time()
        md = render(path.resolve())
        print(f"{path.name}: executed and rendered to {md.relative_to(HERE.parent)} "
              f"in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
