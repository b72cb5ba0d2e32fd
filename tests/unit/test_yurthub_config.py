"""yurthub's flags become one validated settings object, and bad values get a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from yurthub import cli, config


def test_flags_become_settings_with_openyurt_defaults() -> None:
    args = cli.parse_args(["--server-addr", "https://10.0.0.1:6443, https://10.0.0.2:6443", "--node-name", "edge-1"])
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
    assert cli.main(["--server-addr", "https://a:1", "--node-name", "n", "--proxy-port", "70000"]) == 2
    assert "--proxy-port: 70000 is not a TCP port" in capsys.readouterr().err


def test_the_proxy_port_only_binds_to_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--server-addr", "https://a:1", "--node-name", "n", "--bind-address", "0.0.0.0"]) == 2
    assert "only binds to a loopback address" in capsys.readouterr().err


def test_a_config_file_supplies_settings_and_flags_override_it(tmp_path: Path) -> None:
    conf = tmp_path / "yurthub.yaml"
    conf.write_text("server-addr: https://10.0.0.9:6443\nnode-name: from-file\nproxy-port: 10300\n")
    settings = cli.settings_from_args(cli.parse_args(["--config", str(conf), "--node-name", "from-flag"]))
    assert settings.cloud.servers == ("https://10.0.0.9:6443",)
    assert settings.node_name == "from-flag"
    assert settings.listen.proxy_port == 10300


def test_a_config_file_with_an_unknown_setting_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "yurthub.yaml"
    conf.write_text("node-nmae: typo\n")
    assert cli.main(["--config", str(conf)]) == 2
    assert "unknown settings ['node_nmae']" in capsys.readouterr().err


def test_filter_and_door_flags_become_settings() -> None:
    base = ["--server-addr", "https://10.0.0.1:6443", "--node-name", "edge-1"]
    settings = cli.settings_from_args(cli.parse_args(base))
    assert not settings.door.enabled, "the door stays shut without a serving certificate"
    assert dict(settings.filters.rules)["masterservice"] == ("kubelet/services", "kube-proxy/endpointslices")
    settings = cli.settings_from_args(
        cli.parse_args(
            [
                *base,
                "--secure-cert-file=/pki/door.pem",
                "--no-enable-dummy-if",
                "--dummy-if-ip=127.0.0.1",
                "--filter=discardcloudservice=kube-proxy,coredns",
                "--disabled-resource-filters=servicetopology",
            ]
        )
    )
    assert settings.door.enabled and not settings.door.manage_interface and settings.door.address == "127.0.0.1"
    rules = dict(settings.filters.rules)
    assert rules["discardcloudservice"] == ("kube-proxy/services", "coredns/services")
    assert "servicetopology" not in rules
    with pytest.raises(config.ConfigError, match="not an IP address"):
        cli.settings_from_args(cli.parse_args([*base, "--dummy-if-ip=door"]))
