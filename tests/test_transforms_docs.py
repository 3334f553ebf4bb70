"""docs/transforms.md's examples are tests: its ```python blocks run in order in one namespace (blocks whose fence
says ``python no-run`` are skipped). The examples assert their own results (a decreasing pose-refinement loss,
finite saliency, finite per-example gradients that differ between the objects, H·v against the Hessian,
Gauss-Newton steps that fit the pose, a nonzero sensitivity map).

Slow: the examples compile the tiny model and the renderer under several transforms.
"""
from __future__ import annotations

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "transforms.md"
pytestmark = pytest.mark.slow


def code_blocks(text):
    """(info string, code) of every fenced block."""
    return re.findall(r"^```([^\n]*)\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_code_blocks_are_found():
    blocks = code_blocks(DOC.read_text())
    runnable = [code for info, code in blocks if info.strip() == "python"]
    assert len(runnable) == 6 and any(info.strip() == "python no-run" for info, _ in blocks)


def test_transforms_doc_examples_run():
    namespace = {"__name__": "transforms_doc"}
    for index, (info, code) in enumerate(code_blocks(DOC.read_text())):
        if info.strip() == "python":
            exec(compile(code, f"{DOC}, code block {index}", "exec"), namespace)  # noqa: S102
    assert namespace["losses"][-1] < namespace["losses"][0]
