"""Typer options generated from argument dataclasses (one definition, with its help text).

:func:`dataclass_options` adds one ``--option`` per field of each named dataclass to a
command and hands the command ready-built dataclass instances, the way transformers'
``HfArgumentParser`` does for argparse. Help comes from ``field(metadata={"help": ...})``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, Optional

import typer

_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "str | None": Optional[str],  # noqa: UP045 - typer needs the typing form
    "float | None": Optional[float],  # noqa: UP045
    "int | None": Optional[int],  # noqa: UP045
    "list[str]": list[str],
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """Which dataclass a command parameter is built from.

    Attributes:
        cls: The dataclass.
        defaults: Per-command default overrides, by field name.
        exclude: Fields not offered as options (they keep their defaults).
        flags: Extra or replacement option names, by field name.
    """

    cls: type
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    flags: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def _field_default(field: dataclasses.Field, spec: Spec) -> Any:
    if field.name in spec.defaults:
        return spec.defaults[field.name]
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def _option(field: dataclasses.Field, spec: Spec) -> inspect.Parameter:
    annotation = _TYPES.get(str(field.type))
    if annotation is None:
        raise TypeError(f"{spec.cls.__name__}.{field.name}: no CLI type for {field.type!r}")
    name = field.name.replace("_", "-")
    default = _field_default(field, spec)
    # A switch that is off by default is a plain flag; one that is on can be turned off.
    toggle = annotation is bool and default is True
    flags = spec.flags.get(field.name) or ((f"--{name}/--no-{name}",) if toggle else (f"--{name}",))
    extra = {k: field.metadata[k] for k in ("min", "max") if k in field.metadata}
    option = typer.Option(default, *flags, help=field.metadata.get("help", ""), **extra)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def dataclass_options(**specs: Spec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command's parameters named in ``specs`` become dataclass-built options.

    Example::

        @app.command()
        @dataclass_options(train=Spec(TrainingArguments))
        def run(verbose: bool = typer.Option(False), *, train: TrainingArguments) -> None: ...
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func)
        own = [p for name, p in signature.parameters.items() if name not in specs]
        owner: dict[str, str] = {}
        added: list[inspect.Parameter] = []
        for target, spec in specs.items():
            for field in dataclasses.fields(spec.cls):
                if field.name in spec.exclude:
                    continue
                if field.name in owner or field.name in signature.parameters:
                    raise ValueError(f"option {field.name!r} defined twice")
                owner[field.name] = target
                added.append(_option(field, spec))

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            grouped: dict[str, dict[str, Any]] = {target: {} for target in specs}
            plain = {}
            for key, value in kwargs.items():
                if key in owner:
                    grouped[owner[key]][key] = value
                else:
                    plain[key] = value
            for target, spec in specs.items():
                for name in spec.exclude:
                    if name in spec.defaults:
                        grouped[target][name] = spec.defaults[name]
            built = {target: specs[target].cls(**values) for target, values in grouped.items()}
            return func(**plain, **built)

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        )
        return wrapper

    return decorate
