"""The README's model examples run as written (and stay short)."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _model_examples():
    text = README.read_text()
    section = text.split("## Models from building blocks", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_two_model_examples():
    blocks = _model_examples()
    assert len(blocks) == 2
    for code in blocks:
        assert len(code.strip().splitlines()) < 30


@pytest.mark.filterwarnings("error:radius_graph")  # an example must not truncate its graph
@pytest.mark.parametrize("index", [0, 1], ids=["o3_classifier", "so2_vectors"])
def test_readme_model_example_runs(index):
    code = _model_examples()[index]
    exec(compile(code, f"README.md example {index}", "exec"), {})
