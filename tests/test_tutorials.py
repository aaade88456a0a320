"""The four tutorials (examples/0*.py) execute as notebooks, without error, and
show figures; their own assertions check the claims they make."""
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_spec = importlib.util.spec_from_file_location("render", EXAMPLES / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


def test_the_four_tutorials_are_there():
    assert [p.name for p in render.tutorials()] == [
        "01_kernels_and_bases.py", "02_grid_convolution.py", "03_point_convolution.py",
        "04_o3_point_cloud_model.py"]
    for p in render.tutorials():  # and their executed, rendered versions
        assert (render.RENDERED / f"{p.stem}.md").exists(), p


@pytest.mark.parametrize("path", render.tutorials(), ids=lambda p: p.stem)
def test_tutorial_executes(path):
    nb = render.execute(path)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{path.name} shows {len(images)} figures"
