"""yurthub's flags become one validated settings object, and bad values get a clear error."""

from __future__ import annotations

import os
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


TOKEN = "abcdef.0123456789abcdef"  # noqa: S105 - a made-up token in the documented shape
BASE = ["--server-addr", "https://10.0.0.1:6443", "--node-name", "edge-1"]


def token_file(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "join-token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_join_token_file_makes_yurthub_ask_by_csr_and_keeps_the_token_out_of_the_settings(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN + "\n")
    ids = cli.settings_from_args(cli.parse_args([*BASE, "--join-token-file", str(path)])).identity
    assert ids.client_source is config.ClientSource.CSR
    assert ids.bootstrap_token_file == str(path)
    assert ids.bootstrap_token == ""  # read when needed, so a replaced token is picked up
    assert config.read_token_file(str(path))[0] == TOKEN


@pytest.mark.parametrize(
    ("text", "mode", "complaint"),
    [
        (None, 0o600, "no such file"),
        ("", 0o600, "empty; expected a bootstrap token"),
        (" \n", 0o600, "empty; expected a bootstrap token"),
        ("abcdef:0123456789abcdef\n", 0o600, "expected a bootstrap token <6 characters>.<16 characters>"),
        (f"{TOKEN}\n{TOKEN}\n", 0o600, "expected a bootstrap token"),
        (TOKEN, 0o644, "mode 0644 lets other users read or change the token; make it owner-only (chmod 600"),
        (TOKEN, 0o620, "mode 0620"),
        ("x" * 5000, 0o600, "longer than 4096 bytes"),
    ],
)
def test_a_bad_join_token_file_is_refused_with_a_clear_reason_that_never_quotes_it(
    tmp_path: Path, text: str | None, mode: int, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "join-token" if text is None else token_file(tmp_path, text, mode)
    assert cli.main([*BASE, "--join-token-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"--join-token-file {path}: " in err and complaint in err
    assert "abcdef" not in err.replace(f"{path}", "")


def test_the_token_is_given_one_way_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = token_file(tmp_path, TOKEN)
    assert cli.main([*BASE, "--join-token", TOKEN, "--join-token-file", str(path)]) == 2
    assert "give the token one way only" in capsys.readouterr().err


def test_a_token_on_the_command_line_is_recognised_for_the_warning() -> None:
    assert cli.token_on_command_line([*BASE, f"--join-token={TOKEN}"])
    assert cli.token_on_command_line([*BASE, "--join-token", TOKEN])
    assert not cli.token_on_command_line([*BASE, "--join-token-file=/etc/yurthub/join-token"])


def test_inflight_limits_come_from_flags_and_must_be_positive() -> None:
    flags = ["--max-inflight-pod=3", "--max-inflight-other=1", "--max-inflight-per-pod=2"]
    limits = cli.settings_from_args(cli.parse_args([*BASE, *flags])).limits
    assert (limits.max_inflight_pod, limits.max_inflight_other, limits.max_inflight_per_pod) == (3, 1, 2)
    with pytest.raises(config.ConfigError, match="--max-inflight-other"):
        cli.settings_from_args(cli.parse_args([*BASE, "--max-inflight-other=0"]))
    with pytest.raises(config.ConfigError, match="--max-inflight-per-pod"):
        cli.settings_from_args(cli.parse_args([*BASE, "--max-inflight-per-pod=0"]))


def test_node_uids_default_to_root_and_yurthubs_own_and_come_from_a_flag() -> None:
    default = cli.settings_from_args(cli.parse_args(BASE)).limits
    assert default.node_uids == frozenset({0, os.geteuid()})
    limits = cli.settings_from_args(cli.parse_args([*BASE, "--node-uids= 0, 998 ,0"])).limits
    assert limits.node_uids == frozenset({0, 998})


@pytest.mark.parametrize("value", ["root", "-1", "1.5", "4294967295", "0,kubelet", "\u00b2", "\u0661"])
def test_node_uids_that_are_not_numeric_user_ids_are_refused(value: str) -> None:
    with pytest.raises(config.ConfigError, match=r"--node-uids: .* is not a numeric user id"):
        cli.settings_from_args(cli.parse_args([*BASE, f"--node-uids={value}"]))
