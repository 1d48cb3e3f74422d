"""The real Label Studio of the session (``label_studio`` fixture): health and tokens.

The first use on a machine installs Label Studio and migrates a fresh database (about
2.5 min together), hence the longer timeout: the fixture's setup counts against the first
test's.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from hitl_router.locallabelstudio import LabelStudioError, LabelStudioServer, health, whoami

pytestmark = [pytest.mark.labelstudio, pytest.mark.timeout(600)]


def test_health_answers_up(label_studio: LabelStudioServer) -> None:
    assert health(label_studio.url)
    with urllib.request.urlopen(f"{label_studio.url}/health", timeout=10) as resp:
        assert resp.status == 200
        assert json.loads(resp.read()) == {"status": "UP"}


def test_admin_token_authenticates(label_studio: LabelStudioServer) -> None:
    me = whoami(label_studio.url, label_studio.token)
    assert me["id"] == label_studio.admin_id
    assert isinstance(me["id"], int)


def test_annotator_token_is_a_different_user(label_studio: LabelStudioServer) -> None:
    if label_studio.annotator_token is None:
        pytest.skip("HITL_TEST_LABEL_STUDIO_URL: an external server has no annotator")
    me = whoami(label_studio.url, label_studio.annotator_token)
    assert me["id"] == label_studio.annotator_id
    assert me["id"] != label_studio.admin_id
    assert me["email"] == label_studio.annotator_email == "annotator@hitl-router.local"


def test_wrong_token_gets_401(label_studio: LabelStudioServer) -> None:
    with pytest.raises(LabelStudioError) as info:
        whoami(label_studio.url, "0" * 40)
    assert info.value.kind == "unauthorized"
    assert "HTTP 401" in str(info.value)
    request = urllib.request.Request(f"{label_studio.url}/api/projects")  # no token at all
    with pytest.raises(urllib.error.HTTPError) as http_info:
        urllib.request.urlopen(request, timeout=10)
    assert http_info.value.code == 401
