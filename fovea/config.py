"""Typed configs, validated on construction, overridable from the command line, and named recipes.

A config is a keyword-only dataclass deriving from ``Config``, with a docstring under every field
(CleanRL's ``Args``): the config is the documentation of the knobs. On construction each field is
checked against its type (int, float, bool, str, Literal, tuples, nested configs) and the bounds
given with ``param(..., gt=0)``; then ``validate()`` checks what spans several fields. A bad value
raises ``ConfigError`` naming the field, the value and what is allowed.

A recipe is a named config instance registered by the package that owns it, tied to that
package's ``train`` (and ``evaluate``) function through ``register_task``.
"""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from fovea import backbones
from fovea.errors import ConfigError

C = TypeVar("C", bound="Config")
_BOUNDS = {"gt": (lambda v, b: v > b, ">"), "ge": (lambda v, b: v >= b, ">="),
           "lt": (lambda v, b: v < b, "<"), "le": (lambda v, b: v <= b, "<=")}  # fmt: skip


def param(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
          le: float | None = None) -> Any:  # fmt: skip
    """A dataclass field with bounds, e.g. ``lr: float = param(1e-3, gt=0)``."""
    bounds = {k: v for k, v in {"gt": gt, "ge": ge, "lt": lt, "le": le}.items() if v is not None}
    return field(default=default, metadata={"bounds": bounds})


def suggest(name: str, choices: list[str]) -> str:
    """'did you mean a, b?' with the closest valid names, or the full list when none is close."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(sorted(choices))}"


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in get_args(tp))
    if get_origin(tp) is tuple or tp is tuple:
        args = get_args(tp)
        if args and args[-1] is not Ellipsis:
            return "a tuple of " + ", ".join(_describe(a) for a in args)
        return f"a tuple of {_describe(args[0])}" if args else "a tuple"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "none"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp``; strings from the command line and lists from JSON are converted."""
    origin, args = (tuple, ()) if tp is tuple else (get_origin(tp), get_args(tp))
    bad = ConfigError(f"{where} = {value!r} is not allowed: expected {_describe(tp)}")
    if origin in (types.UnionType, typing.Union):
        is_none = value is None or (isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return coerce(value, a, where)
                except ConfigError:
                    pass
        raise bad
    if origin is Literal:
        if value in args:
            return value
        hint = suggest(str(value), [str(a) for a in args]) if isinstance(value, str) else ""
        raise ConfigError(
            f"{where} = {value!r} is not allowed: expected {_describe(tp)}" + (f"; {hint}" if hint else "")
        )
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, list | tuple):
            raise bad
        if not args or args[-1] is Ellipsis:  # tuple[int, ...] (or a bare tuple: any items)
            return tuple(coerce(v, args[0], where) for v in value) if args else tuple(value)
        if len(value) != len(args):  # tuple[int, str]: one item per type
            raise bad
        return tuple(coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, where)
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise bad
    if tp is int:
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                raise bad from None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise bad
    raise TypeError(f"{where}: unsupported config type {tp!r}")


# Set while overrides are applied one field at a time: the checks that span fields run once, on the result, so the
# order of the overrides does not matter (--num-envs 2 --num-minibatches 2 as well as the other way round).
_DEFER_VALIDATE: contextvars.ContextVar[bool] = contextvars.ContextVar("defer_validate", default=False)


@dataclass(kw_only=True)
class Config:
    """Base of every config: checks types and bounds on construction, then calls ``validate()``."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{type(self).__name__}.{f.name}"
            value = coerce(getattr(self, f.name), hints[f.name], where)
            for k, bound in f.metadata.get("bounds", {}).items():
                ok, op = _BOUNDS[k]
                if value is not None and not ok(value, bound):
                    raise ConfigError(f"{where} = {value!r} is not allowed: it must be {op} {bound}")
            object.__setattr__(self, f.name, value)
        if not _DEFER_VALIDATE.get():
            self.validate()

    def validate(self) -> None:
        """Checks that span several fields; raise ``ConfigError`` naming the field."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        return json_ready(dataclasses.asdict(self))


def json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def from_dict(cls: type[C], data: dict[str, Any], where: str | None = None) -> C:
    """Build ``cls`` from a dict (e.g. a run's config.json); unknown keys are refused."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of field names to values; got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    data = cls.upgrade(dict(data)) if hasattr(cls, "upgrade") else data
    for k in data:
        if k not in names:
            raise ConfigError(f"{where} has no field {k!r}; {suggest(k, names)}")
    return cls(**data)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and its bases), by reading the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in zip(body, body[1:], strict=False):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):  # fmt: skip
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


@dataclass(kw_only=True)
class BackboneSpec(Config):
    """Which registered backbone to build, and its options (``--backbone resnet --backbone.depth 8``)."""

    name: str = "convnet"
    """A registered backbone (see ``backbones.names()``)."""
    options: dict = field(default_factory=dict)
    """Keyword options of that backbone; unset ones keep the backbone's defaults."""

    def validate(self) -> None:
        if self.name not in backbones.names():
            raise ConfigError(
                f"backbone = {self.name!r} is not a registered backbone; {suggest(self.name, backbones.names())}"
            )
        hints = self.option_types()
        for k, v in list(self.options.items()):
            if k not in hints:
                raise ConfigError(f"backbone {self.name!r} has no option {k!r}; it takes: {', '.join(hints)}")
            self.options[k] = coerce(v, hints[k], f"backbone.{k}")

    def option_types(self) -> dict[str, Any]:
        """The options the backbone's constructor takes, with their types."""
        cls = backbones.entry(self.name).cls
        hints = typing.get_type_hints(cls.__init__)
        return {
            p: hints.get(p, str) for p in inspect.signature(cls.__init__).parameters if p not in ("self", "in_shape")
        }

    def build(self, in_shape: tuple[int, ...] | int, **fixed: Any):
        """The backbone for inputs of ``in_shape``; ``fixed`` options (set by the model) win."""
        return backbones.build(self.name, in_shape, **{**self.options, **fixed})


def _set_path(cfg: Config, path: list[str], raw: Any) -> Config:
    """A copy of ``cfg`` with the field at ``path`` set from the raw (string) value."""
    names = {f.name for f in dataclasses.fields(cfg)}
    head = path[0].replace("-", "_")
    if head not in names:
        opts = sorted("--" + n.replace("_", "-") for n in names)
        raise ConfigError(f"unknown option --{'.'.join(path)}; {suggest('--' + path[0], opts)}")
    current = getattr(cfg, head)
    if isinstance(current, BackboneSpec):
        if len(path) == 1:  # --backbone NAME: a new backbone starts from its own defaults
            return dataclasses.replace(cfg, **{head: BackboneSpec(name=str(raw))})
        key = path[1].replace("-", "_")
        return dataclasses.replace(
            cfg, **{head: BackboneSpec(name=current.name, options={**current.options, key: raw})}
        )
    if isinstance(current, Config):
        if len(path) == 1:
            raise ConfigError(f"--{head} is a group of options; set its fields, e.g. --{head}.<field> VALUE")
        return dataclasses.replace(cfg, **{head: _set_path(current, path[1:], raw)})
    if len(path) > 1:
        raise ConfigError(f"--{head} has no sub-options (got --{'.'.join(path)})")
    hint = typing.get_type_hints(type(cfg))[head]
    return dataclasses.replace(cfg, **{head: coerce(raw, hint, f"--{head.replace('_', '-')}")})


def apply_overrides(cfg: C, args: list[str]) -> C:
    """``cfg`` with command-line overrides applied: ``--field value``, ``--field=value``,
    ``--group.field value``; a tuple takes ``1,2,3`` or several words. Validation runs again."""
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise ConfigError(f"unexpected argument {tok!r}; options look like --field value")
        if "=" in tok:
            key, raw = tok[2:].split("=", 1)
            i += 1
        else:
            key, j = tok[2:], i + 1
            while j < len(args) and not (args[j].startswith("--") and len(args[j]) > 2 and not _is_number(args[j])):
                j += 1
            if j == i + 1:
                raise ConfigError(f"option --{key} needs a value, e.g. --{key} VALUE")
            raw = args[i + 1] if j == i + 2 else " ".join(args[i + 1 : j])
            i = j
        token = _DEFER_VALIDATE.set(True)
        try:
            cfg = _set_path(cfg, key.split("."), raw)
        finally:
            _DEFER_VALIDATE.reset(token)
    _validate_all(cfg)
    return cfg


def _validate_all(cfg: Config) -> None:
    """``validate()`` of ``cfg`` and of every config nested in it."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Config):
            _validate_all(value)
    cfg.validate()


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- recipes and tasks


@dataclass(frozen=True)
class Task:
    """How a family of configs is trained and evaluated: ``train(config, run) -> figures``,
    ``evaluate(config, run, **options) -> figures``, for generative models
    ``sample(config, run, **options) -> figures``, for classifiers
    ``explain(config, run, what, **options) -> figures`` (pictures of what the model learned), and for detectors
    ``detect(config, run, images, **options) -> figures`` (detections drawn on image files). ``distributed``:
    its ``train`` runs under torchrun with DistributedDataParallel (fovea.distributed)."""

    train: Callable[..., dict]
    evaluate: Callable[..., dict] | None = None
    sample: Callable[..., dict] | None = None
    explain: Callable[..., dict] | None = None
    detect: Callable[..., dict] | None = None
    distributed: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str
    config: Config
    description: str

    @property
    def task(self) -> Task:
        return _TASKS[type(self.config)]


_TASKS: dict[type, Task] = {}
_RECIPES: dict[str, Recipe] = {}


def register_task(config_cls: type[Config], train: Callable[..., dict], evaluate: Callable[..., dict] | None = None,
                  sample: Callable[..., dict] | None = None, *,
                  explain: Callable[..., dict] | None = None,
                  detect: Callable[..., dict] | None = None, distributed: bool = False) -> None:  # fmt: skip
    """Tie a config class to the functions that train, evaluate (and sample from, explain or detect with) it;
    ``distributed`` when its ``train`` runs under torchrun."""
    _TASKS[config_cls] = Task(train, evaluate, sample, explain, detect, distributed)


def register_recipe(name: str, config: Config, description: str) -> None:
    """Register a named config instance, e.g. ``register_recipe("cnn-digits", ClassifierConfig(...), "...")``."""
    if name in _RECIPES:
        raise ValueError(f"recipe {name!r} is already registered")
    if type(config) not in _TASKS:
        raise ValueError(f"recipe {name!r}: register_task({type(config).__name__}, ...) first")
    _RECIPES[name] = Recipe(name, config, description)


def recipes() -> dict[str, Recipe]:
    """Every registered recipe by name."""
    return dict(sorted(_RECIPES.items()))


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; an unknown name suggests the closest ones."""
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; {suggest(name, list(_RECIPES))} (`fovea recipes` lists them all)")
    return _RECIPES[name]
