"""Third-party warnings go to the run directory's log file, not between the progress bars."""

import os
import subprocess
import sys
import warnings

from policy_split_megatron import console


def test_warnings_go_to_the_log_file_in_this_process_and_in_spawned_ones(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.delenv(console.WARNINGS_LOG_ENV, raising=False)
    log = tmp_path / "run" / "warnings.log"
    console.log_warnings_to(log)
    monkeypatch.setenv(console.WARNINGS_LOG_ENV, str(log))  # undone after the test
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("checkpoint.load_state_dict is deprecated", FutureWarning)
    child = ("from policy_split_megatron.console import quiet_third_party; import warnings; quiet_third_party(); "
             "warnings.warn('from a rank', UserWarning)")
    subprocess.run([sys.executable, "-c", child], check=True, env=dict(os.environ))
    captured = capfd.readouterr()
    assert "load_state_dict" not in captured.err and "from a rank" not in captured.err
    text = log.read_text()
    assert "FutureWarning: checkpoint.load_state_dict is deprecated" in text and "UserWarning: from a rank" in text
    assert text.count("[pid ") == 2
