"""``prelabel`` / ``export-coco`` command line: bad input exits 2 naming it; the wait loop's
figures, failure reasons, timeout and Ctrl-C (against a runtime whose in-process worker stores
results the way the real one does)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from seggpt_backend.cli import main
from seggpt_backend.cli_prelabel import Tally, wait_for_run
from seggpt_backend.service.contract import Job, PredictJob, TaskResult, parse_targets
from seggpt_backend.service.http import prelabel
from seggpt_backend.service.http.protocol import Task
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.queue import InProcessJobQueue
from seggpt_backend.settings import Settings
from tests.service_support import LABEL_CONFIG

V = "seggpt-x.ex-0123456789"


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)


def test_bad_input_exits_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["prelabel", "--project", "abc"]) == 2
    assert "--project must be a Label Studio project id" in capsys.readouterr().err
    assert main(["prelabel", "--project", "3"]) == 2
    assert "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x" * 40)
    assert main(["prelabel", "--project", "3", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert main(["prelabel", "--project", "3"]) == 2  # nothing listens there
    assert "project 3: cannot read it from Label Studio" in capsys.readouterr().err


def test_export_coco_needs_exactly_one_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "c.json")
    assert main(["export-coco", "--out", out]) == 2
    assert "either a Label Studio JSON export file or --project" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["export-coco", str(bad), "--out", out]) == 2
    assert "not a readable Label Studio JSON export" in capsys.readouterr().err
    bad.write_text("{}")
    assert main(["export-coco", str(bad), "--out", out]) == 2
    assert "is a list of tasks" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert main(["export-coco", str(empty), "--out", out, "--eval"]) == 0
    assert "(no predictions to score)" in capsys.readouterr().out
    assert json.loads(Path(out).read_text())["images"] == []


class StandInWorker:
    """Runs predict jobs the way ``execute_predict`` ends: a result (or failure) per task, stored
    under the job's version, then a notification. Tasks in ``crash`` make the whole job raise
    (no result at all); ``hold`` blocks the worker until set."""

    def __init__(
        self, rt_box: list[Runtime], *, fail: set[int] = frozenset(), crash: set[int] = frozenset()
    ) -> None:  # type: ignore[assignment]
        self.rt_box = rt_box
        self.fail, self.crash = fail, crash
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, job: Job) -> None:
        assert isinstance(job, PredictJob)
        self.hold.wait()
        rt = self.rt_box[0]
        if self.crash & set(job.task_ids):
            raise RuntimeError("boom")
        for tid in job.task_ids:
            entry = (
                TaskResult.failure(f"task {tid}: image x.png: HTTP 404") if tid in self.fail else TaskResult()
            )
            rt.results.put(job.project, job.model_version, tid, entry)
            rt.progress.finish(job.project, tid, error=entry.error)
        rt.results.notify(job.channel, job.task_ids)


def _runtime(worker: StandInWorker) -> Runtime:
    rt = Runtime(Settings.from_env({}, chunk_size=2), MemoryKV(), InProcessJobQueue(worker))
    worker.rt_box.append(rt)
    return rt


def _queue(rt: Runtime, ids: list[int]) -> prelabel.Queued:
    tasks = [Task(id=t, data={"image": f"/{t}.png"}) for t in ids]
    return prelabel.queue_tasks(rt, "5", parse_targets(LABEL_CONFIG), tasks, V)


def test_wait_reports_done_and_each_failed_task_with_its_reason(capsys: pytest.CaptureFixture[str]) -> None:
    worker = StandInWorker([], fail={3}, crash={5})
    rt = _runtime(worker)
    try:
        out = io.StringIO()
        code = wait_for_run(rt, _queue(rt, [1, 2, 3, 4, 5]), timeout_s=30, out=out, poll_s=0.05)
        printed = capsys.readouterr().out
        assert code == 2, printed
        assert "project 5: 3 predicted and written back, 2 failed" in printed
        assert "  task 3: task 3: image x.png: HTTP 404" in printed
        assert "  task 5: task 5: its job seggpt-prelabel-" in printed and "without a result" in printed
        assert "5/5: 3 done, 2 failed" in out.getvalue()  # the progress line
        p = rt.progress.get("5")
        assert (p.done, p.failed, p.left) == (3, 2, 0) and set(p.failures) == {3, 5}
    finally:
        rt.close()


def test_wait_times_out_with_exit_1_and_ctrl_c_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    worker = StandInWorker([])
    worker.hold.clear()  # nothing finishes
    rt = _runtime(worker)
    try:
        late = io.StringIO()
        assert wait_for_run(rt, _queue(rt, [1, 2]), timeout_s=0.3, out=late, poll_s=0.05) == 1
        assert "not finished after 0.3 s: [1, 2]" in late.getvalue()

        def interrupt(*_: object) -> None:
            raise KeyboardInterrupt

        rt.results.wait = interrupt  # type: ignore[method-assign]  # Ctrl-C while waiting
        out = io.StringIO()
        assert wait_for_run(rt, _queue(rt, [1, 2]), timeout_s=30, out=out) == 130
        assert "interrupted; 0 done, 0 failed" in out.getvalue() and "Run the command again" in out.getvalue()
    finally:
        worker.hold.set()
        rt.close()


def test_tally_rate_and_eta() -> None:
    t = Tally(total=10, started=0.0)
    assert t.rate(5.0) == 0.0 and "ETA ?" in t.line(5.0)
    t.first_done = 2.0
    t.done = {1, 2, 3}
    t.failed = {4: "x"}
    assert t.rate(5.0) == pytest.approx(1.0)  # 3 tasks after the first, in 3 s
    assert "4/10: 3 done, 1 failed, 1.00 task/s, ETA 6 s" in t.line(5.0)
