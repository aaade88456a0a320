"""Build script for pyg_implicit and its compiled extension ``pyg_implicit._C``.

The C++ (CPU) sources in ``csrc/*.cpp`` and ``csrc/cpu/*.cpp`` are always
compiled.  The CUDA sources in ``csrc/cuda/*.cu`` are compiled as well when
torch was built with CUDA and either a GPU is visible or ``FORCE_CUDA=1``;
``FORCE_ONLY_CPU=1`` skips them.  ``TORCH_CUDA_ARCH_LIST`` and ``MAX_JOBS``
are honoured (they are read by ``torch.utils.cpp_extension``);
``PYG_IMPLICIT_PTXAS_VERBOSE=1`` prints ptxas' register and shared-memory use.
The CUDA toolkit is chosen by ``csrc/find_cuda_home.py``.

Install with ``pip install --no-build-isolation -e .``.
"""
import glob
import os
import sys

from setuptools import find_namespace_packages, find_packages, setup

# torch.utils.cpp_extension reads CUDA_HOME when it is imported: point it at
# the real toolkit before that (a /usr/local/bin/nvcc shim otherwise makes
# torch guess /usr/local and fail to link). csrc/find_cuda_home.py decides.
def _find_cuda_home():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "find_cuda_home.py")
    spec = importlib.util.spec_from_file_location("find_cuda_home", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_cuda_home()


_CUDA_HOME, _NO_CUDA_REASON = _find_cuda_home()
if _CUDA_HOME is not None:
    os.environ["CUDA_HOME"] = _CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    BuildExtension, CppExtension, CUDAExtension)

ROOT = os.path.dirname(os.path.abspath(__file__))


def _truthy(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _nvidia_include_dirs():
    """CUDA headers shipped in pip packages (``site-packages/nvidia/cu13/include``)."""
    dirs = []
    try:
        import nvidia  # namespace package installed with the CUDA build of torch
        roots = list(getattr(nvidia, "__path__", []))
    except ImportError:
        roots = []
    for root in roots:
        for sub in ("cu13", "cu12"):
            inc = os.path.join(root, sub, "include")
            if os.path.isdir(inc):
                dirs.append(inc)
    return dirs


def _with_cuda():
    if _truthy("FORCE_ONLY_CPU"):
        return False
    if torch.version.cuda is None:
        return False
    return torch.cuda.is_available() or _truthy("FORCE_CUDA")


def _openmp_flags():
    """Compile/link flags so that at::parallel_for uses torch's OpenMP backend."""
    cfg = torch.__config__.parallel_info()
    if "OpenMP" not in cfg.split("parallel backend:")[-1]:
        return [], []
    if sys.platform == "darwin":
        return ["-Xpreprocessor", "-fopenmp"], []
    return ["-fopenmp"], ["-fopenmp"]


def get_extensions():
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
                  + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cuda_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
                       + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))

    omp_cflags, omp_lflags = _openmp_flags()
    cxx_flags = ["-O3", "-fvisibility=hidden"] + omp_cflags
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    extra_link_args = list(omp_lflags)

    use_cuda = _with_cuda() and len(cuda_sources) > 0
    if use_cuda and _CUDA_HOME is None:
        raise RuntimeError(f"pyg_implicit: CUDA build requested but {_NO_CUDA_REASON} "
                           f"(or FORCE_ONLY_CPU=1 for a CPU-only build)")
    if use_cuda:
        print(f"pyg_implicit: CUDA toolkit {_CUDA_HOME}")
        define_macros.append(("WITH_CUDA", None))
        include_dirs += _nvidia_include_dirs()
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr",
                      "-lineinfo"]
        if _truthy("PYG_IMPLICIT_PTXAS_VERBOSE"):  # registers, spills, smem per kernel
            nvcc_flags.append("-Xptxas=-v")
        ext = CUDAExtension(
            "pyg_implicit._C", sources + cuda_sources,
            include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=extra_link_args)
    else:
        ext = CppExtension(
            "pyg_implicit._C", sources,
            include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link_args)
    print(f"pyg_implicit: building _C with {'CPU+CUDA' if use_cuda else 'CPU only'} "
          f"({len(sources)} C++ and {len(cuda_sources) if use_cuda else 0} CUDA sources)")
    return [ext]


def get_packages():
    """``pyg_implicit`` and all its subpackages (also folders with Python
    files that lack an ``__init__.py``)."""
    pkgs = set(find_packages(include=["pyg_implicit", "pyg_implicit.*"]))
    for p in find_namespace_packages(include=["pyg_implicit", "pyg_implicit.*"]):
        folder = os.path.join(ROOT, *p.split("."))
        if "__pycache__" not in p and glob.glob(os.path.join(folder, "*.py")):
            pkgs.add(p)
    return sorted(pkgs)


# name, version (pyg_implicit.__version__) and dependencies: pyproject.toml
setup(
    packages=get_packages(),
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
