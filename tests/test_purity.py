"""dpcore stays pure: importing it loads neither Beam nor TensorFlow."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import dpcore


def test_importing_every_dpcore_module_loads_no_beam_or_tensorflow():
    modules = [f"dpcore.{m.name}" for m in pkgutil.iter_modules(dpcore.__path__)]
    pure = [m for m in modules if m not in PURE_EXCEPTIONS]
    code = ("import importlib, sys\n"
            f"for name in {pure!r}: importlib.import_module(name)\n"
            "bad = [m for m in ('apache_beam', 'tensorflow', 'keras') if m in sys.modules]\n"
            "print(','.join(bad))\n")
    output = python_output(code).strip()
    assert output == "", f"dpcore imported {output}"


def test_no_dpcore_module_imports_beam_at_all():
    code = ("import importlib, pkgutil, sys, dpcore\n"
            "for m in pkgutil.iter_modules(dpcore.__path__): importlib.import_module('dpcore.' + m.name)\n"
            "print('apache_beam' in sys.modules)\n")
    assert python_output(code).strip() == "False"


def test_cli_help_does_not_load_tensorflow():
    code = ("import sys\nfrom beam_pipelines.cli import build_parser\nbuild_parser()\n"
            "print('tensorflow' in sys.modules, 'apache_beam' in sys.modules)\n")
    assert python_output(code).strip() == "False False"


# Modules that exist to hold TensorFlow code (the model zoo, the trainer). They are
# still never imported by ``import dpcore`` or by any other dpcore module at import time (the test
# above covers the rest).
PURE_EXCEPTIONS: set[str] = {"dpcore.models", "dpcore.trainer"}


def test_import_dpcore_alone_loads_nothing_heavy():
    code = "import sys, dpcore\nprint([m for m in ('apache_beam', 'tensorflow', 'keras') if m in sys.modules])\n"
    assert python_output(code).strip() == "[]"


def test_no_test_skips_itself():
    """A missing dependency or file must fail the suite, not skip a test (a skipped test proves nothing)."""
    from pathlib import Path
    tests = Path(__file__).parent
    skipping = [f"{path.relative_to(tests)}:{number}" for path in sorted(tests.rglob("*.py"))
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if any(word in line for word in ("importorskip(", "pytest.skip(", "mark.skipif(", "mark.skip("))
                and path.name != "test_purity.py"]
    assert skipping == []


def test_loading_tensorflow_leaves_out_keras_unused_extras_and_keeps_them_importable():
    """load_tensorflow keeps scikit-learn and matplotlib.pyplot (Keras 3's optional extras, ~1.4 CPU-s of
    the import) out, Keras still builds and runs a model and loads a checkpoint's model module, and both
    libraries import normally afterwards (evaluate and the charts need them)."""
    code = ("import sys\n"
            "from dpcore.tensorflow_runtime import load_tensorflow\n"
            "tf = load_tensorflow()\n"
            "import keras\n"
            "import dpcore.models\n"
            "model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n"
            "out = model.predict_on_batch(tf.ones((4, 3)))\n"
            "print(sorted(m for m in ('sklearn', 'matplotlib.pyplot') if m in sys.modules), out.shape)\n"
            "import sklearn.base, matplotlib.pyplot\n"
            "print(sklearn.base.BaseEstimator.__module__, matplotlib.pyplot.__name__)\n")
    output = python_output(code)
    assert output.split("\n")[:2] == ["[] (4, 2)", "sklearn.base matplotlib.pyplot"], output


def test_loading_tensorflow_keeps_extras_loaded_before_it():
    """A program that loaded scikit-learn before TensorFlow keeps its module (nothing is taken out)."""
    code = ("import sys, sklearn\n"
            "before = sys.modules['sklearn']\n"
            "from dpcore.tensorflow_runtime import load_tensorflow\n"
            "load_tensorflow()\n"
            "import keras.src.wrappers.fixes as fixes\n"
            "print(sys.modules['sklearn'] is before, fixes.sklearn is before)\n")
    assert python_output(code).strip() == "True True"


def python_output(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (which must exit 0)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
