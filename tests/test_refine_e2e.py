"""Smart tools end to end: the real app, a real RQ worker process and Redis, Label Studio's payload shape.

The batch prediction fills the task cache in Redis; the interactive request (the captured
``predict_interactive`` body, with a rectangle and keypoints as the 1.23 editor sends them) is
answered by the worker from it; bad contexts get a 422 naming the problem and leave the task's
batch prediction as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seggpt_backend.labelstudio import rle
from tests.service_support import captured, wait_for, worker_process
from tests.test_worker import Deployment


def _context(items: list[dict]) -> dict:
    return {"result": items}


def _item(kind: str, value: dict, **extra) -> dict:
    # Every field the 1.23 editor sends with a smart region (LABEL_STUDIO.md, "Interactive").
    return {
        "id": f"{kind[:3]}{len(json.dumps(value))}",
        "from_name": "kp" if kind == "keypointlabels" else "box",
        "to_name": "image",
        "type": kind,
        "origin": "manual",
        "original_width": 80,
        "original_height": 64,
        "image_rotation": 0,
        "value": value,
        **extra,
    }


@pytest.mark.slow
def test_smart_tools_through_the_server_and_a_worker(tmp_path: Path) -> None:
    dep = Deployment(tmp_path)
    try:
        with worker_process(dep.env, log_path=dep.log), dep.client() as c:
            wait_for(lambda: c.get("/health").json().get("workers") == 1, timeout=90)
            assert c.post("/webhook", json=dep.example).json()["stored"] is True
            body = captured("predict_interactive")
            body["project"] = "7.1795307990"
            task = {**body["tasks"][0], "id": 1, "project": 7, "data": {"image": "/data/upload/7/q0.png"}}
            batch = {**json.loads(json.dumps(body)), "tasks": [task]}
            batch["params"]["context"] = None
            first = c.post("/predict", json=batch).json()["results"][0]
            assert isinstance(first, dict)
            keys = dep.redis.keys(f"{dep.prefix}:tc:*")
            assert any(b":img:" in k for k in keys) and any(k.endswith(b":soft") for k in keys)

            inter = json.loads(json.dumps(body))
            inter["tasks"] = [task]
            box = _item(
                "rectanglelabels",
                {"x": 10, "y": 10, "width": 40, "height": 50, "rotation": 0, "rectanglelabels": ["Cat"]},
            )
            click = _item(
                "keypointlabels",
                {"x": 30, "y": 30, "width": 0.5, "keypointlabels": ["Cat"]},
                is_positive=True,
            )
            neg = _item(
                "keypointlabels",
                {"x": 45, "y": 55, "width": 0.5, "keypointlabels": ["Cat"]},
                is_positive=False,
            )
            inter["params"]["context"] = _context([box, click, neg])
            answers = [c.post("/predict", json=inter) for _ in range(2)]
            assert all(a.status_code == 200 for a in answers)
            out = answers[0].json()
            assert len(out["results"]) == 1 and isinstance(out["results"][0]["result"], list)
            assert answers[1].json()["results"][0]["result"] == out["results"][0]["result"]  # deterministic
            for region in out["results"][0]["result"]:
                assert region["from_name"] == "tag" and region["value"]["brushlabels"] == ["Cat"]
                mask = rle.decode(region["value"]["rle"], 64, 80) > 0
                assert not mask[:, 40:].any() and not mask[39:, :].any()  # inside the box only
                assert not np.array_equal(mask[6:38, 8:40], np.ones((32, 32), bool))  # never the filled box
            if not out["results"][0]["result"]:
                assert any("nothing found" in m for m in out["messages"])

            for bad, message in [
                (_item("keypointlabels", {"x": 130, "y": 5, "keypointlabels": ["Cat"]}), "outside the image"),
                (
                    _item(
                        "rectanglelabels",
                        {"x": 5, "y": 5, "width": 0, "height": 9, "rectanglelabels": ["Cat"]},
                    ),
                    "no area",
                ),
                (_item("keypointlabels", {"x": 5, "y": 5, "keypointlabels": ["Bird"]}), "'Bird'"),
                (
                    {
                        **_item("keypointlabels", {"x": 5, "y": 5, "keypointlabels": ["Cat"]}),
                        "to_name": "image2",
                    },
                    "image2",
                ),
            ]:
                inter["params"]["context"] = _context([bad])
                r = c.post("/predict", json=inter)
                assert r.status_code == 422 and message in r.json()["detail"], r.text
            # The task's batch prediction is untouched: asked again, it is the same one.
            again = c.post("/predict", json=batch).json()["results"][0]
            assert again == [] or again["result"] == first["result"]
    finally:
        dep.close()
