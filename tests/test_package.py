"""The package imports without its extras, and a missing extra names itself."""

import subprocess
import sys

import pytest

from optprune._extras import require
from optprune.errors import MissingExtraError, OptpruneError, ValidationError


def test_import_is_light():
    code = ("import sys, optprune, optprune.alloc, optprune.solve; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_missing_extra_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"optprune\[onnx\]") as exc:
        require("onnx_not_installed_here", "onnx", "reading ONNX networks")
    assert isinstance(exc.value, ImportError) and isinstance(exc.value, OptpruneError)
    assert "reading ONNX networks" in str(exc.value)


def test_errors_are_builtin_subclasses():
    assert issubclass(ValidationError, ValueError)


def test_lazy_top_level_names():
    import optprune

    assert optprune.AllocationProblem.__name__ == "AllocationProblem"
    with pytest.raises(AttributeError):
        optprune.no_such_thing  # noqa: B018
