"""Frozen value classes declared as dataclasses are, without what dataclasses cost at import.

``@dataclass`` writes each class's ``__init__``, ``__eq__``, ``__hash__``, ``__repr__`` and frozen ``__setattr__``
as source text and compiles it while the module is imported — 0.6 to 1 ms a class on this project's machines —
and ``import dataclasses`` brings ``inspect`` (``ast``, ``dis``, ``tokenize``) with it, ~10 ms more. A CNI plugin
is a new process per container and its cold path declares ~30 such classes, so that was a third of a call.
A :class:`Record` subclass has the same body (annotated fields, defaults, :func:`field` with ``default_factory``,
``__post_init__``, ``order=True``) and the same behaviour, frozen and compared field by field; the class
statement only records the field names, and a few generic methods serve every instance. It lives in ``ipam/``,
the lowest room on the CNI path (``cni_plugins`` → ``datapath`` → ``ipam``), so every room above shares the one
mechanism.
"""
from __future__ import annotations

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a record (records are immutable, as a frozen dataclass is)."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make) -> None:
        self.make = make


def field(*, default_factory):
    """A field whose default is made anew for each instance (``dataclasses.field(default_factory=...)``)."""
    return _Factory(default_factory)


class Record:
    """Base of a frozen value class: ``class Route(Record): dst: IPNetwork; gw: IPAddress | None = None``."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _defaults: dict = {}

    def __init_subclass__(cls, order: bool = False, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        annotations = cls.__dict__.get("__annotations__", {})
        own = [name for name, kind in annotations.items() if not str(kind).startswith(("ClassVar", "typing.ClassVar"))]
        defaults = dict(cls._defaults)
        for name in own:
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                if isinstance(defaults[name], _Factory):
                    delattr(cls, name)  # as dataclasses do: no shared default left on the class
        fields = (*cls._fields, *(name for name in own if name not in cls._fields))
        for earlier, name in zip(fields, fields[1:]):
            if earlier in defaults and name not in defaults:
                raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one with a default")
        cls._fields, cls._defaults, cls.__match_args__ = fields, defaults, fields
        if order:
            cls.__lt__ = lambda a, b: a._values() < b._values() if type(b) is type(a) else NotImplemented
            cls.__le__ = lambda a, b: a._values() <= b._values() if type(b) is type(a) else NotImplemented
            cls.__gt__ = lambda a, b: a._values() > b._values() if type(b) is type(a) else NotImplemented
            cls.__ge__ = lambda a, b: a._values() >= b._values() if type(b) is type(a) else NotImplemented

    def __init__(self, *args, **kwargs) -> None:
        fields, name_of = self._fields, type(self).__name__
        if len(args) > len(fields):
            raise TypeError(f"{name_of}() takes {len(fields)} positional arguments but {len(args)} were given")
        values = dict(zip(fields, args))
        for key, value in kwargs.items():
            if key not in fields:
                raise TypeError(f"{name_of}() got an unexpected keyword argument {key!r}")
            if key in values:
                raise TypeError(f"{name_of}() got multiple values for argument {key!r}")
            values[key] = value
        for key in fields:
            if key in values:
                value = values[key]
            else:
                value = self._defaults.get(key, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{name_of}() missing required argument: {key!r}")
                if isinstance(value, _Factory):
                    value = value.make()
            object.__setattr__(self, key, value)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def _values(self) -> tuple:
        return tuple([getattr(self, key) for key in self._fields])

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self._fields)})"

    def __setattr__(self, name: str, value) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


def replace(record: Record, **changes):
    """A copy of ``record`` with ``changes`` (``dataclasses.replace``): ``__post_init__`` checks it again."""
    values = {key: getattr(record, key) for key in record._fields}
    values.update(changes)
    return type(record)(**values)
