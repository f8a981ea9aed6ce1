"""Against the real Label Studio 1.23: connecting a model from the UI is enough (no
LABEL_STUDIO_URL/API key configured: the hostname and token of /setup serve), and Extra params
change k for that project only (its own model version; the other project keeps the default)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from seggpt_backend.service.contract import ProjectOptions
from seggpt_backend.settings import Settings
from tests.e2e_support import build_pictures, check_prediction, logs_on_failure, running_backend
from tests.labelstudio_server import LabelStudio, label_studio  # noqa: F401
from tests.service_support import LABEL_CONFIG, brush_result, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _version(backend_url: str, project: int) -> str:
    # GET /versions reads the version without a /setup (which would replace the Extra params).
    r = httpx.get(f"{backend_url}/versions", params={"project": project}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_setup_token_and_extra_params_per_project(label_studio: LabelStudio, tmp_path: Path) -> None:  # noqa: F811
    ls = label_studio
    pics = build_pictures(tmp_path)
    unset = {"LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": ""}  # empty = not set
    with running_backend("redis", ls, tmp_path, env_extra=unset) as backend, logs_on_failure(backend, ls):
        names = ["ex_png", "ex_jpg", "q_png", "q_jpg"]
        ids: dict[int, dict[str, int]] = {}
        for extra in ({"k": 1}, None):
            project = ls.create_project(LABEL_CONFIG)
            ids[project] = dict(
                zip(names, ls.import_images(project, [pics[n].path for n in names]), strict=True)
            )
            for name in ("ex_png", "ex_jpg"):
                ls.annotate(ids[project][name], brush_result({"Cat": pics[name].masks["Cat"]}))
            kwargs = {} if extra is None else {"extra_params": extra}
            ls.connect_ml_backend(project, backend.url, is_interactive=True, **kwargs)
        with_k1, plain = list(ids)
        # The examples made before the backend existed are read through the /setup connection.
        for project in ids:
            wait_for(lambda p=project: ".ex-none" not in _version(backend.url, p), timeout=90)
        tag = ProjectOptions.from_extra_params(
            {"k": 1}, defaults=ProjectOptions.defaults(Settings.from_env({}))
        ).version_tag()
        v1, v2 = _version(backend.url, with_k1), _version(backend.url, plain)
        assert v1.endswith(f".p-{tag}") and ".p-" not in v2
        for project, version in ((with_k1, v1), (plain, v2)):
            queries = [ids[project]["q_png"], ids[project]["q_jpg"]]
            ls.retrieve_predictions(project, queries)
            wait_for(lambda q=queries: all(ls.predictions(t) for t in q), timeout=120)
            for name in ("q_png", "q_jpg"):
                preds = ls.predictions(ids[project][name])
                assert len(preds) == 1, [p["model_version"] for p in preds]
                check_prediction(preds[0], pics[name], version)

        # A bad Extra param is refused when the connection is saved: Label Studio 1.23 shows only
        # "422 ... /setup" (it drops the body); the body names the key (test_setup_connection.py).
        project = ls.create_project(LABEL_CONFIG)
        body = {"url": backend.url, "project": project, "title": "bad", "extra_params": {"k": 0}}
        r = ls.api.post("/api/ml", json=body)
        assert r.status_code == 400 and "422" in r.text and "/setup" in r.text, (r.status_code, r.text[:500])
        direct = httpx.post(
            f"{backend.url}/setup",
            json={"project": f"{project}.1", "schema": LABEL_CONFIG, "extra_params": {"k": 0}},
            timeout=30,
        )
        assert direct.status_code == 422 and "k=0" in direct.json()["detail"]
    assert "LABEL_STUDIO_API_KEY" not in backend.env or backend.env["LABEL_STUDIO_API_KEY"] == ""
    token = ls.token
    for _, log in backend.procs.values():
        assert token not in log.read_text(errors="replace")  # the /setup token is never logged
