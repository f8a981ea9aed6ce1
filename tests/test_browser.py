"""Proven in a real browser: Label Studio 1.23's own editor, in headless Chromium, shows our regions.

Browser: selenium driving Debian's ``chromium`` through its ``chromedriver`` (apt, installed on
demand by ``scripts/install-browser.sh``; no browser is downloaded from a CDN).

Setup: the real Label Studio of :mod:`tests.labelstudio_server` and ``seggpt-backend serve``
started as in :mod:`tests.test_e2e` (embedded mode, demo weights), one project per test, with two
accepted Cat-only annotations as examples. The browser logs in through Label Studio's login form
with the fixture's user and password, as a person would.

1. *A prediction is drawn.* "Retrieve Predictions" stores our brush prediction; the task opened
   in the editor lists a ``Cat`` brush region in the region panel, and the editor's canvas holds
   its mask: the red (``#FF0000``, the label's colour) pixels of the Konva canvases, sampled at
   the image's own resolution, match the stored RLE mask (IoU >= 0.9).
2. *A polygon prediction is drawn.* The same with a ``PolygonLabels`` config: the examples are
   polygon annotations, our prediction is ``polygonlabels`` regions, and the editor lists them and
   fills them where the rasterised polygons lie.
3. *A smart keypoint refines.* In a project whose config adds a smart ``KeyPointLabels`` (and
   with "Use predictions to prelabel tasks" off, so the editor starts empty), Auto-Annotation and
   Auto-Accept Suggestions are switched on in the bottom bar, the smart keypoint tool picked from
   the toolbar's Auto-Detect group and the keypoint's ``Cat`` label selected; then one click on
   the cat. The browser's own request to ``/api/ml/{id}/interactive-annotating`` (read from
   Chromium's network log) carries the keypoint at the clicked spot, its answer is our brush
   region containing that pixel, and the editor then lists that region and draws its mask.

Screenshots (``browser-prediction.png``, ``browser-polygon.png``, ``browser-smart-keypoint.png``) are written to
``$SEGGPT_BROWSER_SCREENSHOTS`` (``docs`` refreshes the README's pictures), else to the test's
temporary dir. Every wait is explicit and names what did not appear; on a failure the page's
screenshot and HTML are saved next to the test's temporary files and their paths are printed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from seggpt_backend.labelstudio import rle
from seggpt_backend.labelstudio.polygon import region_mask
from tests.e2e_support import Backend, iou, logs_on_failure, running_backend
from tests.fixtures import scene, write_png
from tests.labelstudio_server import LabelStudio, label_studio  # noqa: F401  (session fixture)
from tests.service_support import brush_result, polygon_result

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / "scripts" / "install-browser.sh"
HEIGHT, WIDTH = 240, 320  # the scenes' size; the editor shows them about 2.4x larger
# The brush control and a smart keypoint control with the same labels (as the README's config).
CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Cat" background="#FF0000"/>
    <Label value="Dog" background="#0000FF"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Cat" smart="true" background="#FF0000"/>
    <Label value="Dog" smart="true" background="#0000FF"/>
  </KeyPointLabels>
</View>"""
# A PolygonLabels project (the same Cat colour): our polygon predictions drawn by the editor.
POLYGON_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <PolygonLabels name="poly" toName="image">
    <Label value="Cat" background="#FF0000"/>
  </PolygonLabels>
</View>"""
WAIT_S = 30.0  # generous for a loaded 2-core machine; a healthy run needs a few seconds per step
DRAWN_IOU = 0.9  # canvas pixels vs the RLE: resampling at the border costs a few percent (0.97 seen)

T = TypeVar("T")


# ------------------------------------------------------------------------------------ the browser
def ensure_browser() -> tuple[str, str]:
    """Run the install script (a no-op when installed); returns ``(chromium, chromedriver)`` paths."""
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if proc.returncode != 0 or chromium is None or driver is None:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"installing chromium/chromedriver failed (exit {proc.returncode}):\n{tail}")
    return chromium, driver


def start_chromium(chromium: str, driver: str) -> Any:
    """Headless Chromium with its network log on (``goog:loggingPrefs`` performance)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        "--disable-gpu",
        "--window-size=1400,1000",
        "--force-device-scale-factor=1",  # canvas pixels = CSS pixels
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@dataclass
class Exchange:
    """One request the page sent and, once finished, the answer (``body`` None until then)."""

    request_id: str
    url: str
    post_data: str
    body: str | None = None


# Reads the editor's Konva canvases at the image's resolution: "1" where a canvas holds a red
# (label colour #FF0000) pixel, "0" elsewhere, "-" where the image is outside the canvas. Where the
# image lies is read from the editor's own <img alt="image"> (hidden by a clip, but laid out with
# the displayed size and the zoom/pan transform): the stage may show it slightly zoomed in.
_RED_PIXELS_JS = """
const [W, H] = arguments;
const img = document.querySelector('img[alt="image"]').getBoundingClientRect();
const out = new Array(W * H).fill('-');
for (const c of document.querySelectorAll('.konvajs-content canvas')) {
  const r = c.getBoundingClientRect();
  if (!c.width || !c.height || !r.width || !r.height) continue;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let y = 0; y < H; y++) {
    const cy = Math.floor((img.top - r.top + (y + 0.5) * img.height / H) * c.height / r.height);
    if (cy < 0 || cy >= c.height) continue;
    for (let x = 0; x < W; x++) {
      const cx = Math.floor((img.left - r.left + (x + 0.5) * img.width / W) * c.width / r.width);
      if (cx < 0 || cx >= c.width) continue;
      const i = (cy * c.width + cx) * 4;
      const red = d[i + 3] > 0 && d[i] > 150 && d[i + 1] < 90 && d[i + 2] < 90;
      if (red) out[y * W + x] = '1'; else if (out[y * W + x] === '-') out[y * W + x] = '0';
    }
  }
}
return out.join('');
"""


@dataclass
class Drawn:
    """What the canvas shows, in image pixels: ``red`` and ``visible`` are (HEIGHT, WIDTH) bool."""

    red: np.ndarray
    visible: np.ndarray

    def iou(self, expected: np.ndarray) -> float:
        """IoU with ``expected`` over the part of the image the canvas shows."""
        return iou(self.red, expected & self.visible)

    def mismatch(self, expected: np.ndarray) -> str:
        """Why the drawn mask differs from ``expected``: sizes, IoU, centroids (row, col)."""

        def centre(m: np.ndarray) -> tuple[float, float]:
            rows, cols = np.nonzero(m)
            return (round(float(rows.mean()), 1), round(float(cols.mean()), 1)) if rows.size else (-1.0, -1.0)

        return (
            f"the canvas shows {int(self.red.sum())} red pixels centred at {centre(self.red)}, the "
            f"region has {int(expected.sum())} centred at {centre(expected)} "
            f"({int(self.visible.sum())} of {self.visible.size} image pixels visible); IoU {self.iou(expected):.2f}"
        )


@dataclass
class Editor:
    """Label Studio's pages as a user drives them, with waits that say what did not appear."""

    driver: Any
    ls: LabelStudio
    failures: Path
    _log: list[dict[str, Any]] = field(default_factory=list)

    # ---- waiting
    def wait(self, what: str, condition: Callable[[], T | None], timeout: float = WAIT_S) -> T:
        """Poll ``condition`` until truthy; on timeout fail naming ``what`` (and save the page)."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
            except Exception as exc:  # a stale element while React re-renders: try again
                last_error, value = exc, None
            if isinstance(value, np.ndarray) or value:  # an array is returned only once it qualifies
                return value
            time.sleep(0.2)
        shot = self.save_failure(what)
        raise AssertionError(
            f"{what}: not seen within {timeout:.0f} s (page {self.driver.current_url}; "
            f"screenshot and HTML: {shot}.png and .html; last error: {last_error!r})"
        )

    def save_failure(self, what: str) -> Path:
        self.failures.mkdir(parents=True, exist_ok=True)
        base = self.failures / "".join(c if c.isalnum() else "-" for c in what)[:60]
        with contextlib.suppress(Exception):
            self.driver.save_screenshot(str(base.with_suffix(".png")))
            base.with_suffix(".html").write_text(self.driver.page_source)
        return base

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def visible(self, selector: str) -> Any:
        return next((e for e in self.css(selector) if e.is_displayed()), None)

    # ---- pages
    def login(self) -> None:
        """Through the login form with the fixture's e-mail and password."""
        self.driver.get(f"{self.ls.url}/user/login/")
        self.wait("the login form", lambda: self.visible("input[name=email]")).send_keys(self.ls.username)
        self.visible("input[name=password]").send_keys(self.ls.password)
        self.visible("button[type=submit]").click()
        self.wait("the page after logging in", lambda: "/user/login" not in self.driver.current_url)

    def open_task(self, project: int, task: int) -> None:
        """The Data Manager with the task open in the editor, once the image is displayed."""
        self.driver.get(f"{self.ls.url}/projects/{project}/data?task={task}")
        self.wait(f"the editor of task {task} (a canvas)", lambda: self.visible(".konvajs-content canvas"))
        self.wait(
            f"the image of task {task} loaded in the editor",
            lambda: self.driver.execute_script(
                "const im = document.querySelector('img[alt=\"image\"]');"  # alt = the Image tag's name
                "return im !== null && im.complete && im.naturalWidth === arguments[0];",
                WIDTH,
            ),
        )

    def regions(self) -> list[str]:
        """The region panel's rows as text (e.g. ``"1|Cat|0.98"``)."""
        return [e.text.replace("\n", "|") for e in self.css(".lsf-outliner-item") if e.is_displayed()]

    def drawn(self) -> Drawn:
        """Where the editor's canvases draw the label colour, in image pixels."""
        chars = self.driver.execute_script(_RED_PIXELS_JS, WIDTH, HEIGHT)
        codes = np.frombuffer(chars.encode(), np.uint8).reshape(HEIGHT, WIDTH)
        return Drawn(red=codes == ord("1"), visible=codes != ord("-"))

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(path)), f"no screenshot written to {path}"

    # ---- the bottom bar and the toolbar
    def switch_on(self, testid: str, what: str) -> None:
        """A bottom-bar toggle (its ``input`` checkbox is hidden behind the styled switch)."""
        toggle = self.wait(what, lambda: next(iter(self.css(f'[data-testid="{testid}"]')), None))
        if not toggle.is_selected():
            self.driver.execute_script("arguments[0].click()", toggle)
        self.wait(f"{what} switched on", lambda: self.css(f'[data-testid="{testid}"]')[0].is_selected())

    def pick_smart_keypoint(self) -> None:
        """Hover the toolbar's Auto-Detect group and click its keypoint tool."""
        from selenium.webdriver.common.action_chains import ActionChains

        group = self.wait(
            "the toolbar's Auto-Detect (smart tools) group",
            lambda: self.visible(".lsf-toolbar__group > .lsf-tool_smart"),
        )
        ActionChains(self.driver).move_to_element(group).perform()
        self.wait(
            "the smart keypoint tool in the Auto-Detect group",
            lambda: self.visible('.lsf-tool__extra [aria-label="key-point-tool"]'),
        ).click()
        self.wait(
            "the Auto-Detect group active (its keypoint tool picked)",
            lambda: self.visible(".lsf-toolbar__group > .lsf-tool_smart.lsf-tool_active"),
        )

    def choose_label(self, label: str, hotkey: str) -> None:
        """Click the label button showing ``label`` and ``hotkey`` (hotkeys tell the controls apart)."""
        button = self.wait(
            f"the label button {label} ({hotkey})",
            lambda: next((e for e in self.css(".lsf-label") if e.text.split("\n") == [label, hotkey]), None),
        )
        button.click()
        self.wait(
            f"the label {label} ({hotkey}) selected", lambda: "selected" in button.get_attribute("class")
        )

    def click_image(self, x_pct: float, y_pct: float) -> None:
        """A left click at percent coordinates of the displayed image (viewport pixels, no offsets)."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        rect = self.driver.execute_script(  # the image as laid out (see _RED_PIXELS_JS)
            "const r = document.querySelector('img[alt=\"image\"]').getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height];"
        )
        left, top, width, height = rect
        actions = ActionBuilder(self.driver)
        actions.pointer_action.move_to_location(
            round(left + x_pct / 100 * width), round(top + y_pct / 100 * height)
        )
        actions.pointer_action.click()
        actions.perform()

    # ---- the network log
    def exchanges(self, url_part: str) -> list[Exchange]:
        """Requests whose URL contains ``url_part`` so far, with their bodies once finished."""
        self._log.extend(json.loads(e["message"])["message"] for e in self.driver.get_log("performance"))
        sent = {
            m["params"]["requestId"]: m["params"]["request"]
            for m in self._log
            if m["method"] == "Network.requestWillBeSent" and url_part in m["params"]["request"]["url"]
        }
        done = {m["params"]["requestId"] for m in self._log if m["method"] == "Network.loadingFinished"}
        out = []
        for rid, req in sent.items():
            ex = Exchange(rid, req["url"], req.get("postData", ""))
            if rid in done:
                got = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": rid})
                ex.body = base64.b64decode(got["body"]).decode() if got.get("base64Encoded") else got["body"]
            out.append(ex)
        return out


@pytest.fixture(scope="module")
def chromium_paths() -> tuple[str, str]:
    return ensure_browser()


@pytest.fixture
def editor(
    chromium_paths: tuple[str, str],
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Editor]:
    driver = start_chromium(*chromium_paths)
    try:
        ed = Editor(driver, label_studio, tmp_path / "browser-failures")
        ed.login()
        yield ed
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def backend(label_studio: LabelStudio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:  # noqa: F811
    with running_backend("embedded", label_studio, tmp_path_factory.mktemp("browser-backend")) as b:
        yield b


def screenshot_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("SEGGPT_BROWSER_SCREENSHOTS", "").strip()
    return (
        (REPO / configured if not Path(configured).is_absolute() else Path(configured))
        if configured
        else tmp_path
    )


# ------------------------------------------------------------------------------------ the project
@dataclass
class Project:
    """A project with two Cat examples and two unlabelled queries; ``truth[name]`` is (H, W) bool."""

    id: int
    ml_backend: int
    tasks: dict[str, int]
    truth: dict[str, np.ndarray]


def make_project(
    ls: LabelStudio,
    backend: Backend,
    tmp: Path,
    *,
    prelabel: bool,
    config: str = CONFIG,
    result: Callable[[dict[str, np.ndarray]], list[dict[str, Any]]] = brush_result,
) -> Project:
    """``prelabel``: Label Studio's "Use predictions to prelabel tasks" (off: the editor starts
    empty); ``result`` turns an example's masks into its annotation for ``config``'s control."""
    files, truth = {}, {}
    for name, seed in (("ex1", 1), ("ex2", 2), ("q1", 11), ("q2", 12)):
        pixels, masks = scene(HEIGHT, WIDTH, seed=seed, shapes={"Cat": 1})
        files[name] = write_png(tmp / f"{name}.png", pixels)
        truth[name] = masks["Cat"]
    project = ls.create_project(config)
    r = ls.api.patch(f"/api/projects/{project}", json={"show_collab_predictions": prelabel})
    assert r.is_success, r.text
    tasks = dict(zip(files, ls.import_images(project, list(files.values())), strict=True))
    for name in ("ex1", "ex2"):
        ls.annotate(tasks[name], result({"Cat": truth[name]}))
    ml = ls.connect_ml_backend(project, backend.url, is_interactive=True)
    return Project(project, ml, tasks, truth)


def brush_mask(region: dict[str, Any]) -> np.ndarray:
    """A brushlabels region of ours as (HEIGHT, WIDTH) bool, after checking where it belongs."""
    assert region["type"] == "brushlabels", region["type"]
    assert (region["from_name"], region["to_name"]) == ("tag", "image")
    assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
    assert region["value"]["brushlabels"] == ["Cat"], region["value"]["brushlabels"]
    return rle.decode(region["value"]["rle"], HEIGHT, WIDTH) > 0


def polygon_mask(region: dict[str, Any]) -> np.ndarray:
    """A polygonlabels region of ours, rasterised as (HEIGHT, WIDTH) bool, after the same checks."""
    assert region["type"] == "polygonlabels", region["type"]
    assert (region["from_name"], region["to_name"]) == ("poly", "image")
    assert region["value"]["polygonlabels"] == ["Cat"] and region["value"]["closed"], region["value"]
    mask = region_mask(region)
    assert mask is not None and mask.shape == (HEIGHT, WIDTH), region
    return mask


@dataclass(frozen=True)
class Control:
    """How a project's labelling control is exercised: its config, how an example's masks become
    an annotation, how one of our regions decodes, and the screenshot's name."""

    config: str
    result: Callable[[dict[str, np.ndarray]], list[dict[str, Any]]]
    mask: Callable[[dict[str, Any]], np.ndarray]
    screenshot: str
    one_region: bool  # a brush prediction is one region per label; a polygon one per part


CONTROLS = {
    "brush": Control(CONFIG, brush_result, brush_mask, "browser-prediction.png", one_region=True),
    "polygon": Control(POLYGON_CONFIG, polygon_result, polygon_mask, "browser-polygon.png", one_region=False),
}


def click_point(truth: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the shape pixel nearest its centroid (inside the ellipse)."""
    rows, cols = np.nonzero(truth)
    k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return int(rows[k]), int(cols[k])


# ------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("control", sorted(CONTROLS))
def test_our_prediction_is_drawn_in_the_editor(
    editor: Editor,
    backend: Backend,
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
    control: str,
) -> None:
    ls, c = label_studio, CONTROLS[control]
    with logs_on_failure(backend, ls):
        project = make_project(ls, backend, tmp_path, prelabel=True, config=c.config, result=c.result)
        task = project.tasks["q1"]
        ls.retrieve_predictions(project.id, [task])
        (prediction,) = ls.predictions(task)
        regions = prediction["result"]
        assert regions and (len(regions) == 1 or not c.one_region), regions
        stored = np.logical_or.reduce([c.mask(region) for region in regions])
        assert iou(stored, project.truth["q1"]) >= 0.5, "the demo model missed the cat: nothing to show"

        editor.open_task(project.id, task)
        rows = editor.wait(
            f"{len(regions)} Cat region(s) in the region panel",
            lambda: len(r := [r for r in editor.regions() if "Cat" in r]) == len(regions) and r,
        )
        assert len(rows) == len(regions), editor.regions()
        drawn = editor.wait(
            "the Cat region drawn on the canvas",
            lambda: (m := editor.drawn()).red.sum() >= 0.5 * stored.sum() and m,
        )
        # Brush: 0.97 seen (resampling at the border); polygon fill and outline: 0.99 seen.
        assert drawn.iou(stored) >= DRAWN_IOU, drawn.mismatch(stored)
        editor.screenshot(screenshot_dir(tmp_path) / c.screenshot)


def test_a_smart_keypoint_shows_our_refined_region(
    editor: Editor,
    backend: Backend,
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    ls = label_studio
    with logs_on_failure(backend, ls):
        project = make_project(ls, backend, tmp_path, prelabel=False)
        task = project.tasks["q2"]
        editor.open_task(project.id, task)
        assert editor.regions() == [], "the editor should start empty (prelabelling is off)"
        assert not editor.drawn().red.any(), "red on the canvas before any click"

        editor.switch_on("bottombar-auto-annotation-toggle", "the Auto-Annotation toggle")
        editor.switch_on("bottombar-auto-accept-toggle", "the Auto-Accept Suggestions toggle")
        editor.pick_smart_keypoint()
        editor.choose_label("Cat", "3")  # the KeyPointLabels' Cat (the brush's Cat is "1")
        row, col = click_point(project.truth["q2"])
        x_pct, y_pct = (col + 0.5) / WIDTH * 100, (row + 0.5) / HEIGHT * 100
        editor.click_image(x_pct, y_pct)

        # What the editor sent to Label Studio (forwarded to our /predict) and what came back.
        (exchange,) = editor.wait(
            "the answer to the editor's interactive-annotating request",
            lambda: (ex := editor.exchanges("/interactive-annotating")) and all(e.body for e in ex) and ex,
        )
        assert exchange.url.endswith(f"/api/ml/{project.ml_backend}/interactive-annotating"), exchange.url
        sent = json.loads(exchange.post_data)
        assert sent["task"] == task
        (point,) = sent["context"]["result"]
        assert (point["type"], point["from_name"], point["is_positive"]) == ("keypointlabels", "kp", True)
        assert point["value"]["keypointlabels"] == ["Cat"]
        # The keypoint is where the pointer clicked (within about a pixel of the image), on the cat.
        clicked = (int(point["value"]["y"] / 100 * HEIGHT), int(point["value"]["x"] / 100 * WIDTH))
        assert abs(point["value"]["x"] - x_pct) < 0.6 and abs(point["value"]["y"] - y_pct) < 0.6, (
            x_pct,
            y_pct,
            point,
        )
        assert project.truth["q2"][clicked], f"the keypoint {clicked} (row, col) is not on the cat"
        answer = json.loads(exchange.body or "{}")
        assert "errors" not in answer, answer
        (region,) = answer["data"]["result"]
        returned = brush_mask(region)
        assert returned[clicked], "the clicked pixel is not in the returned region"
        assert iou(returned, project.truth["q2"]) >= 0.5, "the returned region is not the cat"

        # The editor shows it: auto-accepted, our region replaces the keypoint in the region panel
        # (a row with its label and score), and its mask is drawn on the canvas.
        score = f"{float(region['score']):.2f}"
        editor.wait(
            f"our Cat region (score {score}) in the region panel",
            lambda: [r for r in editor.regions() if "Cat" in r and score in r],
        )
        drawn = editor.wait(
            "the refined Cat mask drawn on the canvas",
            lambda: (m := editor.drawn()).red.sum() >= 0.5 * returned.sum() and m,
        )
        assert drawn.iou(returned) >= DRAWN_IOU, drawn.mismatch(returned)
        editor.screenshot(screenshot_dir(tmp_path) / "browser-smart-keypoint.png")
