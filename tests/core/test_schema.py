"""The one checker: constraints declared on fields, applied to YAML nodes, mappings and objects."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from testbed import schema
from testbed.schema import SchemaError, bounded


@dataclass
class Item:
    kind: Literal["a", "b"] = "a"
    size_kb: int = bounded(4, min=4, multiple_of=4)


@dataclass
class Box:
    width: float = bounded(1.0, gt=0, max=10)
    label: Optional[str] = None
    items: list[Item] = field(default_factory=list)

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.label is not None and len(self.items) > self.width:
            yield ("items", f"{len(self.items)} items do not fit in width {self.width}")


def test_yaml_and_mapping_get_the_same_messages():
    text = "width: 0\nitems:\n  - {kind: c, size_kb: 6}\ncolour: red\n"
    with pytest.raises(SchemaError) as from_yaml:
        schema.build(Box, yaml.compose(text, Loader=yaml.SafeLoader), "box")
    with pytest.raises(SchemaError) as from_mapping:
        schema.build(Box, yaml.safe_load(text), "box")
    expected = [("box.colour", "unknown key"),
                ("box.width", "must be greater than 0, got 0.0"),
                ("box.items[0].kind", "'c' is not one of a, b"),
                ("box.items[0].size_kb", "must be a multiple of 4, got 6")]
    for e in (from_yaml, from_mapping):
        assert [(p.key, p.message) for p in e.value.problems] == expected
    assert [p.line for p in from_yaml.value.problems] == [4, 1, 3, 3]
    assert {(p.file, p.line) for p in from_mapping.value.problems} == {("", 0)}
    assert str(from_mapping.value.problems[1]) == "box.width: must be greater than 0, got 0.0"


def test_a_rule_is_placed_on_the_line_of_the_key_it_names():
    text = "width: 1\nlabel: x\nitems:\n  - {}\n  - {}\n"
    with pytest.raises(SchemaError) as e:
        schema.build(Box, yaml.compose(text, Loader=yaml.SafeLoader), "box")
    (p,) = e.value.problems
    assert (p.line, p.key, p.message) == (4, "box.items", "2 items do not fit in width 1.0")


def test_an_object_is_checked_in_place_nested_objects_too():
    box = Box(width=20, items=[Item(size_kb=0), Item(kind="z")])
    found = schema.problems(box, "box")
    assert [(p.key, p.message, p.requirement) for p in found] == [
        ("box.width", "20.0 is above the maximum 10", "greater than 0 and at most 10"),
        ("box.items[0].size_kb", "0 is below the minimum 4", "at least 4 and a multiple of 4"),
        ("box.items[1].kind", "'z' is not one of a, b", "one of a, b"),
    ]
    assert schema.problems(Box(items=[Item()])) == []
    # an object's fields hold objects: a mapping is not turned into one
    (p,) = schema.problems(Box(items=[{"kind": "a"}]))
    assert (p.key, p.message) == ("items[0]", "expected Item, got dict")
    with pytest.raises(SchemaError, match=r"^width: expected float, got str 'wide'$"):
        schema.validate(Box(width="wide"))
    with pytest.raises(SchemaError, match=r"^width: must be a finite number, got nan$"):
        schema.validate(Box(width=float("nan")))


def test_declarations_are_checked():
    with pytest.raises(TypeError, match="at least one of"):
        bounded(1)
    with pytest.raises(TypeError, match="multiple_of"):
        bounded(1, multiple_of=0)

    @dataclass
    class Old:
        n: int = field(default=1, metadata={"min": 0})

    with pytest.raises(TypeError, match=r"declare ranges with schema\.bounded"):
        schema.problems(Old())
    with pytest.raises(TypeError, match=r"Copy\.width is <class 'int'>, but mirrors Box\.width"):
        @schema.check_mirrors
        @dataclass
        class Copy:
            width: int = schema.mirror(Box, "width")


def test_a_mirror_takes_the_owners_bounds_and_default():
    @schema.check_mirrors
    @dataclass
    class Front:
        box_width: float = schema.mirror(Box, "width")
        other: int = 0

    assert Front().box_width == 1.0 and schema.mirrored(Front(box_width=2.0)) == {"width": 2.0}
    (p,) = schema.problems(Front(box_width=11.0))
    assert (p.key, p.message) == ("box_width", "11.0 is above the maximum 10")
