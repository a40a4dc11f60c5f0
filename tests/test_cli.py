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
