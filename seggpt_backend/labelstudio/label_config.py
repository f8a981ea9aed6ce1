"""Parse a Label Studio labelling config (XML) into what the SegGPT backend can serve.

What is read:

- ``<Image name="image" value="$image"/>`` object tags: ``value="$image"`` means the image URL
  is ``task["data"]["image"]`` (the *data key*). ``valueList="$images"`` (multi-image) is recorded
  but such an Image has no single data key.
- ``<BrushLabels name="tag" toName="image">`` controls with their ``<Label value="Cat"
  alias="c" background="#FF0000"/>`` children. Several controls (and several Images) are allowed.
  In results Label Studio writes a label's ``alias`` when it has one, else its ``value``; that
  string is the label's :attr:`LabelDef.name` and is what predictions must carry in
  ``value.brushlabels``.
- Smart tools (``KeyPointLabels``, ``RectangleLabels`` and their label-less ``KeyPoint``/
  ``Rectangle``) bound to an Image: the editor sends their regions as ``params.context`` for
  interactive predictions; their labels name the BrushLabels label to predict.
- ``<PolygonLabels name="poly" toName="image">`` controls, read like BrushLabels
  (:attr:`LabelConfig.polygon_controls`, ``kind == "polygon"``): examples are rasterised from
  their polygons and predictions are written as polygons (:mod:`.polygon`).
- ``<Brush>`` (label-less brush): recorded in :attr:`LabelConfig.plain_brushes` only; it cannot
  tell classes apart, so it does not make a config servable.

Tag names are matched case-insensitively (as the editor does); attribute names are case-sensitive.
The XML is parsed with the standard library after refusing any DTD: without a ``<!DOCTYPE``
no entity can be declared, so entity expansion bombs and external entities cannot occur.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "BrushControl",
    "ImageObject",
    "LabelConfig",
    "LabelConfigError",
    "LabelDef",
    "SmartControl",
    "parse_label_config",
]

MAX_CONFIG_CHARS = 1_000_000  # real configs are a few kB; a cap keeps parsing cheap
_DTD = re.compile(r"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)
_SMART_TAGS = {
    "keypointlabels": ("keypoint", True),
    "keypoint": ("keypoint", False),
    "rectanglelabels": ("rectangle", True),
    "rectangle": ("rectangle", False),
}


class LabelConfigError(ValueError):
    """The config cannot be served; ``problems`` lists every reason found (readable sentences)."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems) or ("invalid label config",)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class LabelDef:
    """One ``<Label>``: ``name`` is the string Label Studio stores in results (alias, else value)."""

    value: str
    alias: str | None = None
    background: str | None = None
    hotkey: str | None = None

    @property
    def name(self) -> str:
        return self.alias or self.value

    def matches(self, label: str) -> bool:
        """True when ``label`` is this label's value or alias (results may carry either)."""
        return label == self.value or (self.alias is not None and label == self.alias)


@dataclass(frozen=True)
class ImageObject:
    """An ``<Image>`` object tag. ``data_key`` is ``None`` for a constant URL or a ``valueList``."""

    name: str
    value: str
    data_key: str | None
    value_list: bool = False


@dataclass(frozen=True)
class BrushControl:
    """A ``<BrushLabels>`` (``kind`` ``"brush"``) or ``<PolygonLabels>`` (``kind`` ``"polygon"``)
    control bound to an Image (``to_name``; ``to_names`` if it lists several)."""

    name: str
    to_name: str
    image_key: str
    label_defs: tuple[LabelDef, ...]
    to_names: tuple[str, ...] = ()
    kind: str = "brush"

    @property
    def labels(self) -> tuple[str, ...]:
        """The result strings of the labels, in config order (alias where one is set)."""
        return tuple(d.name for d in self.label_defs)

    def find(self, label: str) -> LabelDef | None:
        """The label whose value or alias is ``label``; ``None`` if this control has none."""
        return next((d for d in self.label_defs if d.matches(label)), None)


@dataclass(frozen=True)
class SmartControl:
    """A keypoint/rectangle tool bound to an Image; ``kind`` is ``"keypoint"`` or ``"rectangle"``."""

    tag: str
    kind: str
    name: str
    to_name: str
    label_defs: tuple[LabelDef, ...]
    smart: bool = False
    smart_only: bool = False

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.label_defs)


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a labelling config the backend uses (see module docstring)."""

    images: tuple[ImageObject, ...]
    brush_controls: tuple[BrushControl, ...]
    smart_tools: tuple[SmartControl, ...] = ()
    plain_brushes: tuple[str, ...] = field(default=())
    polygon_controls: tuple[BrushControl, ...] = ()

    @property
    def segmentation_controls(self) -> tuple[BrushControl, ...]:
        """BrushLabels then PolygonLabels controls: everything SegGPT can predict."""
        return (*self.brush_controls, *self.polygon_controls)

    def describe(self) -> str:
        """A short human-readable summary (for logs and ``/setup`` diagnostics)."""
        lines = []
        for c in self.segmentation_controls:
            labels = ", ".join(
                d.value if not d.alias else f"{d.value} (alias {d.alias})" for d in c.label_defs
            )
            tag = "BrushLabels" if c.kind == "brush" else "PolygonLabels"
            lines.append(f"{tag} {c.name!r} -> Image {c.to_name!r} (data key {c.image_key!r}): {labels}")
        for s in self.smart_tools:
            labels = ", ".join(s.labels) if s.labels else "no labels"
            lines.append(f"{s.tag} {s.name!r} -> Image {s.to_name!r}: {labels}")
        for b in self.plain_brushes:
            lines.append(f"Brush {b!r} (no labels, ignored)")
        return "\n".join(lines)


def _tag(el: ET.Element) -> str:
    return el.tag.lower() if isinstance(el.tag, str) else ""


def _parse_xml(text: str | bytes) -> ET.Element:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LabelConfigError([f"label config is not UTF-8 text: {exc}"]) from None
    if not isinstance(text, str):
        raise LabelConfigError([f"label config must be an XML string, got {type(text).__name__}"])
    if not text.strip():
        raise LabelConfigError(["label config is empty"])
    if len(text) > MAX_CONFIG_CHARS:
        raise LabelConfigError([f"label config is {len(text)} characters long (limit {MAX_CONFIG_CHARS})"])
    if _DTD.search(text):
        raise LabelConfigError(
            ["label config must not contain a DTD (<!DOCTYPE>/<!ENTITY>): refused for safety"]
        )
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise LabelConfigError([f"label config is not well-formed XML: {exc}"]) from None


def _label_defs(
    control: ET.Element, what: str, problems: list[str], *, required: bool
) -> tuple[LabelDef, ...]:
    defs: list[LabelDef] = []
    for i, lab in enumerate(el for el in control.iter() if _tag(el) == "label"):
        value = lab.get("value")
        if not value:
            problems.append(f"{what}: <Label> #{i + 1} has no value attribute")
            continue
        defs.append(LabelDef(value, lab.get("alias") or None, lab.get("background"), lab.get("hotkey")))
    seen: set[str] = set()
    for d in defs:
        if d.name in seen:
            problems.append(f"{what}: label {d.name!r} is defined twice")
        seen.add(d.name)
    if required and not defs and not any(p.startswith(what) for p in problems):
        problems.append(f"{what} has no <Label> children")
    return tuple(defs)


def _to_names(el: ET.Element) -> tuple[str, ...]:
    return tuple(n.strip() for n in (el.get("toName") or "").split(",") if n.strip())


def parse_label_config(text: str | bytes) -> LabelConfig:
    """Parse and validate ``text``; raise :class:`LabelConfigError` listing every problem.

    A config is servable when it has at least one ``<BrushLabels>`` whose ``toName`` names an
    ``<Image>`` with a ``$`` data key, and every BrushLabels control is complete (name, toName,
    labels with values). Smart tools not bound to an Image are ignored.
    """
    root = _parse_xml(text)
    problems: list[str] = []
    elements = list(root.iter())

    images: dict[str, ImageObject] = {}
    for el in elements:
        if _tag(el) != "image":
            continue
        name = el.get("name")
        if not name:
            problems.append("an <Image> has no name attribute")
            continue
        if name in images:
            problems.append(f"two <Image> tags are named {name!r}")
            continue
        raw = el.get("valueList") or el.get("value") or ""
        is_list = el.get("valueList") is not None
        key = raw[1:] if raw.startswith("$") and len(raw) > 1 and not is_list else None
        images[name] = ImageObject(name, raw, key, is_list)

    brushes: list[BrushControl] = []
    polygons: list[BrushControl] = []
    brush_names: set[str] = set()
    controls = [(e, "brush") for e in elements if _tag(e) == "brushlabels"]
    controls += [(e, "polygon") for e in elements if _tag(e) == "polygonlabels"]
    counts = {"brush": 0, "polygon": 0}
    seen_kinds: dict[str, str] = {}
    for el, kind in controls:
        counts[kind] += 1
        tag = "BrushLabels" if kind == "brush" else "PolygonLabels"
        name = el.get("name")
        what = f"{tag} {name!r}" if name else f"{tag} #{counts[kind]}"
        if not name:
            problems.append(f"{what} has no name attribute")
        elif name in brush_names:
            other = "BrushLabels" if seen_kinds[name] == "brush" else "PolygonLabels"
            pair = f"<{tag}>" if other == tag else f"<{other}> and <{tag}>"
            problems.append(f"two {pair} are named {name!r}")
        if name:
            seen_kinds.setdefault(name, kind)
        to_names = _to_names(el)
        defs = _label_defs(el, what, problems, required=True)
        if not to_names:
            problems.append(f"{what} has no toName attribute (it must name an <Image>)")
            continue
        missing = [n for n in to_names if n not in images]
        if missing:
            known = ", ".join(repr(n) for n in images) or "none"
            problems.append(f"{what} toName={','.join(missing)!r} names no <Image> (Images: {known})")
            continue
        image = images[to_names[0]]
        if image.data_key is None:
            why = "a multi-image valueList" if image.value_list else f"value={image.value!r}"
            problems.append(
                f"{what}: its <Image> {image.name!r} has {why}; a per-task field like "
                'value="$image" is needed'
            )
            continue
        if name and name not in brush_names:
            brush_names.add(name)
            found = BrushControl(name, to_names[0], image.data_key, defs, to_names, kind)
            (brushes if kind == "brush" else polygons).append(found)

    smart: list[SmartControl] = []
    for el in elements:
        kind_labelled = _SMART_TAGS.get(_tag(el))
        to_names = _to_names(el)
        if kind_labelled is None or not el.get("name") or not to_names or to_names[0] not in images:
            continue
        kind, labelled = kind_labelled
        ignored: list[str] = []  # a broken smart tool only loses interactivity; it does not fail the config
        defs = _label_defs(el, el.tag, ignored, required=False) if labelled else ()
        smart.append(
            SmartControl(
                el.tag,
                kind,
                el.get("name", ""),
                to_names[0],
                defs,
                smart=(el.get("smart") or "").lower() == "true",
                smart_only=(el.get("smartOnly") or "").lower() == "true",
            )
        )

    plain = tuple(el.get("name", "") for el in elements if _tag(el) == "brush" and el.get("name"))

    if not problems and not brushes and not polygons:
        if not images:
            problems.append('no <Image> object tag (e.g. <Image name="image" value="$image"/>)')
        hint = (
            f" (found label-less <Brush> {', '.join(map(repr, plain))}: use BrushLabels instead)"
            if plain
            else ""
        )
        problems.append(
            "no <BrushLabels> or <PolygonLabels> control bound to an <Image>: SegGPT predicts masks, so the "
            f'config needs e.g. <BrushLabels name="tag" toName="image"><Label value="Cat"/></BrushLabels>{hint}'
        )
    if problems:
        raise LabelConfigError(problems)
    return LabelConfig(tuple(images.values()), tuple(brushes), tuple(smart), plain, tuple(polygons))
