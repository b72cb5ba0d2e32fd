"""yurthub's flags become one validated settings object, and bad values get a clear error."""

from __future__ import annotations

import pytest

from yurthub import cli, config


def test_flags_become_settings_with_openyurt_defaults() -> None:
    args = cli.build_parser().parse_args(
        ["--server-addr", "https://10.0.0.1:6443, https://10.0.0.2:6443", "--node-name", "edge-1"]
    )
    settings = cli.settings_from_args(args)
    assert settings.cloud.servers == ("https://10.0.0.1:6443", "https://10.0.0.2:6443")
    assert settings.listen.proxy_port == 10261
    assert settings.listen.serve_port == 10267
    assert "kubelet" in settings.cache.cache_agents


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("", "at least one"),
        ("http://10.0.0.1:6443", "not an https"),
        ("https://h:1/api", "must not carry a path"),
    ],
)
def test_bad_server_addresses_are_refused_with_the_reason(value: str, complaint: str) -> None:
    with pytest.raises(config.ConfigError, match=complaint):
        config.parse_servers(value)


def test_out_of_range_port_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--server-addr", "https://a:1", "--node-name", "n", "--proxy-port", "70000"])
    assert "--proxy-port: 70000 is not a TCP port" in capsys.readouterr().err
