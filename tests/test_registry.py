import pytest

from multitask_deeplab.registry import Registry


def make_registry() -> Registry:
    registry = Registry("widget")

    @registry.register("sprocket")
    def sprocket(size: int = 1) -> tuple[str, int]:
        return "sprocket", size

    @registry.register("spring")
    class Spring:
        def __init__(self, stiffness: float) -> None:
            self.stiffness = stiffness

    return registry


def test_build_from_type_dict_with_defaults():
    registry = make_registry()
    assert registry.build({"type": "sprocket", "size": 3}) == ("sprocket", 3)
    assert registry.build({"type": "sprocket"}, size=5) == ("sprocket", 5)
    assert registry.build({"type": "spring", "stiffness": 2.0}).stiffness == 2.0
    assert registry.names() == ["spring", "sprocket"]
    assert "spring" in registry and "gear" not in registry


def test_duplicate_name_is_an_error():
    registry = make_registry()
    with pytest.raises(ValueError, match="widget 'spring' is already registered"):
        registry.register("spring")(lambda: None)


def test_unknown_name_lists_names_and_closest_match():
    registry = make_registry()
    with pytest.raises(ValueError, match=r"unknown widget 'sprockett': did you mean 'sprocket'\? registered widgets are spring, sprocket"):
        registry.get("sprockett")


def test_build_needs_a_type():
    with pytest.raises(ValueError, match="needs a 'type' key"):
        make_registry().build({"size": 1})
