"""Label config parsing: the captured Label Studio 1.23 config, multi-control configs, bad input."""

from __future__ import annotations

import json
import time

import pytest

from seggpt_backend.labelstudio.label_config import (
    LabelConfig,
    LabelConfigError,
    LabelDef,
    parse_label_config,
)
from tests.fixtures import LS_CAPTURED

CAPTURED = LS_CAPTURED
CAPTURED_CONFIG = (
    '<View>\n  <Image name="image" value="$image" zoom="true"/>\n  <BrushLabels name="tag" toName="image">\n'
    '    <Label value="Cat" background="#FF0000"/>\n    <Label value="Dog" background="#0000FF"/>\n'
    "  </BrushLabels>\n</View>"
)

TWO_IMAGES = """
<View>
  <Header value="Left &amp; right"/>
  <View style="display: flex">
    <Image name="left" value="$left_url"/>
    <Image name="right" value="$right_url"/>
  </View>
  <BrushLabels name="animals" toName="left">
    <Label value="Cat" alias="c" background="#FF0000" hotkey="1"/>
    <Label value="Dog"/>
  </BrushLabels>
  <brushlabels name="plants" toName="right">
    <Label value="Tree" background="green"/>
    <Label value="Cat"/>
  </brushlabels>
  <KeyPointLabels name="kp" toName="left" smart="true" smartOnly="true">
    <Label value="Cat" alias="c"/>
    <Label value="Dog"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="right" smart="true">
    <Label value="Tree"/>
  </RectangleLabels>
  <Choices name="quality" toName="left"><Choice value="ok"/></Choices>
</View>
"""


def _problems(config: str | bytes) -> tuple[str, ...]:
    with pytest.raises(LabelConfigError) as info:
        parse_label_config(config)
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def _captured_configs() -> list[str]:
    configs = []
    for path in sorted(CAPTURED.glob("*.json")):
        body = json.loads(path.read_text())["json"] or {}
        project = body.get("project")  # "<id>.<ts>" in /predict, the whole project in webhooks
        project_config = project.get("label_config") if isinstance(project, dict) else None
        for value in (body.get("schema"), body.get("label_config"), project_config):
            if isinstance(value, str):
                configs.append(value)
    return configs


def test_captured_config_matches_label_studios_own_parse() -> None:
    """Label Studio's ``parsed_label_config`` (from a recorded webhook) agrees with ours."""
    configs = _captured_configs()
    assert len(configs) >= 8 and set(configs) == {CAPTURED_CONFIG}
    webhook = json.loads((CAPTURED / "webhook_annotation_created.json").read_text())["json"]["project"]
    theirs = webhook["parsed_label_config"]["tag"]

    config = parse_label_config(configs[0])

    (control,) = config.brush_controls
    assert control.name == "tag"
    assert [control.to_name] == theirs["to_name"]
    assert control.image_key == theirs["inputs"][0]["value"] == "image"
    assert list(control.labels) == theirs["labels"] == ["Cat", "Dog"]
    assert {d.value: d.background for d in control.label_defs} == {
        k: v["background"] for k, v in theirs["labels_attrs"].items()
    }
    assert config.images[0].name == "image" and config.images[0].value == "$image"
    assert not config.smart_tools


def test_config_is_frozen_and_hashable() -> None:
    config = parse_label_config(CAPTURED_CONFIG)
    assert isinstance(config, LabelConfig)
    with pytest.raises(AttributeError):
        config.images = ()  # type: ignore[misc]
    assert hash(config) == hash(parse_label_config(CAPTURED_CONFIG))
    assert parse_label_config(CAPTURED_CONFIG.encode()) == config


def test_several_brush_controls_aliases_and_smart_tools() -> None:
    config = parse_label_config(TWO_IMAGES)

    assert [(i.name, i.data_key) for i in config.images] == [("left", "left_url"), ("right", "right_url")]
    animals, plants = config.brush_controls
    assert (animals.name, animals.to_name, animals.image_key) == ("animals", "left", "left_url")
    assert (plants.name, plants.to_name, plants.image_key) == ("plants", "right", "right_url")
    # results carry the alias when there is one
    assert animals.labels == ("c", "Dog")
    assert animals.label_defs[0] == LabelDef("Cat", "c", "#FF0000", "1")
    assert animals.find("Cat") is animals.find("c") is animals.label_defs[0]
    assert animals.find("Tree") is None

    kp, box = config.smart_tools
    assert (kp.kind, kp.name, kp.to_name, kp.labels, kp.smart, kp.smart_only) == (
        "keypoint",
        "kp",
        "left",
        ("c", "Dog"),
        True,
        True,
    )
    assert (box.kind, box.to_name, box.labels, box.smart, box.smart_only) == (
        "rectangle",
        "right",
        ("Tree",),
        True,
        False,
    )

    text = config.describe()
    assert "BrushLabels 'animals' -> Image 'left' (data key 'left_url'): Cat (alias c), Dog" in text
    assert "KeyPointLabels 'kp' -> Image 'left': c, Dog" in text


def test_toname_list_binds_first_image_and_plain_brush_is_recorded() -> None:
    config = parse_label_config(
        '<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
        '<Brush name="free" toName="a"/><KeyPoint name="pt" toName="b"/>'
        '<BrushLabels name="t" toName="a,b"><Label value="X"/></BrushLabels></View>'
    )
    (control,) = config.brush_controls
    assert (control.to_name, control.to_names) == ("a", ("a", "b"))
    assert config.plain_brushes == ("free",)
    (pt,) = config.smart_tools
    assert (pt.kind, pt.labels) == ("keypoint", ())
    assert "Brush 'free' (no labels, ignored)" in config.describe()


def test_smart_tool_not_bound_to_an_image_is_ignored() -> None:
    config = parse_label_config(
        '<View><Image name="i" value="$i"/><BrushLabels name="t" toName="i"><Label value="X"/></BrushLabels>'
        '<KeyPointLabels name="k" toName="nowhere"><Label value="X"/></KeyPointLabels>'
        '<RectangleLabels name="r"><Label value="X"/></RectangleLabels></View>'
    )
    assert config.smart_tools == ()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "<View/>",
            ["no <Image> object tag", "no <BrushLabels> or <PolygonLabels> control bound to an <Image>"],
        ),
        (
            '<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>',
            ["no <BrushLabels> or <PolygonLabels> control bound to an <Image>"],
        ),
        (
            '<View><Image name="i" value="$i"/><Brush name="b" toName="i"/></View>',
            ["found label-less <Brush> 'b': use BrushLabels instead"],
        ),
        (
            '<View><Image name="i" value="$i"/><BrushLabels name="t"><Label value="a"/></BrushLabels></View>',
            ["BrushLabels 't' has no toName attribute"],
        ),
        (
            '<View><Image name="i" value="$i"/><BrushLabels name="t" toName="img"><Label value="a"/></BrushLabels></View>',
            ["BrushLabels 't' toName='img' names no <Image> (Images: 'i')"],
        ),
        (
            '<View><Image name="i" value="$i"/><BrushLabels toName="i"><Label value="a"/></BrushLabels></View>',
            ["BrushLabels #1 has no name attribute"],
        ),
        (
            '<View><Image name="i" value="$i"/><BrushLabels name="t" toName="i"></BrushLabels></View>',
            ["BrushLabels 't' has no <Label> children"],
        ),
        (
            '<View><Image name="i" value="$i"/><BrushLabels name="t" toName="i"><Label background="red"/>'
            '<Label value="a"/><Label value="a"/></BrushLabels></View>',
            [
                "BrushLabels 't': <Label> #1 has no value attribute",
                "BrushLabels 't': label 'a' is defined twice",
            ],
        ),
        (
            '<View><Image name="i" valueList="$images"/><BrushLabels name="t" toName="i"><Label value="a"/>'
            "</BrushLabels></View>",
            ["its <Image> 'i' has a multi-image valueList"],
        ),
        (
            '<View><Image name="i" value="http://x/y.png"/><BrushLabels name="t" toName="i"><Label value="a"/>'
            "</BrushLabels></View>",
            ["its <Image> 'i' has value='http://x/y.png'"],
        ),
        (
            '<View><Image name="i" value="$i"/><Image name="i" value="$j"/><BrushLabels name="t" toName="i">'
            '<Label value="a"/></BrushLabels><BrushLabels name="t" toName="i"><Label value="b"/></BrushLabels></View>',
            ["two <Image> tags are named 'i'", "two <BrushLabels> are named 't'"],
        ),
    ],
)
def test_invalid_configs_list_every_problem(config: str, expected: list[str]) -> None:
    problems = _problems(config)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


def test_one_broken_control_rejects_the_config_even_if_another_is_fine() -> None:
    problems = _problems(
        '<View><Image name="i" value="$i"/><BrushLabels name="ok" toName="i"><Label value="a"/></BrushLabels>'
        '<BrushLabels name="bad" toName="missing"><Label value="b"/></BrushLabels></View>'
    )
    assert problems == ("BrushLabels 'bad' toName='missing' names no <Image> (Images: 'i')",)


@pytest.mark.parametrize(
    "config",
    ["<View><Image name='i' value='$i'>", "<View></Vew>", "not xml at all", "<View>&undefined;</View>"],
)
def test_malformed_xml(config: str) -> None:
    (problem,) = _problems(config)
    assert problem.startswith("label config is not well-formed XML: ")


@pytest.mark.parametrize(
    ("config", "fragment"), [("", "is empty"), ("   \n", "is empty"), (b"\xff\xfe<", "not UTF-8")]
)
def test_empty_or_undecodable(config: str | bytes, fragment: str) -> None:
    (problem,) = _problems(config)
    assert fragment in problem


def test_non_string_config() -> None:
    (problem,) = _problems(None)  # type: ignore[arg-type]
    assert "must be an XML string, got NoneType" in problem


def test_entity_bomb_is_refused_quickly() -> None:
    lol = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    ]
    bomb = f"<?xml version='1.0'?><!DOCTYPE View [{''.join(lol)}]><View><Header value='&lol9;'/></View>"
    started = time.perf_counter()
    (problem,) = _problems(bomb)
    assert time.perf_counter() - started < 1.0
    assert "must not contain a DTD" in problem


@pytest.mark.parametrize(
    "config",
    [
        '<!DOCTYPE View SYSTEM "file:///etc/passwd"><View/>',
        '<!doctype View [<!ENTITY x SYSTEM "file:///etc/passwd">]><View><Header value="&x;"/></View>',
        '<View><!ENTITY x "y"></View>',
    ],
)
def test_external_entities_and_any_dtd_are_refused(config: str) -> None:
    (problem,) = _problems(config)
    assert "must not contain a DTD" in problem


def test_oversized_config_is_refused() -> None:
    big = "<View>" + "<Header value='x'/>" * 60_000 + "</View>"
    (problem,) = _problems(big)
    assert "characters long (limit" in problem


def test_error_is_a_value_error_with_problems() -> None:
    err = LabelConfigError(["a", "b"])
    assert isinstance(err, ValueError) and err.problems == ("a", "b") and str(err) == "a; b"
    assert LabelConfigError([]).problems == ("invalid label config",)


POLYGONS = """
<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image" strokeWidth="2">
    <Label value="Cat"/><Label value="Dog" alias="d"/>
  </PolygonLabels>
</View>
"""


def test_polygon_labels_are_a_servable_segmentation_control() -> None:
    config = parse_label_config(POLYGONS)
    assert config.brush_controls == ()
    (control,) = config.polygon_controls
    assert (control.name, control.to_name, control.image_key, control.kind) == (
        "poly",
        "image",
        "image",
        "polygon",
    )
    assert control.labels == ("Cat", "d")
    assert config.segmentation_controls == (control,)
    assert "PolygonLabels 'poly' -> Image 'image'" in config.describe()


def test_brush_and_polygon_controls_together_and_a_shared_name_is_refused() -> None:
    both = POLYGONS.replace(
        "</View>", '<BrushLabels name="tag" toName="image"><Label value="Cat"/></BrushLabels></View>'
    )
    config = parse_label_config(both)
    assert [c.kind for c in config.segmentation_controls] == ["brush", "polygon"]
    clash = POLYGONS.replace(
        "</View>", '<BrushLabels name="poly" toName="image"><Label value="Cat"/></BrushLabels></View>'
    )
    with pytest.raises(LabelConfigError, match="named 'poly'"):
        parse_label_config(clash)
    with pytest.raises(LabelConfigError, match="PolygonLabels 'poly' has no <Label>"):
        parse_label_config(
            '<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image"/></View>'
        )
