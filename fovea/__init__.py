"""Fovea: learning from pixels (agents, generative models, classifiers, detectors) on one runtime.

    import fovea
    result = fovea.train("cnn-digits", epochs=3)      # a run folder, its figures, the trained model
    model = fovea.load(result.run_dir)                 # any family, one obvious method each
    fovea.recipes(); fovea.backbones(); fovea.config("cnn-digits", lr=3e-3)

The API lives in ``fovea.api`` and ``fovea.models`` and is imported when first used, so ``import fovea`` (and
``fovea --help``) stays cheap: no torch. ``fovea.config`` and ``fovea.backbones`` are also the modules of those
names (the typed configs, the backbone registry); calling them calls the API functions of the same names.
"""

import sys
import types

from fovea.errors import CheckpointError, ConfigError, FoveaError, RunError, UsageError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConfigError", "FoveaError", "Result", "RunError", "UsageError", "backbones", "config",
           "load", "recipes", "train"]  # fmt: skip
_API = ("Result", "load", "recipes", "train")  # in fovea.api; config and backbones are the callable modules below


class _CallableModule(types.ModuleType):
    """``fovea.config`` and ``fovea.backbones``: the modules, which when called run ``fovea.api.config`` and
    ``fovea.api.backbones``."""

    def __call__(self, *args, **kwargs):
        from fovea import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Fovea(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Importing a submodule sets it as an attribute of its package: fovea.config and fovea.backbones become
        # callable at that moment, however they were first imported.
        if name in ("config", "backbones") and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Fovea


def __getattr__(name: str):
    if name in _API:
        from fovea import api

        return getattr(api, name)
    if name in ("config", "backbones"):  # not imported yet: import it (which makes it callable)
        import importlib

        return importlib.import_module(f"fovea.{name}")
    raise AttributeError(f"module 'fovea' has no attribute {name!r}")
