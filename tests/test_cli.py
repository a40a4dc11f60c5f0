"""The imaging-timeline command: clear errors, no stack traces."""

from __future__ import annotations

import pytest

from app.cli import main


def test_a_typo_in_extra_archives_is_reported_and_exits_2(tmp_path, capsys):
    extra = tmp_path / "mine.toml"
    extra.write_text('[[archive]]\nid = "mine"\nname = "M"\nkind = "dicomweb"\nbase_url = "https://x.example"\n'
                     'identifier_system = "urn:oid:1.2"\ntimout_s = 5\nauth = { kind = "none" }\n')
    assert main(["demo", "--port", "0", "--extra-archives", str(extra)]) == 2
    err = capsys.readouterr().err
    assert 'archive "mine": unknown key "timout_s" (did you mean "timeout_s"?)' in err
    assert "Traceback" not in err


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--threads", "-2"), ("--workers", "two")])
def test_serve_refuses_a_worker_or_thread_count_below_one(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be a whole number of at least 1, not '{value}'" in capsys.readouterr().err


def test_the_sandbox_command_needs_its_port_and_the_app_url(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sandbox", "--port", "0"])
    assert exit_.value.code == 2
    assert "--app-url" in capsys.readouterr().err
