"""What `yurtctl convert --tunnel` gives helm and the node Jobs, and what its dry run prints."""

from __future__ import annotations

import pytest

from converter import cli, components, errors, helm, nodestep, plan, runner

from .test_converter_plan import NODES

TUNNEL = plan.Options(cloud_nodes=("cloud-1",), tunnel_servers=("203.0.113.5:31062",), tunnel_replicas=0)


@pytest.mark.parametrize(
    ("image", "split"),
    [
        ("yurt-edge/converter:0.1.0", ("yurt-edge/converter", "0.1.0")),
        ("registry.example:5000/team/yurt-edge:v1", ("registry.example:5000/team/yurt-edge", "v1")),
    ],
)
def test_an_image_splits_into_the_charts_repository_and_tag(image: str, split: tuple[str, str]) -> None:
    assert helm.split_image(image) == split


@pytest.mark.parametrize("image", ["registry.example:5000/yurt-edge", "yurt-edge@sha256:" + "0" * 64, "yurt-edge"])
def test_an_image_without_a_tag_is_refused_with_the_reason(image: str) -> None:
    with pytest.raises(errors.ConverterError, match="tag"):
        helm.split_image(image)


def test_converts_values_pin_the_server_to_cloud_nodes_and_leave_agents_to_the_node_jobs() -> None:
    assert helm.values("yurt-edge/converter:0.1.0", 0) == {
        "image": {"repository": "yurt-edge/converter", "tag": "0.1.0"},
        "server": {"replicaCount": 0, "nodeSelector": {"openyurt.io/is-edge-worker": "false"}},
        "agent": {"enabled": False},
    }


def test_the_operators_values_files_come_after_converts_own_so_they_win() -> None:
    argv = helm.install_argv("helm", "/chart", "/kc", ["/tmp/ours.yaml", "/mine.yaml"])
    assert argv[:4] == ["helm", "upgrade", "--install", helm.RELEASE]
    assert argv[-4:] == ["--values", "/tmp/ours.yaml", "--values", "/mine.yaml"]
    assert helm.uninstall_argv("helm", "/kc")[-1] == "--wait"


def test_a_rendered_manifest_becomes_one_line_per_object() -> None:
    manifest = "---\n# comment only\n---\nkind: Service\nmetadata: {name: a, namespace: kube-system}\n---\n"
    manifest += "kind: ClusterRole\nmetadata: {name: b}\n"
    assert helm.objects_of(manifest) == ["Service kube-system/a", "ClusterRole b"]


def test_the_tunnel_is_part_of_the_recorded_options() -> None:
    assert '"tunnel": true' in TUNNEL.recorded()
    assert '"tunnel": false' in plan.Options(cloud_nodes=("cloud-1",)).recorded()


def test_convert_jobs_get_the_servers_and_the_ca_and_revert_jobs_do_not() -> None:
    args = runner.node_args(TUNNEL)
    assert "--tunnel-server-addr=203.0.113.5:31062" in args
    assert f"--tunnel-server-name={helm.SERVER_NAME}" in args
    assert not any(a.startswith("--tunnel") for a in runner.node_args(TUNNEL, "revert"))
    job = components.node_job("convert", "edge-1", "img:1", args, tunnel_ca=helm.CA_CONFIGMAP)
    pod = job["spec"]["template"]["spec"]
    assert {
        "name": "tunnel-ca",
        "configMap": {"name": helm.CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    } in pod["volumes"]
    assert pod["containers"][0]["volumeMounts"][-1]["mountPath"] == components.TUNNEL_CA_MOUNT
    plain = components.node_job("revert", "edge-1", "img:1", [])["spec"]["template"]["spec"]
    assert [v["name"] for v in plain["volumes"]] == ["host"]


def test_the_dry_run_lists_the_charts_objects_and_the_agents_files() -> None:
    p = plan.convert_plan(TUNNEL, NODES, None)
    lines = "\n".join(p.lines(TUNNEL.image, runner.node_args(TUNNEL), ["ConfigMap kube-system/yurt-tunnel-server-ca"]))
    assert f"helm   upgrade --install {helm.RELEASE}" in lines
    assert "ConfigMap kube-system/yurt-tunnel-server-ca" in lines
    for path in nodestep.TUNNEL_HOST_FILES:
        assert path in lines
    assert "--tunnel-server-addr=203.0.113.5:31062" in lines
    revert = plan.revert_plan(NODES, [], None, tunnel=True)
    assert f"helm   uninstall {helm.RELEASE}" in "\n".join(revert.lines(TUNNEL.image, []))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "--cloud-nodes=a", "--tunnel"], "--tunnel needs --tunnel-server-addr"),
        (["convert", "--cloud-nodes=a", "--tunnel-server-addr=h:1"], "only used with --tunnel"),
    ],
)
def test_tunnel_flags_that_cannot_work_exit_2_with_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.yurtctl_main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_missing_values_file_is_named() -> None:
    with pytest.raises(errors.ConverterError, match=r"--tunnel-values /nonexistent\.yaml: no such file"):
        helm.Helm("helm", helm.bundled_chart(), "/kc", ("/nonexistent.yaml",))
