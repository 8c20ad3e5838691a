"""The README's "From Python" block runs as printed, and the Python API it
shows is documented and typed."""

import inspect
import json
import re
from pathlib import Path

import pytest

import synthfed

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_from_python_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_block("### From Python"), "README.md", "exec"), {})
    ledger = json.loads(next((tmp_path / "runs" / "py" / "rounds").glob("round-*/ledger.json")).read_text())
    assert ledger  # a DP run: the privacy spent is recorded
    assert "differential-privacy" in (tmp_path / "data" / "py" / "README.md").read_text()
    report = json.loads((tmp_path / "reports" / "py" / "report.json").read_text())
    assert report["summary"]["utility"]["text"] in capsys.readouterr().out
    assert (tmp_path / "pipelines" / "py" / "model_index.json").is_file()


@pytest.mark.parametrize("name", synthfed.__all__)
def test_every_public_name_is_documented(name):
    obj = getattr(synthfed, name)
    if name == "__version__":
        assert isinstance(obj, str)
        return
    assert inspect.getdoc(obj) and len(inspect.getdoc(obj)) > 80, name
    if inspect.isfunction(obj):
        hints = inspect.signature(obj)
        assert hints.return_annotation is not inspect.Signature.empty, name


def test_the_package_says_it_is_typed():
    assert (Path(synthfed.__file__).parent / "py.typed").is_file()


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        synthfed.trian  # noqa: B018
