"""``seggpt-backend report``: figures from measurements, the files it writes, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seggpt_backend.cli import main
from seggpt_backend.report import figures, short_version, spearman, write_report
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.quality import LabelQuality, Measurement, QualityStore
from tests.service_support import cleanup_redis, new_prefix, redis_url

V1 = "seggpt-demo-1a2b3c.ex-0123456789"
V2 = "seggpt-demo-1a2b3c.ex-9876543210.pr-abcdef0123"


def _entries() -> list[Measurement]:
    out = []
    for i in range(6):
        version = V1 if i < 3 else V2
        cat = LabelQuality("Cat", 0.5 + i / 20, 0.6 + i / 20, 100, 100)
        dog = LabelQuality("Dog", 0.0, None, 0, 40)  # missed every time
        out.append(Measurement(i + 1, i + 10, i + 20, version, 1000.0 + 60 * i, (cat, dog)))
    return out


def test_figures_summarise_labels_versions_and_score_ranking() -> None:
    data = figures("3", list(reversed(_entries())))
    assert data["measurements"] == 6
    assert data["labels"]["Cat"]["n"] == 6 and data["labels"]["Cat"]["mean_iou"] == pytest.approx(0.625)
    assert data["labels"]["Dog"] == {
        "n": 6,
        "mean_iou": 0.0,
        "rolling_mean_iou": 0.0,
        "missed": 6,
        "invented": 0,
    }
    times = [p["t"] for p in data["iou_over_time"]["Cat"]]
    assert times == sorted(times)  # oldest first whatever the input order
    by_version = [(r["short"], r["label"], r["n"], r["source"]) for r in data["iou_by_version"]]
    assert by_version == [
        ("ex-012345", "Cat", 3, "examples"),
        ("ex-012345", "Dog", 3, "examples"),
        ("ex-987654+pr-abcdef", "Cat", 3, "tuned"),
        ("ex-987654+pr-abcdef", "Dog", 3, "tuned"),
    ]
    # Dog has no score (never predicted): only Cat's points, perfectly ranked.
    assert len(data["score_vs_iou"]["points"]) == 6
    assert data["score_vs_iou"]["spearman"] == pytest.approx(1.0)


def test_spearman_and_short_versions() -> None:
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties: average ranks
    assert short_version(V1) == "ex-012345"


def test_write_report_files(tmp_path: Path) -> None:
    write_report("3", _entries(), tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "figures.json",
        "index.html",
        "iou_by_version.png",
        "iou_over_time.png",
        "score_vs_iou.png",
    ]
    for png in names[2:]:
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "out" / "index.html").read_text()
    assert 'src="iou_over_time.png"' in page and "<td>Cat</td>" in page
    with pytest.raises(ValueError, match="project 3: no measurements"):
        write_report("3", [], tmp_path / "empty")


def test_cli_report_from_redis_and_its_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    prefix = new_prefix()
    monkeypatch.setenv("REDIS_URL", redis_url())
    monkeypatch.setenv("SEGGPT_KEY_PREFIX", prefix)
    try:
        store = QualityStore(RedisKV.from_url(redis_url(), prefix))
        for e in _entries():
            store.record("5", e)
        assert main(["report", "--project", "5", "--out", str(tmp_path / "r")]) == 0
        assert "Cat: n=6 mean IoU 0.625" in capsys.readouterr().out
        assert json.loads((tmp_path / "r" / "figures.json").read_text())["project"] == "5"
        assert main(["report", "--project", "6", "--out", str(tmp_path / "r6")]) == 2
        assert "project 6: no measurements yet" in capsys.readouterr().err
        assert main(["report", "--project", "abc", "--out", str(tmp_path / "x")]) == 2
        assert "--project" in capsys.readouterr().err
    finally:
        cleanup_redis(prefix)
    monkeypatch.delenv("REDIS_URL")
    assert main(["report", "--project", "5", "--out", str(tmp_path / "y")]) == 2
    assert "set REDIS_URL" in capsys.readouterr().err
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    assert main(["report", "--project", "5", "--out", str(tmp_path / "z")]) == 2
    assert "project 5: cannot read the quality measurements" in capsys.readouterr().err


def test_the_quality_route_serves_the_measurements_as_json() -> None:
    from fastapi.testclient import TestClient

    from seggpt_backend.service.server import create_app
    from seggpt_backend.settings import Settings

    settings = Settings.from_env({"SEGGPT_WEIGHTS": "random:tiny", "SEGGPT_DEVICE": "cpu"})
    with TestClient(create_app(settings)) as client:
        store = QualityStore(client.app.state.runtime.kv)  # type: ignore[attr-defined]
        for e in _entries():
            store.record("5", e)
        body = client.get("/quality/5.1795307990").json()
        assert body["project"] == "5"
        assert [Measurement.from_json(e) for e in body["entries"]] == _entries()
        assert client.get("/quality/7").json() == {"project": "7", "entries": []}
        assert client.get("/quality/abc").status_code == 422
        metrics = client.get("/metrics").text
        assert 'seggpt_suggestion_iou_rolling{label="Cat",project="5"}' in metrics
