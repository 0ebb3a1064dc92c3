"""Import stand-in for a package ComfyUI imports at load time but the GPU round never calls
(torchvision, av), installed by benchmarks/gpu_round.sh as that package's __init__.py, and used only
where the real package is missing.

Every attribute is a placeholder class whose attributes are placeholders too, and every submodule
(`torchvision.transforms.functional`) is another stand-in, so module-level code such as
`{InterpolationMode.BICUBIC: "bicubic"}` imports; calling a placeholder fails loudly.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__name__} is an import stand-in (benchmarks/gpu_round.sh): install the real package")


def _module_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Placeholder(name, (), {})


class _Submodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.root + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = _module_getattr
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


__getattr__ = _module_getattr
sys.meta_path.append(_Submodules(__name__.split(".")[0]))
