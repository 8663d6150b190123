"""A method's parameters: read from its config dataclass, described in ListMethods, and
checked field by field when a job is created.

A config field is a parameter. Its type (int, float, bool, str, or a list of str) and
default come from the dataclass; ``metadata["help"]`` is its description and
``metadata["choices"]``, if present, the only values it accepts. Checks that need more
than a type go in the config's ``__post_init__``, which raises ``ParameterError(field, why)``
so the refusal names the field.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunewright.core.errors import FieldViolation, InvalidArgument

if TYPE_CHECKING:
    from tunewright.methods import Method

# Parameter types as the API names them (trainer_service.proto ParameterType).
INT, FLOAT, BOOL, STRING, STRING_LIST = "int", "float", "bool", "string", "string_list"


class ParameterError(ValueError):
    """A config refusing the value of one of its fields: ``ParameterError("r", "must be at least 1, got 0")``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: str
    description: str
    default: Any
    choices: tuple[str, ...] = ()


def _kind(annotation: Any) -> str:
    if annotation in (int, "int"):
        return INT
    if annotation in (float, "float"):
        return FLOAT
    if annotation in (bool, "bool"):
        return BOOL
    if annotation in (str, "str"):
        return STRING
    if typing.get_origin(annotation) in (list, tuple) or str(annotation).startswith(("list", "tuple")):
        return STRING_LIST
    raise TypeError(f"unsupported parameter type {annotation!r}")


def parameter_specs(config_class: type) -> list[ParameterSpec]:
    """The parameters of a method, read from its config dataclass."""
    hints = typing.get_type_hints(config_class)
    specs = []
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        choices = tuple(f.metadata.get("choices", ()))
        specs.append(ParameterSpec(f.name, _kind(hints[f.name]), f.metadata.get("help", ""), default, choices))
    return specs


def default_json(spec: ParameterSpec) -> str:
    value = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    return json.dumps(value)


def build_config(method: Method, values: dict[str, Any], field_prefix: str = "method_parameters") -> Any:
    """The method's config from user values (already plain Python), refusing unknown names,
    wrong types, values outside ``choices`` and values the config rejects, each violation
    naming its field."""
    return _build(f"method {method.name!r}", method.config_class, values, field_prefix, "INVALID_METHOD_PARAMETER")


def parse_options(owner: str, config_class: type, text: dict[str, str], field_prefix: str = "options") -> Any:
    """An exporter's options from text, as the API carries them ("4096", "true", "a,b"),
    checked as ``build_config`` checks a method's parameters. ``owner`` names the exporter
    in messages ("format 'gguf'")."""
    specs = {spec.name: spec for spec in parameter_specs(config_class)}
    values: dict[str, Any] = {}
    for name, value in text.items():
        spec = specs.get(name)
        values[name] = _from_text(spec.type, value) if spec else value
    return _build(owner, config_class, values, field_prefix, "INVALID_OPTION")


def _from_text(kind: str, value: str) -> Any:
    try:
        if kind == INT:
            return int(value)
        if kind == FLOAT:
            return float(value)
    except ValueError:
        return value  # refused below with the expected type
    if kind == BOOL:
        return {"true": True, "false": False}.get(value.strip().lower(), value)
    return value


def _build(owner: str, config_class: type, values: dict[str, Any], field_prefix: str, reason: str) -> Any:
    specs = {spec.name: spec for spec in parameter_specs(config_class)}
    violations = []
    kwargs = {}
    for name, value in values.items():
        field = f"{field_prefix}.{name}"
        spec = specs.get(name)
        if spec is None:
            accepted = ", ".join(sorted(specs)) or "none"
            violations.append(FieldViolation(field, f"{owner} has no parameter {name!r}; it accepts: {accepted}"))
            continue
        try:
            kwargs[name] = _coerce(spec, value)
        except (TypeError, ValueError) as error:
            violations.append(FieldViolation(field, str(error)))
    if not violations:
        try:
            return config_class(**kwargs)
        except ParameterError as error:
            violations = [FieldViolation(f"{field_prefix}.{error.field}", error.message)]
        except (TypeError, ValueError) as error:
            violations = [FieldViolation(field_prefix, str(error))]
    raise InvalidArgument(
        f"{owner} refused {len(violations)} parameter(s): "
        + "; ".join(f"{v.field}: {v.description}" for v in violations),
        reason=reason,
        violations=violations,
    )


def _coerce(spec: ParameterSpec, value: Any) -> Any:
    if spec.type == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expects an integer (int_value), got {value!r}")
        return value
    if spec.type == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expects a number (double_value or int_value), got {value!r}")
        return float(value)
    if spec.type == BOOL:
        if not isinstance(value, bool):
            raise TypeError(f"expects true or false (bool_value), got {value!r}")
        return value
    if spec.type == STRING:
        if not isinstance(value, str):
            raise TypeError(f"expects text (string_value), got {value!r}")
        if spec.choices and value not in spec.choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(spec.choices)}")
        return value
    if isinstance(value, str):  # "a,b" is accepted as a convenience
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expects a list of names (string_list_value), got {value!r}")
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
