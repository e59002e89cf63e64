"""The registry every extension point uses: names, builds, and the contract it checks at registration and build."""

import pytest

from multitask_deeplab.errors import ComponentError, UnknownComponentError
from multitask_deeplab.registry import Registry


class Widget:
    def __init__(self, size: int = 1) -> None:
        self.size = size


def make_registry() -> Registry:
    registry = Registry("widget", Widget)

    @registry.register("sprocket")
    def sprocket(size: int = 1) -> Widget:
        return Widget(size)

    @registry.register("spring")
    class Spring(Widget):
        def __init__(self, stiffness: float) -> None:
            super().__init__()
            if stiffness <= 0:
                raise ValueError(f"stiffness must be > 0, got {stiffness}")
            self.stiffness = stiffness

    return registry


def test_build_from_type_dict_with_defaults():
    registry = make_registry()
    assert registry.build({"type": "sprocket", "size": 3}).size == 3
    assert registry.build({"type": "sprocket"}, size=5).size == 5
    spring = registry.build({"type": "spring", "stiffness": 2.0})
    assert spring.stiffness == 2.0 and type(spring).registered_name == "spring"
    assert registry.names() == ["spring", "sprocket"]
    assert "spring" in registry and "gear" not in registry
    assert registry.name_of(type(spring)) == "spring" and registry.name_of(Widget) == "Widget"


def test_duplicate_name_is_an_error_naming_both_places():
    registry = make_registry()
    with pytest.raises(ComponentError, match=r"widget 'spring' is already registered \(by .*test_registry.py\); pick another name"):
        registry.register("spring")(lambda: Widget())


def test_unknown_name_lists_names_and_closest_match():
    registry = make_registry()
    with pytest.raises(UnknownComponentError, match=r"unknown widget 'sprockett': did you mean 'sprocket'\? registered widgets are spring, sprocket") as info:
        registry.get("sprockett")
    assert (info.value.kind, info.value.name) == ("widget", "sprockett")


def test_build_needs_a_type():
    with pytest.raises(ComponentError, match="needs a 'type' key"):
        make_registry().build({"size": 1})


def test_a_class_of_the_wrong_base_is_refused_at_registration():
    registry = make_registry()

    class Gear:  # not a Widget
        pass

    with pytest.raises(ComponentError, match=r"^widget 'gear' must subclass Widget or be a function that returns one; .*Gear \(in .*\) does not$"):
        registry.register("gear")(Gear)
    assert "gear" not in registry


def test_a_factory_is_checked_when_it_is_built():
    registry = make_registry()
    registry.register("liar")(lambda: "not a widget")
    with pytest.raises(ComponentError, match=r"^here: widget 'liar' must subclass Widget or return one; its factory returned a str$"):
        registry.build({"type": "liar"}, where="here")


def test_build_errors_are_one_line_and_say_where():
    registry = make_registry()
    with pytest.raises(ComponentError, match=r"^tasks\.x: stiffness must be > 0, got -1$"):
        registry.build({"type": "spring", "stiffness": -1}, where="tasks.x")

    @registry.register("broken")
    def broken() -> Widget:
        return {}["missing"]

    with pytest.raises(ComponentError, match=r"^w: widget 'broken' failed to build: KeyError: 'missing' \(at .*test_registry.py:\d+ in broken\)$"):
        registry.build({"type": "broken"}, where="w")


def test_names_must_be_identifiers():
    with pytest.raises(ComponentError, match="widget name 'two words' is not valid"):
        make_registry().register("two words")
