"""``hitl-router bridge label-studio``: a config it cannot run stops the start (exit 2)
with the key and the problem, before any connection."""

from __future__ import annotations

import pytest

from hitl_router.cli import main


def _config(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text("queues: [{name: uncertain, when: {max_prob_below: 0.7}}]\n" + text)
    return str(path)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("", "label_studio: the bridge needs this section"),
        (
            "label_studio: {token_env: HITL_NO_SUCH_TOKEN}\n",
            "label_studio.token_env: environment variable HITL_NO_SUCH_TOKEN is not set",
        ),
        ("label_studio: {token_file: /nonexistent/t}\n", "label_studio.token_file: cannot read"),
        ("label_studio: {queues: [flagged]}\n", "label_studio.queues: no queue named 'flagged'"),
    ],
)
def test_a_config_the_bridge_cannot_run_exits_2_naming_the_key(
    tmp_path, capsys, section, message, monkeypatch
):
    monkeypatch.delenv("HITL_NO_SUCH_TOKEN", raising=False)
    code = main(["bridge", "label-studio", "-c", _config(tmp_path, section)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_token_never_reaches_the_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HITL_TEST_SECRET_TOKEN", "tok-do-not-print-1234")
    path = _config(tmp_path, "label_studio: {token_env: HITL_TEST_SECRET_TOKEN}\n")
    assert main(["check-config", path]) == 0
    out = capsys.readouterr()
    assert "tok-do-not-print-1234" not in out.out + out.err
    assert "HITL_TEST_SECRET_TOKEN" in out.out
