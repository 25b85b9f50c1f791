"""The run's CSV log: two runs started in the same second keep a file each."""

from __future__ import annotations

import csv

from training.compare import find_logs
from training.runlog import CsvLog, claim_log


def test_runs_started_in_the_same_second_get_a_log_each(tmp_path):
    first = claim_log(tmp_path, "bdh", "20261207-210956")
    second = claim_log(tmp_path, "bdh", "20261207-210956")
    assert first.name == "bdh-20261207-210956.csv" and second.name == "bdh-20261207-210956_002.csv"
    for path, loss in ((first, 2.5), (second, 2.7)):
        log = CsvLog(path, keep_through=0)
        log.row(step=10, tokens=20480, train_loss=loss)
        log.close()
    rows = [list(csv.DictReader(p.open())) for p in (first, second)]
    assert [[r["train_loss"] for r in rs] for rs in rows] == [["2.5"], ["2.7"]]  # one header, its own rows
    assert find_logs([str(tmp_path)])["bdh"] == second  # the later claim counts as the newer log
