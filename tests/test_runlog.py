"""Run log: append-only JSON lines that survive interruption and never mix settings."""
import json
import math

import pytest

from comfyui_qsched.calibration.runlog import RunLog, RunLogError, schedule_key, settings_hash
from comfyui_qsched.calibration.search import run_search
from comfyui_qsched.samplers import QSchedSchedule

SCHEDULE = QSchedSchedule.linear(4, 0.9, 1.1)
KEY = schedule_key(SCHEDULE.c_x, SCHEDULE.c_eps)


def test_records_round_trip_with_nan_as_worst(tmp_path):
    path = tmp_path / "log.jsonl"
    with RunLog(path, {"a": 1}) as log:
        log.record(KEY, SCHEDULE.to_dict(), [0, 1], [0.5, float("nan")])
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["settings_hash"] == settings_hash({"a": 1})
    assert json.loads(lines[1])["scores"] == [0.5, None]          # strict JSON, no NaN token
    reopened = RunLog(path, {"a": 1})
    assert reopened.done[KEY][0] == 0.5 and math.isnan(reopened.done[KEY][1])
    reopened.close()


def test_partial_last_line_from_an_interrupted_write_is_dropped_and_cut(tmp_path):
    path = tmp_path / "log.jsonl"
    with RunLog(path, {}) as log:
        log.record(KEY, SCHEDULE.to_dict(), [0], [0.5])
    with open(path, "a") as handle:
        handle.write('{"kind": "eval", "key": "x", "prom')
    with RunLog(path, {}) as log:
        assert list(log.done) == [KEY]
        log.record(KEY, SCHEDULE.to_dict(), [1], [0.7])
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["header", "eval", "eval"]


def test_corrupt_middle_line_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "log.jsonl"
    with RunLog(path, {}) as log:
        log.record(KEY, SCHEDULE.to_dict(), [0], [0.5])
    path.write_text(path.read_text() + "garbage\n")
    with pytest.raises(RunLogError, match="log.jsonl line 3 is corrupt"):
        RunLog(path, {})


def test_other_settings_or_unreadable_header_start_a_fresh_log(tmp_path):
    path = tmp_path / "log.jsonl"
    with RunLog(path, {"seed": 1}) as log:
        log.record(KEY, SCHEDULE.to_dict(), [0], [0.5])
    with RunLog(path, {"seed": 2}) as log:
        assert log.done == {}
    assert (tmp_path / f"log.jsonl.{settings_hash({'seed': 1})}.old").exists()
    path.write_text("not json\n")
    with RunLog(path, {"seed": 2}) as log:
        assert log.done == {}
    assert (tmp_path / "log.jsonl.unreadable.old").exists()


def test_crash_inside_evaluate_leaves_a_log_that_resumes(tmp_path):
    path = tmp_path / "log.jsonl"
    count = []

    def crashing(schedule, prompts):
        count.append(1)
        if len(count) == 4:
            raise KeyboardInterrupt
        return [schedule.c_x[0] for _ in prompts]

    with pytest.raises(KeyboardInterrupt):
        run_search(crashing, 4, 3, "paper_grid", grid_points=3, run_log=path)
    assert len(path.read_text().splitlines()) == 1 + 3
    result = run_search(lambda s, p: [s.c_x[0] for _ in p], 4, 3, "paper_grid", grid_points=3, run_log=path)
    assert result.images_reused == 9 and result.images_generated == 18
    assert result.best.c_x[0] == pytest.approx(1.2)


def test_offsets_are_part_of_a_candidates_key_and_zero_offsets_keep_the_old_key():
    plain = json.dumps([[0.9, 1.0], [1.1, 1.0]], separators=(",", ":"))   # the key format of logs before offsets
    assert schedule_key((0.9, 1.0), (1.1, 1.0)) == plain
    assert schedule_key((0.9, 1.0), (1.1, 1.0), ((0.0,), (0.0,))) == plain
    keys = {schedule_key((0.9, 1.0), (1.1, 1.0), offset) for offset in
            (None, ((0.1,), (0.0,)), ((0.0,), (0.1,)), ((0.1, 0.0), (0.0, 0.0)))}
    assert len(keys) == 4
