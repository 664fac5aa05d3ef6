"""Optional compiled build: the hot modules compiled by Cython from their unchanged Python source.

The pure-Python modules stay the reference and the fallback: without Cython or with one outside the range
pyproject.toml's [build-system] requires (the range tested), without a C compiler, with PYLOGD_NO_EXTENSIONS=1
at build time, or when compiling fails, pylogd installs as pure Python.  At run
time PYLOGD_PURE_PYTHON=1 ignores compiled modules that are installed (see pylogd/__init__.py).
"""

import os
import runpy
import sys
import tomllib

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.extension import Extension

# after setuptools, which makes the copy of packaging it vendors importable where none is installed
from packaging.requirements import Requirement  # isort: skip

HERE = os.path.dirname(os.path.abspath(__file__))
# read from the source file: importing pylogd here would need it installed
HOT_MODULES = runpy.run_path(os.path.join(HERE, "pylogd", "compiled.py"))["HOT_MODULES"]


def warn(message: str) -> None:
    print(f"pylogd: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """A module that does not compile is left to its pure-Python source, never a failed install."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:  # gcc on the generated C is most of an install's time
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers
            warn(f"compiled modules not built ({exc}); installing the pure-Python modules only")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            warn(f"{ext.name} not compiled ({exc}); it runs as pure Python")


def tested_range(project: str) -> Requirement:
    """The requirement pyproject.toml's [build-system] states for ``project``: the range CI builds with."""
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
        requires = [Requirement(r) for r in tomllib.load(f)["build-system"]["requires"]]
    (found,) = (r for r in requires if r.name.lower() == project.lower())
    return found


def extensions() -> list[Extension]:
    if os.environ.get("PYLOGD_NO_EXTENSIONS"):
        return []
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        warn("Cython is not available; installing the pure-Python modules only")
        return []
    # pip's isolated build installs a Cython in range; `setup.py build_ext` and --no-build-isolation use the
    # one at hand, and an untested release can compile into modules that fail or, worse, answer wrongly
    wanted = tested_range("Cython")
    if not wanted.specifier.contains(Cython.__version__):
        warn(
            f"Cython {Cython.__version__} is outside the tested range {wanted}; installing the pure-Python modules only"
        )
        return []
    modules = [Extension(name, [path]) for name, path in HOT_MODULES.items()]
    return cythonize(
        modules,
        compiler_directives={"language_level": "3", "binding": True},
        build_dir="build/cython",
        nthreads=os.cpu_count() or 1,
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
