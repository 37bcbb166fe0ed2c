"""The graph commands and GET /v1/indicators on a site that ingested the bundled sample dump."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ingest_helpers import SAMPLE, ingested_site, last_json, run
from yarl import URL

from heimdall_core import config
from heimdall_core.api.app import create_app
from heimdall_core.cli.main import main


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return ingested_site(tmp_path, monkeypatch)




def test_project_query_replay_state_hash(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "project", "--json")
    report = last_json(out)
    assert code == 0 and report["records"] > 50 and report["stopped"] == {}
    code, out, _ = run(capsys, "query", "192.0.2.83")
    assert code == 0 and "sample-dump.csv" in out and "[protected]" in out and "login.example.com" in out
    code, out, _ = run(capsys, "query", "Alice.0@EXAMPLE.COM", "--json")
    answer = last_json(out)
    assert answer["query"] == {"kind": "email", "value": "alice.0@example.com"}
    assert answer["matches"][0]["form"] == "blind_index"
    code, out, _ = run(capsys, "query", "Alice.0@EXAMPLE.COM", "--reveal")
    assert code == 0 and "alice0" in out
    code, live_hash, _ = run(capsys, "state-hash")
    assert code == 0 and len(live_hash.strip()) == 64
    code, out, _ = run(capsys, "replay", "--json")
    assert code == 0 and last_json(out)["events"] == report["events"]
    assert run(capsys, "state-hash")[1] == live_hash
    code, out, _ = run(capsys, "state-hash", "--json")
    assert last_json(out)["state_hash"] == live_hash.strip() and last_json(out)["backend"] == "sqlite"


def test_query_says_when_the_graph_is_behind_the_log(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Ingested, not projected: "not seen" alone would be a wrong answer.
    code, _, err = run(capsys, "query", "192.0.2.83")
    assert code == 4 and "not seen" in err and "behind" in err and "heimdall project" in err
    assert run(capsys, "project")[0] == 0
    code, out, err = run(capsys, "query", "192.0.2.83")
    assert code == 0 and "sample-dump.csv" in out and "behind" not in err
    assert main(["ingest", "--source", "second", str(SAMPLE), "--no-progress"]) == 0
    code, out, err = run(capsys, "query", "192.0.2.83", "--json")
    assert code == 0 and last_json(out)["matches"][0]["dumps"][0]["name"] == "sample-dump.csv"
    assert "may be incomplete" in err and "behind" in err


def test_query_errors_exit_nonzero_with_a_message(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "project")[0] == 0
    code, out, err = run(capsys, "query", "203.0.113.99")
    assert code == 4 and "not seen" in err and out == ""
    # Usage mistakes are 2, as every command's; "not seen" is 4, apart from them and from 1.
    for args in (["plain words"], ["example.com", "--kind", "DOMAIN"], ["300.1.2.3", "--kind", "ip"],
                 ["192.0.2.83", "--limit", "0"]):
        code, out, err = run(capsys, "query", *args)
        assert code == 2 and err.startswith("heimdall: ") and out == "", args
    assert "--kind" in run(capsys, "query", "plain words")[2]
    assert "unknown kind 'DOMAIN'" in run(capsys, "query", "example.com", "--kind", "DOMAIN")[2]
    with pytest.raises(SystemExit):
        main(["query", "x", "--backend", "nosuch"])


def test_query_json_not_seen_prints_the_http_404_body(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "project")[0] == 0
    code, out, err = run(capsys, "query", "203.0.113.99", "--json")
    assert code == 4 and "not seen" in err
    assert last_json(out) == {"error": "ip value not seen in any dump or enrichment", "status": 404,
                              "query": {"kind": "ip", "value": "203.0.113.99"}}
    code, out, _ = run(capsys, "query", "nobody@example.com", "--json")
    assert code == 4 and last_json(out)["query"] == {"kind": "email"} and "nobody" not in out


@pytest.mark.parametrize("args", [["\udcff@x.com"], ["\udcff@x.com", "--kind", "username"],
                                  ["ab\udcff", "--kind", "other"]])
def test_query_refuses_a_value_not_utf8(site: Path, capsys: pytest.CaptureFixture[str],
                                        args: list[str]) -> None:
    # What Python makes of the byte 0xff in an argument (PEP 383): no traceback, exit 2.
    code, out, err = run(capsys, "query", *args)
    assert (code, out) == (2, "") and err == "heimdall: the value is not valid UTF-8\n"


def test_query_says_when_the_policy_makes_a_value_unsearchable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ingested_site(tmp_path, monkeypatch, HMD_PII__POLICY__EMAIL="encrypt")
    assert run(capsys, "project")[0] == 0
    code, out, err = run(capsys, "query", "alice.0@example.com")
    assert code == 2 and out == "" and "not seen" not in err
    assert "not searchable on this site: pii.policy.email is 'encrypt' (no blind index)" in err
    code, out, _ = run(capsys, "query", "alice.0@example.com", "--json")
    body = last_json(out)
    assert code == 2 and body["status"] == 422 and body["query"] == {"kind": "email"} and "alice" not in out
    code, _, err = run(capsys, "query", "Winter2020!", "--kind", "password")
    assert code == 2 and "pii.policy.password is 'drop' (not stored)" in err


async def test_http_answer_equals_cli_json(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The CLI runs its own event loop: give it a thread of its own.
    assert await asyncio.to_thread(main, ["project"]) == 0
    assert await asyncio.to_thread(main, ["query", "192.0.2.83", "--json"]) == 0
    cli_answer = last_json(capsys.readouterr().out)
    settings = config.load(None, {"HMD_DATA_DIR": str(site), "HMD_LOG__FSYNC": "false"})
    async with TestClient(TestServer(create_app(settings))) as client:
        response = await client.get("/v1/indicators/ip/192.0.2.83")
        assert response.status == 200 and await response.json() == cli_answer
        email = await client.get("/v1/indicators/email/alice.0%40example.com")
        body = await email.json()
        assert email.status == 200 and body["matches"][0]["form"] == "blind_index"
        assert all(v["value"] is None for v in body["matches"][0]["co_occurring"]["values"] if v["protected"])
        for path, status in [("/v1/indicators/colour/x", 400), ("/v1/indicators/ip/999.1.1.1", 400),
                             ("/v1/indicators/domain/", 400), ("/v1/indicators/domain", 400),
                             ("/v1/indicators/", 400), ("/v1/indicators/domain/..", 400),
                             ("/v1/indicators/ip/203.0.113.99", 404), ("/v1/indicators/cidr/10.0.0.0/8", 404),
                             ("/v1/indicators/url/http://example.com/a/b", 404),
                             ("/v1/indicators/ip/192.0.2.83?limit=zero", 400)]:
            response = await client.get(path)
            assert response.status == status, path
            error = await response.json()
            assert error["status"] == status and error["error"]


URLS = ["http://login.example.com/a/b?x=1&y=2", "http://evil.test/path%2Fenc", "http://evil.test/a+b/%C3%A9"]


def http_settings(site: Path) -> config.Settings:
    return config.load(None, {"HMD_DATA_DIR": str(site), "HMD_LOG__FSYNC": "false"})


async def test_http_value_is_one_percent_encoded_segment(site: Path, tmp_path: Path) -> None:
    urls = tmp_path / "urls.csv"
    urls.write_text("url\n" + "\n".join(URLS) + "\n")
    assert await asyncio.to_thread(main, ["ingest", "--source", "urls", str(urls), "--map", "url=url",
                                          "--delimiter", ",", "--no-progress"]) == 0
    assert await asyncio.to_thread(main, ["project"]) == 0
    async with TestClient(TestServer(create_app(http_settings(site)))) as client:
        for url in URLS:
            # Decoded exactly once: '%2F' inside the value is sent as '%252F', '?' as '%3F'.
            response = await client.get(f"/v1/indicators/url/{quote(url, safe='')}")
            assert response.status == 200, url
            assert (await response.json())["query"] == {"kind": "url", "value": url}
            by_parameter = await client.get("/v1/indicators/url", params={"value": url})
            assert by_parameter.status == 200 and await by_parameter.json() == await response.json()
        # Sent bare, '?' starts the query string: refused, not answered for a shorter URL.
        bare = await client.get("/v1/indicators/url/http://login.example.com/a/b?x=1&y=2")
        body = await bare.json()
        assert bare.status == 400 and "%3F" in body["error"] and body["query"] == {"kind": "url"}
        once = await client.get("/v1/indicators/url/http://evil.test/path%2Fenc")  # is .../path/enc
        assert once.status == 404
        assert (await once.json())["query"] == {"kind": "url", "value": "http://evil.test/path/enc"}
        both = await client.get(f"/v1/indicators/url/{quote(URLS[1], safe='')}", params={"value": URLS[1]})
        assert both.status == 400 and "once" in (await both.json())["error"]


async def test_http_errors_are_json_and_never_echo_personal_values(site: Path) -> None:
    assert await asyncio.to_thread(main, ["project"]) == 0
    async with TestClient(TestServer(create_app(http_settings(site)))) as client:
        base = str(client.make_url("/")).rstrip("/")
        for path, message in [("/v1/indicators/domain/", "empty"), ("/v1/indicators/domain", "empty"),
                              ("/v1/indicators/domain?value=", "empty"), ("/v1/indicators", "kind"),
                              ("/v1/indicators/email/%FF%40x.com", "UTF-8"),
                              ("/v1/indicators/email?value=%FF%40x.com", "UTF-8"),
                              ("/v1/indicators/ip/192.0.2.83?limit=1&limit=2", "more than once")]:
            response = await client.session.get(URL(base + path, encoded=True))
            body = await response.json()
            assert response.status == 400 and message in body["error"], path
        # Dot segments sent as they are reach the handler as the value.
        dots = await client.session.get(URL(base + "/v1/indicators/domain/..", encoded=True))
        assert dots.status == 400 and (await dots.json())["query"] == {"kind": "domain", "value": ".."}
        invalid = await client.get("/v1/indicators/ip/999.1.1.1")
        assert (await invalid.json())["query"] == {"kind": "ip", "value": "999.1.1.1"}
        limit = await client.get("/v1/indicators/ip/192.0.2.83?limit=zero")
        assert (await limit.json())["query"] == {"kind": "ip", "value": "192.0.2.83"}
        unseen = await client.get("/v1/indicators/ip/203.0.113.99")
        assert (unseen.status, await unseen.json()) == (404, {
            "error": "ip value not seen in any dump or enrichment", "status": 404,
            "query": {"kind": "ip", "value": "203.0.113.99"}})
        for path in ("/v1/indicators/email/nobody%40example.com", "/v1/indicators/email/not-an-email",
                     "/v1/indicators/username/nobody-at-all", "/v1/indicators/phone/12"):
            response = await client.get(path)
            text = await response.text()
            assert response.status in (400, 404) and "nobody" not in text and "not-an-email" not in text
            assert (await response.json())["query"] == {"kind": path.split("/")[3]}, path


async def test_http_unsearchable_kind_is_422(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = ingested_site(tmp_path, monkeypatch, HMD_PII__POLICY__EMAIL="encrypt")
    assert await asyncio.to_thread(main, ["project"]) == 0
    settings = config.load(None, {"HMD_DATA_DIR": str(site), "HMD_LOG__FSYNC": "false",
                                  "HMD_PII__POLICY__EMAIL": "encrypt"})
    async with TestClient(TestServer(create_app(settings))) as client:
        response = await client.get("/v1/indicators/email/alice.0%40example.com")
        assert response.status == 422
        assert await response.json() == {
            "error": "email values are not searchable on this site: pii.policy.email is 'encrypt' "
                     "(no blind index)", "status": 422, "query": {"kind": "email"}, "policy": "encrypt"}
        password = await client.get("/v1/indicators/password/Winter2020%21")
        assert password.status == 422 and "Winter" not in await password.text()
