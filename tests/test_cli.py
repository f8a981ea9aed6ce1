"""``seggpt-backend segment`` on real PNG/JPEG files with ``random:tiny`` weights.

Random weights paint arbitrary shapes, so the tests check what the command guarantees whatever
the model says: one output per query at the query's displayed size, the value set of the
output, the exit code and messages, and agreement with the engine called directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seggpt_backend.cli import _prompt_masks, main
from seggpt_backend.engine.engine import load_engine
from seggpt_backend.engine.images import load_image, load_mask
from tests.fixtures import (
    jpeg_with_exif_orientation,
    non_image_file,
    scene,
    truncated_file,
    write_jpeg,
    write_png,
)

RED, GREEN = (255, 0, 0), (0, 255, 0)


@pytest.fixture
def prompt(tmp_path: Path) -> tuple[Path, Path, np.ndarray, dict[str, np.ndarray]]:
    """A 48 x 80 scene and its white-on-black "Cat" mask as PNG files."""
    image, masks = scene(48, 80, seed=0)
    write_png(tmp_path / "example.png", image)
    write_png(tmp_path / "example_mask.png", (masks["Cat"] * 255).astype(np.uint8))
    return tmp_path / "example.png", tmp_path / "example_mask.png", image, masks


def _queries(tmp_path: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    """Query files -> (path, displayed (H, W)): two non-square PNGs and an EXIF-rotated JPEG."""
    wide, _ = scene(37, 91, seed=1)
    tall, _ = scene(90, 33, seed=2)
    write_png(tmp_path / "wide.png", wide)
    write_png(tmp_path / "tall.png", tall)
    # stored 48 wide x 64 high; orientation 6 displays it 64 wide x 48 high
    jpeg_with_exif_orientation(tmp_path / "rotated.jpg", 6, size=(64, 48))
    assert Image.open(tmp_path / "rotated.jpg").size == (48, 64)
    return {
        "wide": (tmp_path / "wide.png", (37, 91)),
        "tall": (tmp_path / "tall.png", (90, 33)),
        "rotated": (tmp_path / "rotated.jpg", (48, 64)),
    }


def _segment(*args: object, weights: str | None = "random:tiny") -> int:
    argv = ["segment", *(["--weights", weights] if weights else []), "--device", "cpu", "--dtype", "fp32"]
    return main([*argv, *map(str, args)])


def test_one_mask_per_query_at_displayed_size(tmp_path, prompt, capsys):
    image_path, mask_path, image, masks = prompt
    queries = _queries(tmp_path)
    out = tmp_path / "out"
    code = _segment("--prompt", image_path, mask_path, "--out", out, *(p for p, _ in queries.values()))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["rotated.png", "tall.png", "wide.png"]
    stdout = capsys.readouterr().out
    for name, (path, size) in queries.items():
        written = np.asarray(Image.open(out / f"{name}.png"))
        assert written.shape == size, name
        assert set(np.unique(written)) <= {0, 255}
        assert f"{path} -> {out / name}.png" in stdout
    # the command writes what the engine says for the displayed (EXIF-applied) query pixels
    engine = load_engine("random:tiny", device="cpu", dtype="fp32")
    prompts = engine.prepare_prompts([image], [masks["Cat"]])
    displayed = load_image(queries["rotated"][0], target_size=None)
    expected = engine.predict_masks([displayed], prompts)[0].mask
    assert np.array_equal(np.asarray(Image.open(out / "rotated.png")) > 0, expected)


def test_save_soft_writes_the_painting(tmp_path, prompt):
    image_path, mask_path, _, _ = prompt
    queries = _queries(tmp_path)
    out = tmp_path / "out"
    paths = [p for p, _ in queries.values()]
    assert _segment("--prompt", image_path, mask_path, "--out", out, "--save-soft", *paths) == 0
    for name, (_, size) in queries.items():
        soft = np.load(out / f"{name}.npy")
        assert soft.shape == (*size, 3) and soft.dtype == np.float32
        assert soft.min() >= 0.0 and soft.max() <= 255.0
        assert soft.std() > 0.5  # a painting, not a constant
        mask = np.asarray(Image.open(out / f"{name}.png")) > 0
        # the mask is the authors' rule (channel mean > 128) on the same painting
        assert np.mean((soft.mean(axis=2) > 128) == mask) > 0.99


def test_multicolour_prompt_gives_prompt_colours_only(tmp_path, prompt):
    image_path, _, _, masks = prompt
    colour = np.zeros((*masks["Cat"].shape, 3), np.uint8)
    colour[masks["Cat"]], colour[masks["Dog"]] = RED, GREEN
    write_png(tmp_path / "classes.png", colour)
    queries = _queries(tmp_path)
    out = tmp_path / "out"
    paths = [p for p, _ in queries.values()]
    assert _segment("--prompt", image_path, tmp_path / "classes.png", "--out", out, *paths) == 0
    seen: set[tuple[int, ...]] = set()
    for name, (_, size) in queries.items():
        written = np.asarray(Image.open(out / f"{name}.png"))
        assert written.shape == (*size, 3)
        seen |= {tuple(c) for c in np.unique(written.reshape(-1, 3), axis=0)}
    assert seen <= {(0, 0, 0), RED, GREEN}


def test_jpeg_prompt_masks_are_not_read_as_hundreds_of_classes(tmp_path, prompt):
    """JPEG noise must not turn a binary mask into a colour one, nor add classes."""
    image_path, _, _, masks = prompt
    write_jpeg(tmp_path / "binary.jpg", np.repeat((masks["Cat"] * 255).astype(np.uint8)[:, :, None], 3, 2))
    colour = np.zeros((*masks["Cat"].shape, 3), np.uint8)
    colour[masks["Cat"]], colour[masks["Dog"]] = RED, GREEN
    write_jpeg(tmp_path / "classes.jpg", colour, quality=80)
    assert len(np.unique(load_image(tmp_path / "classes.jpg").reshape(-1, 3), axis=0)) > 10
    query = _queries(tmp_path)["wide"][0]

    assert _segment("--prompt", image_path, tmp_path / "binary.jpg", "--out", tmp_path / "b", query) == 0
    binary = np.asarray(Image.open(tmp_path / "b" / "wide.png"))
    assert binary.shape == (37, 91) and set(np.unique(binary)) <= {0, 255}

    assert _segment("--prompt", image_path, tmp_path / "classes.jpg", "--out", tmp_path / "c", query) == 0
    written = np.asarray(Image.open(tmp_path / "c" / "wide.png")).reshape(-1, 3).astype(int)
    colours = np.unique(written, axis=0)
    assert len(colours) <= 3
    assert all(min(np.abs(c - ref).sum() for ref in ((0, 0, 0), RED, GREEN)) <= 48 for c in colours)


def test_prompt_mask_rules(tmp_path):
    """Grey masks follow load_mask's rule (0/1 and 0/255 alike, resized to the image); colour
    masks become snapped classes."""
    fg = np.zeros((20, 30), bool)
    fg[5:15, 10:25] = True

    def saved(name: str, pixels: np.ndarray) -> str:
        path = tmp_path / name
        Image.fromarray(pixels).save(path)
        return str(path)

    zero_one = saved("01.png", fg.astype(np.uint8))
    grey = saved("grey.png", fg.astype(np.uint8) * 255)
    masks, colours = _prompt_masks([zero_one, grey], [(20, 30), (40, 60)], 10**8)
    assert colours is None and np.array_equal(masks[0], fg)
    assert masks[1].shape == (40, 60) and np.array_equal(masks[1][::2, ::2], fg)
    assert np.array_equal(masks[0], load_mask(zero_one))  # the service's rule, not a second one

    single = np.zeros((20, 30, 3), np.uint8)
    single[fg] = (200, 30, 40)
    masks, colours = _prompt_masks([saved("single.png", single)], [(20, 30)], 10**8)
    assert colours is None and np.array_equal(masks[0], fg)

    two = np.zeros((20, 30, 3), np.uint8)
    two[fg] = RED
    two[:3] = GREEN
    two[10, 12] = (230, 20, 10)  # a stray near-red pixel snaps to red
    masks, colours = _prompt_masks([saved("two.png", two)], [(20, 30)], 10**8)
    assert colours is not None and {tuple(c) for c in colours} == {RED, GREEN}
    assert tuple(masks[0][10, 12]) == RED


def test_corrupt_query_fails_alone(tmp_path, prompt, capsys):
    image_path, mask_path, _, _ = prompt
    queries = _queries(tmp_path)
    truncated = truncated_file(tmp_path / "truncated.jpg", keep=0.3)
    text = non_image_file(tmp_path / "notes.png")
    out = tmp_path / "out"
    paths = [queries["wide"][0], truncated, text, queries["tall"][0]]
    code = _segment("--prompt", image_path, mask_path, "--out", out, *paths)
    assert code == 1
    err = capsys.readouterr().err
    assert str(truncated) in err and "truncated or corrupt" in err
    assert str(text) in err and "not an image" in err
    assert sorted(p.name for p in out.iterdir()) == ["tall.png", "wide.png"]


def test_bad_prompt_or_weights_exit_2_with_message(tmp_path, prompt, capsys):
    image_path, mask_path, _, _ = prompt
    query = _queries(tmp_path)["wide"][0]
    bad = non_image_file(tmp_path / "bad_mask.png")
    assert _segment("--prompt", image_path, bad, "--out", tmp_path / "o", query) == 2
    assert f"error: file '{bad}' is not an image" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "seggpt.pth"
    code = _segment("--prompt", image_path, mask_path, "--out", tmp_path / "o", query, weights=str(missing))
    assert code == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_seggpt_weights_env_is_used_without_flag(tmp_path, prompt, monkeypatch, capsys):
    image_path, mask_path, _, _ = prompt
    query = _queries(tmp_path)["wide"][0]
    common = ("--prompt", image_path, mask_path, "--save-soft")
    assert _segment(*common, "--out", tmp_path / "flag3", query, weights="random:tiny@3") == 0
    assert _segment(*common, "--out", tmp_path / "flag0", query, weights="random:tiny@0") == 0
    monkeypatch.setenv("SEGGPT_WEIGHTS", "random:tiny@3")
    assert _segment(*common, "--out", tmp_path / "env", query, weights=None) == 0
    env = np.load(tmp_path / "env" / "wide.npy")
    assert np.array_equal(env, np.load(tmp_path / "flag3" / "wide.npy"))
    assert not np.array_equal(env, np.load(tmp_path / "flag0" / "wide.npy"))
    # the flag wins over the environment
    assert _segment(*common, "--out", tmp_path / "both", query, weights="random:tiny@0") == 0
    assert np.array_equal(np.load(tmp_path / "both" / "wide.npy"), np.load(tmp_path / "flag0" / "wide.npy"))
    monkeypatch.setenv("SEGGPT_WEIGHTS", str(tmp_path / "absent.safetensors"))
    assert _segment(*common, "--out", tmp_path / "bad", query, weights=None) == 2
    assert "absent.safetensors" in capsys.readouterr().err


def test_installed_console_script(tmp_path, prompt):
    image_path, mask_path, _, _ = prompt
    queries = _queries(tmp_path)
    script = Path(sys.executable).parent / "seggpt-backend"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "SEGGPT_WEIGHTS"} | {"LOG_LEVEL": "WARNING"}
    args = ["segment", "--weights", "random:tiny", "--prompt", str(image_path), str(mask_path)]
    result = subprocess.run(
        [str(script), *args, "--out", str(tmp_path / "out"), str(queries["rotated"][0])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "rotated.png" in result.stdout
    assert np.asarray(Image.open(tmp_path / "out" / "rotated.png")).shape == (48, 64)
