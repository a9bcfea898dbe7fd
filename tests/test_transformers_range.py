"""The transformers releases pyproject.toml admits load the converted folder, in both layouts (--target
llama and qwen2), with AutoModelForCausalLM / AutoTokenizer and compute the Qwen reference's
function: the oldest allowed (the floor, 4.45.0), the last 4.x (4.57.6) and the installed 5.x. Each
older release is installed once with pip into ~/.cache/qwen2llama (about 110 MB) and put first on
PYTHONPATH for a child process; a folder with gate/up swapped must fail the same comparison."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtimes"))
from case import judge, prepare_case, run_probe  # noqa: E402
from overlay import transformers_overlay  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def case(request, tmp_path_factory):
    """The folder in each output layout (--target)."""
    return prepare_case(tmp_path_factory.mktemp("range") / "case", preset="tiny", target=request.param)


@pytest.mark.parametrize("version", ["4.45.0", "4.57.6", "installed"])
def test_release_loads_the_folder_and_matches_the_reference(case, tmp_path, version):
    pythonpath = None if version == "installed" else str(transformers_overlay(version))
    run_probe(sys.executable, "probe_transformers.py", case, tmp_path, pythonpath)
    row = judge(case, tmp_path)
    if version != "installed":
        assert row["version"] == version
    assert row["ids_equal"] and row["chat_template_equal"], row
    assert row["good"]["agrees"] and row["good"]["worst"] <= 1e-5, row["good"]
    assert not row["gate_up_swapped"]["agrees"] and row["gate_up_swapped"]["worst"] > 1e-2
    assert row["passed"]
