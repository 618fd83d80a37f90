"""ipam.record: value classes that behave as frozen dataclasses do (the CNI path's replacement for them)."""
from __future__ import annotations

import copy
import pickle

import pytest

from ipam.record import FrozenInstanceError, Record, field, replace


class Point(Record):
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()


class Bag(Record):
    name: str
    items: list = field(default_factory=list)


class Ordered(Record, order=True):
    major: int
    minor: int


class Checked(Record):
    values: tuple

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))


def test_fields_defaults_and_keywords_as_a_dataclass_takes_them():
    assert Point(1) == Point(x=1, y=0, tags=())
    assert (Point(1, 2).x, Point(1, 2).y) == (1, 2)
    assert Point._fields == ("x", "y", "tags")
    assert repr(Point(1, tags=("a",))) == "Point(x=1, y=0, tags=('a',))"


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(TypeError, match="missing required argument: 'x'"):
        Point()
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=3)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="positional arguments"):
        Point(1, 2, (), 4)


def test_a_field_without_default_after_one_with_is_refused_at_class_creation():
    with pytest.raises(TypeError, match="'b' without a default follows"):
        class Broken(Record):  # noqa: F841
            a: int = 0
            b: int


def test_frozen():
    point = Point(1)
    with pytest.raises(FrozenInstanceError):
        point.x = 2
    with pytest.raises(FrozenInstanceError):
        del point.x
    with pytest.raises(AttributeError):  # as a frozen dataclass: the error is an AttributeError
        point.new = 1


def test_equality_and_hash_by_fields_and_class():
    assert Point(1, 2) == Point(1, 2) and hash(Point(1, 2)) == hash(Point(1, 2))
    assert Point(1, 2) != Point(2, 1)
    assert Point(1) != (1, 0, ())  # not a tuple
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_default_factory_makes_a_new_value_per_instance():
    first, second = Bag("a"), Bag("b")
    first.items.append(1)
    assert second.items == [] and "items" not in Bag.__dict__


def test_post_init_runs_and_replace_runs_it_again():
    checked = Checked([1, 2])
    assert checked.values == (1, 2)
    assert replace(checked, values=[3]).values == (3,)
    assert replace(Point(1, 2), y=5) == Point(1, 5)


def test_order_only_when_asked_and_only_within_the_class():
    assert sorted([Ordered(1, 2), Ordered(0, 9), Ordered(1, 0)]) == [Ordered(0, 9), Ordered(1, 0), Ordered(1, 2)]
    with pytest.raises(TypeError):
        Point(1) < Point(2)  # noqa: B015
    with pytest.raises(TypeError):
        Ordered(1, 2) < (1, 3)  # noqa: B015


def test_copy_and_pickle_keep_the_value():
    point = Point(1, 2, ("a",))
    assert copy.copy(point) == point and copy.deepcopy(point) == point
    assert pickle.loads(pickle.dumps(point)) == point
