"""``seggpt-backend tune`` and ``prompts`` against a real Redis (and the embedded path's errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seggpt_backend.cli import main
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.prompts import PromptStore
from tests.service_support import cleanup_redis, new_prefix, redis_url


@pytest.fixture
def redis_env(monkeypatch: pytest.MonkeyPatch):
    prefix = new_prefix()
    monkeypatch.setenv("REDIS_URL", redis_url())
    monkeypatch.setenv("SEGGPT_KEY_PREFIX", prefix)
    yield PromptStore(RedisKV.from_url(redis_url(), prefix))
    cleanup_redis(prefix)


def _promote(store: PromptStore, label: str, value: float) -> str:
    image = np.full((3, 4, 5), value, np.float32)
    target = np.full((3, 4, 5), -value, np.float32)
    return store.promote(
        "3",
        label=label,
        image=image,
        target=target,
        engine_version="seggpt-x",
        mode="alone",
        run="1",
        miou={},
    ).version


def test_prompts_lists_rolls_back_and_shows(redis_env: PromptStore, tmp_path: Path, capsys) -> None:
    v1 = _promote(redis_env, "Cat", 0.5)
    v2 = _promote(redis_env, "Cat", 1.0)
    assert main(["prompts", "--project", "3"]) == 0
    assert f"Cat: version {v2} (alone, tuned for seggpt-x" in capsys.readouterr().out
    assert main(["prompts", "rollback", "--project", "3", "--label", "Cat", "--to", v1]) == 0
    assert redis_env.active("3") == {"Cat": v1}
    capsys.readouterr()
    assert main(["prompts", "--project", "3", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["active"] == {"Cat": v1} and set(listing["versions"]) == {v1, v2}
    assert main(["prompts", "rollback", "--project", "3", "--label", "Cat", "--to", "42"]) == 2
    assert "no prompt version '42'" in capsys.readouterr().err
    assert main(["prompts", "show", "--project", "3", "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"Cat-v{v}-{n}.png" for v in (v1, v2) for n in ("image", "mask")]
    with Image.open(tmp_path / f"Cat-v{v1}-image.png") as im:
        assert im.size == (5, 4) and im.mode == "RGB"


def test_tune_queues_a_run_on_the_tune_queue(redis_env: PromptStore, capsys) -> None:
    assert main(["tune", "--project", "3", "--label", "Cat"]) == 0
    out = capsys.readouterr().out
    assert "tuning run queued" in out and "no worker is running" in out
    assert main(["tune", "--project", "3"]) == 0
    assert "joined" in capsys.readouterr().out  # debounced: one waiting run per project


def test_bad_input_exits_2(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    assert main(["prompts", "--project", "3"]) == 2
    assert "needs REDIS_URL" in capsys.readouterr().err
    assert main(["tune", "--project", "3"]) == 2
    assert "set LABEL_STUDIO_URL" in capsys.readouterr().err
    assert main(["tune", "--project", "abc"]) == 2
