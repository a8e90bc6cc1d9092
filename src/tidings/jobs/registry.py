"""``@jobs.task("name")``: the registry of job functions, and their arguments read from JSON.

A job function is an async generator function. Its parameters are the job's
arguments, each annotated with one of ``int``, ``float``, ``str``, ``bool``,
``list``, ``dict`` (``list[int]`` and ``dict[str, float]`` check their
items too), optionally ``| None``, with or without a default. It yields
updates: :class:`Progress` (``percent``, ``message``, a partial
``result``), :class:`Log` (a line for the job's log), or a plain dict
with the fields of either. The last ``result`` it yields is the job's
result.

Arguments come from a JSON object and are checked against the signature
before a job is queued: a missing, unknown or mistyped argument is an
:class:`~tidings.errors.InvalidArguments` that names it.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, Union

from tidings.errors import InvalidArguments, UnknownJob
from tidings.types import JSONValue

__all__ = ["JobFunction", "JobSpec", "Jobs", "Log", "Parameter", "Progress", "Update", "as_update"]

#: A job name: letters, digits and ``_.-``, 1-64 characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: The JSON types an argument may have, by annotation.
_SCALARS: dict[type, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    list: (list,),
    dict: (dict,),
}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}
_TYPE_NAMES |= {list: "a list", dict: "an object"}


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a job is: yield one whenever there is news.

    Attributes:
        percent: 0-100, or None when unknown.
        message: A line for people, or None.
        result: A partial result (any JSON value); the last one yielded is
            the job's result. None leaves the result as it was.
    """

    percent: float | None = None
    message: str | None = None
    result: JSONValue = None

    def __post_init__(self) -> None:
        if self.percent is not None and (
            isinstance(self.percent, bool)
            or not isinstance(self.percent, int | float)
            or not 0 <= self.percent <= 100
        ):
            raise ValueError(f"percent must be a number 0-100, not {self.percent!r}")
        if self.message is not None and not isinstance(self.message, str):
            raise ValueError("message must be a string")


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the job's log (an event ``log`` on its channel)."""

    message: str
    level: str = "info"

    def __post_init__(self) -> None:
        if not isinstance(self.message, str) or not isinstance(self.level, str):
            raise ValueError("a log line's message and level must be strings")


Update: TypeAlias = Progress | Log
JobFunction: TypeAlias = Callable[..., AsyncIterator[Any]]


def as_update(value: object) -> Update:
    """The :class:`Progress` or :class:`Log` a job yielded (a dict is read as one).

    Raises:
        ValueError: the value is neither, or a dict with other fields.
    """
    if isinstance(value, Progress | Log):
        return value
    if isinstance(value, dict):
        if "log" in value:
            fields = {"log", "level"}
            unknown = set(value) - fields
            if not unknown:
                return Log(value["log"], value.get("level", "info"))
        else:
            unknown = set(value) - {"percent", "message", "result"}
            if not unknown:
                return Progress(**value)
        raise ValueError(f"a job yielded a dict with unknown field(s) {sorted(unknown)}")
    raise ValueError(f"a job must yield Progress, Log or a dict, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Parameter:
    """One argument of a job: its name, the JSON types it takes and its default."""

    name: str
    annotation: Any
    required: bool
    default: Any = None

    def check(self, value: Any) -> Any:
        """Return ``value`` as the function takes it.

        Raises:
            InvalidArguments: the value is not of the parameter's type.
        """
        return _check(self.name, self.annotation, value)


def _check(field: str, annotation: Any, value: Any) -> Any:
    options = _optional(annotation)
    if options is not None:
        return None if value is None else _check(field, options, value)
    origin = typing.get_origin(annotation) or annotation
    accepted = _SCALARS[origin]
    if isinstance(value, bool) and origin is not bool:
        accepted = ()
    if not isinstance(value, accepted):
        raise InvalidArguments(field, f"must be {_TYPE_NAMES[origin]}, not {_json_name(value)}")
    items = typing.get_args(annotation)
    if isinstance(value, list) and items:
        return [_check(f"{field}[{index}]", items[0], item) for index, item in enumerate(value)]
    if isinstance(value, dict) and items:
        return {key: _check(f"{field}.{key}", items[1], item) for key, item in value.items()}
    return float(value) if origin is float and isinstance(value, int) else value


def _optional(annotation: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1 and len(typing.get_args(annotation)) == 2:
            return members[0]
    return None


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _supported(annotation: Any) -> bool:
    inner = _optional(annotation)
    if inner is not None:
        return _supported(inner)
    origin = typing.get_origin(annotation) or annotation
    if origin not in _SCALARS:
        return False
    args = typing.get_args(annotation)
    if origin is list and args:
        return _supported(args[0])
    if origin is dict and args:
        return args[0] is str and _supported(args[1])
    return True


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A registered job: its name, function and arguments."""

    name: str
    function: JobFunction
    parameters: tuple[Parameter, ...]

    @classmethod
    def of(cls, name: str, function: JobFunction) -> JobSpec:
        """Read a job function's signature.

        Raises:
            ValueError: the name is not valid.
            TypeError: the function is not an async generator function, or a
                parameter is positional-only, variadic or of a type JSON
                cannot give.
        """
        if not _NAME.match(name):
            raise ValueError(f"invalid job name {name!r}: use [A-Za-z0-9_.-], 1-64 characters")
        if not inspect.isasyncgenfunction(function):
            raise TypeError(f"job {name!r}: {function!r} is not an async generator function")
        hints = typing.get_type_hints(function)
        parameters = []
        for parameter in inspect.signature(function).parameters.values():
            where = f"job {name!r}, argument {parameter.name!r}"
            if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                raise TypeError(f"{where}: only named arguments can come from JSON")
            annotation = hints.get(parameter.name)
            if annotation is None or not _supported(annotation):
                raise TypeError(
                    f"{where}: annotate it with int, float, str, bool, list or dict "
                    "(optionally | None)"
                )
            required = parameter.default is parameter.empty
            default = None if required else parameter.default
            parameters.append(Parameter(parameter.name, annotation, required, default))
        return cls(name, function, tuple(parameters))

    def arguments(self, document: object) -> dict[str, Any]:
        """Check ``document`` (a decoded JSON body) and return the keyword arguments.

        Raises:
            InvalidArguments: it is not an object, or an argument is missing,
                unknown or of the wrong type (the error names it).
        """
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise InvalidArguments("(body)", "the arguments must be a JSON object")
        known = {parameter.name for parameter in self.parameters}
        for field in document:
            if field not in known:
                raise InvalidArguments(field, f"job {self.name!r} takes no such argument")
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.name in document:
                values[parameter.name] = parameter.check(document[parameter.name])
            elif parameter.required:
                raise InvalidArguments(parameter.name, "is required")
        return values

    def describe(self) -> dict[str, Any]:
        """The job's name and arguments, for listings."""
        return {
            "name": self.name,
            "arguments": {
                parameter.name: {
                    "type": _annotation_name(parameter.annotation),
                    "required": parameter.required,
                    **({} if parameter.required else {"default": parameter.default}),
                }
                for parameter in self.parameters
            },
        }


def _annotation_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


class Jobs:
    """The jobs a server can run, by name.

    ::

        jobs = Jobs()


        @jobs.task("resize")
        async def resize(url: str, width: int = 640) -> AsyncIterator[Progress]:
            yield Progress(0, "downloading")
            ...
            yield Progress(100, "done", result={"url": out})
    """

    def __init__(self) -> None:
        self._specs: dict[str, JobSpec] = {}

    def task(self, name: str) -> Callable[[JobFunction], JobFunction]:
        """Register the decorated async generator function as job ``name``.

        Raises:
            ValueError: the name is not valid or already registered.
            TypeError: the function cannot be a job (see :meth:`JobSpec.of`).
        """

        def register(function: JobFunction) -> JobFunction:
            self.add(name, function)
            return function

        return register

    def add(self, name: str, function: JobFunction) -> JobSpec:
        """Register ``function`` as job ``name`` (the decorator's plain form)."""
        if name in self._specs:
            raise ValueError(f"a job named {name!r} is registered already")
        spec = self._specs[name] = JobSpec.of(name, function)
        return spec

    def spec(self, name: str) -> JobSpec:
        """The job registered as ``name``.

        Raises:
            UnknownJob: there is none.
        """
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownJob(name) from None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)
