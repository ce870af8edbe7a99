"""The one reader of a run's record resolves a run's settings as they were when it ran: runs written
before ``effective_settings`` existed get the values of defaults that have changed since
(``LEGACY_DEFAULTS``: SCA's global ranking), so reports and the benchmark harness do not relabel them."""
import json

from sca_plugin.config import TrainConfig
from sca_plugin.records import read_run_metrics


def _write(path, **record):
    path.write_text(json.dumps(record))
    return path


def test_an_older_sca_record_ranks_globally_as_it_did(tmp_path):
    old = read_run_metrics(_write(tmp_path / "old.json", method="sca",
                                  config={"method": "sca", "global_pruning": None, "pruning_ratio": 0.8}))
    assert old["config"]["global_pruning"] is True
    assert TrainConfig.from_dict(old["config"]).effective_global_pruning is True
    # set explicitly, or another method whose default did not change: left as written
    explicit = read_run_metrics(_write(tmp_path / "explicit.json", config={"method": "sca", "global_pruning": False}))
    assert explicit["config"]["global_pruning"] is False
    l1 = read_run_metrics(_write(tmp_path / "l1.json", config={"method": "l1", "global_pruning": None}))
    assert l1["config"]["global_pruning"] is None


def test_a_current_record_is_read_with_todays_defaults(tmp_path):
    new = read_run_metrics(_write(tmp_path / "new.json", config={"method": "sca", "global_pruning": None},
                                  effective_settings={"global_pruning": False}))
    assert new["config"]["global_pruning"] is None
    assert TrainConfig.from_dict(new["config"]).effective_global_pruning is False
