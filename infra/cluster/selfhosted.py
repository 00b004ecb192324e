"""A secure CockroachDB cluster in Docker (the dev stack and any self-hosted stack).

Three nodes (by default) on a private bridge network, each started with ``cockroach start
--join`` and its own protected volume; SQL and DB Console ports published on the configured
address (loopback in development); a health check on ``/health?ready=1``; and a one-shot
container that runs ``cockroach init`` once and then the idempotent bootstrap SQL
(``cesar.cluster_bootstrap``: allowlist as the HBA setting, database, group role, logins).

The pure parts (the node command line, the init script, the HBA text) are functions the tests
call directly; the component only wires resources.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pulumi
import pulumi_docker as docker

from cesar import allowlist
from cesar.errors import OperationFailed
from infra.cluster.certs import ClusterCertificates
from infra.naming import HTTP_PORT, RPC_PORT, SQL_PORT, Names, docker_labels
from infra.settings import SelfHosted, StackSettings

CERTS_DIR = "/cockroach/certs"
DATA_DIR = "/cockroach/cockroach-data"
INIT_CERTS_DIR = "/certs"
BOOTSTRAP_FILE = "/bootstrap/bootstrap.sql"
SQL_READY_ATTEMPTS = 90  # x 2 s


# ------------------------------------------------------------------ pure parts
def node_locality(regions: Sequence[str], index: int) -> str | None:
    """Nodes are spread over the regions round-robin: node 1 in the first (primary) region."""
    if not regions:
        return None
    region = regions[(index - 1) % len(regions)]
    zone = f"{region}-{(index - 1) // len(regions) + 1}"
    return f"region={region},zone={zone}"


def node_command(spec: SelfHosted, regions: Sequence[str], index: int) -> list[str]:
    """The ``cockroach start`` arguments of node ``index`` (1-based)."""
    hosts = [Names.node_host(i) for i in range(1, spec.nodes + 1)]
    args = [
        "start",
        "--insecure" if spec.insecure else f"--certs-dir={CERTS_DIR}",
        f"--store={DATA_DIR}",
        f"--listen-addr=:{RPC_PORT}",
        f"--advertise-addr={Names.node_host(index)}:{RPC_PORT}",
        f"--sql-addr=:{SQL_PORT}",
        f"--advertise-sql-addr={Names.node_host(index)}:{SQL_PORT}",
        f"--http-addr=:{HTTP_PORT}",
        "--join=" + ",".join(f"{h}:{RPC_PORT}" for h in hosts),
        f"--cache={spec.cache}",
        f"--max-sql-memory={spec.max_sql_memory}",
    ]
    locality = node_locality(regions, index)
    if locality:
        args.append(f"--locality={locality}")
    return args


def health_test(spec: SelfHosted) -> list[str]:
    url_host = "localhost"
    if spec.insecure:
        return ["CMD", "curl", "--fail", "--silent", f"http://{url_host}:{HTTP_PORT}/health?ready=1"]
    return ["CMD", "curl", "--fail", "--silent", "--cacert", f"{CERTS_DIR}/ca.crt",
            f"https://{url_host}:{HTTP_PORT}/health?ready=1"]


def init_script(spec: SelfHosted) -> str:
    """Shell run by the one-shot init container: ``cockroach init`` unless already done, wait
    for SQL, apply the bootstrap SQL. Safe to run again."""
    flags = "--insecure" if spec.insecure else f"--certs-dir={INIT_CERTS_DIR}"
    first = Names.node_host(1)
    return "\n".join([
        "set -euo pipefail",
        f"if out=$(cockroach init {flags} --host={first}:{RPC_PORT} 2>&1); then",
        '  echo "cluster initialised"',
        'elif printf "%s" "$out" | grep -q "already been initialized"; then',
        '  echo "cluster already initialised"',
        "else",
        '  printf "%s\\n" "$out" >&2; exit 1',
        "fi",
        f"for i in $(seq 1 {SQL_READY_ATTEMPTS}); do",
        f"  cockroach sql {flags} --host={first}:{SQL_PORT} -e 'SELECT 1' >/dev/null 2>&1 && break",
        f'  if [ "$i" = {SQL_READY_ATTEMPTS} ]; then echo "SQL not ready after '
        f'{SQL_READY_ATTEMPTS * 2} s" >&2; exit 1; fi',
        "  sleep 2",
        "done",
        f"cockroach sql {flags} --host={first}:{SQL_PORT} --file={BOOTSTRAP_FILE}",
        'echo "bootstrap applied"',
    ]) + "\n"


def hba(settings: StackSettings) -> str | None:
    """The HBA setting for a self-hosted secure cluster (None when insecure: no HBA applies).

    When the SQL ports are published on loopback, Docker's proxy makes every connection arrive
    from the private network's gateway, so that one address is allowed; otherwise the clients'
    own addresses arrive and only the allowlist applies.
    """
    spec = settings.self_hosted
    assert spec is not None
    if spec.insecure:
        return None
    extra = []
    if spec.loopback_only:
        extra.append(("docker-gateway (loopback-published ports)",
                      ipaddress.ip_network(f"{spec.gateway}/32")))
    return allowlist.hba_configuration(settings.allowlist, extra_sql_networks=extra)


class OneShotFailed(OperationFailed, pulumi.RunError):
    """A one-shot container failed. A ``RunError`` too, so that Pulumi prints the message
    without a traceback."""


def require_success(container: str, exit_code: int | None) -> int | None:
    """Fail the update when a one-shot container (init, bootstrap) exited non-zero.

    The Docker provider waits for it (``attach``) and records its exit code but does not treat a
    failure as an error (``must_run`` is off for a container meant to exit), so the program
    checks. ``None`` (a preview, or the mocks) is not a failure.
    """
    if exit_code not in (None, 0):
        raise OneShotFailed(f"the one-shot container {container} exited with code {exit_code}; "
                              f"see `docker logs {container}` on the stack's Docker host, fix the "
                              "cause and run `pulumi up` again (it is safe to rerun)")
    return exit_code


def published_sql_endpoints(spec: SelfHosted) -> list[str]:
    host = f"[{spec.bind_address}]" if ":" in spec.bind_address else spec.bind_address
    return [f"{host}:{spec.sql_port + i}" for i in range(spec.nodes)]


# ------------------------------------------------------------------ resources
class SelfHostedCluster(pulumi.ComponentResource):
    """Network, volumes, certificates, nodes and the init/bootstrap container."""

    def __init__(self, name: str, settings: StackSettings, *,
                 bootstrap_sql: pulumi.Output[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cesar:infra:SelfHostedCluster", name, None, opts)
        spec = settings.self_hosted
        assert spec is not None
        names = settings.names
        child = pulumi.ResourceOptions(parent=self)
        self.node_hosts = [Names.node_host(i) for i in range(1, spec.nodes + 1)]

        self.image = docker.RemoteImage(names.resource("cockroach-image"),
                                        name=settings.images.cockroach, keep_locally=True,
                                        opts=child)
        self.network = docker.Network(
            names.network, name=names.network, driver="bridge",
            ipam_configs=[docker.NetworkIpamConfigArgs(subnet=spec.subnet, gateway=spec.gateway)],
            labels=docker_labels(settings.stack, "network", docker.NetworkLabelArgs), opts=child)
        self.certs = None if spec.insecure else ClusterCertificates(
            names.resource("certs"), node_hosts=self.node_hosts,
            addresses=[spec.bind_address], opts=child)

        self.nodes: list[docker.Container] = []
        for index, host in enumerate(self.node_hosts, start=1):
            volume = docker.Volume(
                names.node_volume(index), name=names.node_volume(index),
                labels=docker_labels(settings.stack, "cockroach-data", docker.VolumeLabelArgs),
                opts=pulumi.ResourceOptions(parent=self, protect=spec.protect_volumes))
            self.nodes.append(docker.Container(
                names.node(index),
                name=names.node(index),
                hostname=host,
                image=self.image.image_id,
                command=node_command(spec, settings.regions, index),
                networks_advanced=[docker.ContainerNetworksAdvancedArgs(
                    name=self.network.name, aliases=[host])],
                ports=[
                    docker.ContainerPortArgs(internal=SQL_PORT, external=spec.sql_port + index - 1,
                                             ip=spec.bind_address),
                    docker.ContainerPortArgs(internal=HTTP_PORT,
                                             external=spec.http_port + index - 1,
                                             ip=spec.bind_address),
                ],
                volumes=[docker.ContainerVolumeArgs(volume_name=volume.name,
                                                    container_path=DATA_DIR)],
                uploads=self._node_uploads(host),
                healthcheck=docker.ContainerHealthcheckArgs(
                    tests=health_test(spec), interval="10s", timeout="5s", retries=3,
                    start_period="60s"),
                restart="unless-stopped",
                security_opts=["no-new-privileges:true"],
                labels=docker_labels(settings.stack, "cockroach-node", docker.ContainerLabelArgs),
                opts=child,
            ))

        self.init = docker.Container(
            names.cluster_init,
            name=names.cluster_init,
            image=self.image.image_id,
            entrypoints=["/bin/bash", "-c"],
            command=[init_script(spec)],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=self.network.name)],
            uploads=self._init_uploads(bootstrap_sql),
            must_run=False, attach=True, logs=True, restart="no",
            labels=docker_labels(settings.stack, "cockroach-init", docker.ContainerLabelArgs),
            # Its output (the bootstrap's, which may echo the license) is kept in Pulumi's
            # state: encrypted there, never in plain text.
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.nodes,
                                        additional_secret_outputs=["container_logs"]),
        )

        self.init_exit_code = self.init.exit_code.apply(
            lambda code: require_success(names.cluster_init, code))
        self.sql_endpoints = pulumi.Output.from_input(published_sql_endpoints(spec))
        self.sql_host = pulumi.Output.from_input(spec.bind_address)
        self.sql_port = pulumi.Output.from_input(spec.sql_port)
        scheme = "http" if spec.insecure else "https"
        host = f"[{spec.bind_address}]" if ":" in spec.bind_address else spec.bind_address
        self.console_url = pulumi.Output.from_input(f"{scheme}://{host}:{spec.http_port}")
        self.ca_cert_pem = self.certs.ca_cert_pem if self.certs else None
        self.register_outputs({"sql_endpoints": self.sql_endpoints,
                               "console_url": self.console_url,
                               "init_exit_code": self.init_exit_code})

    def _node_uploads(self, host: str) -> list[docker.ContainerUploadArgs]:
        if self.certs is None:
            return []
        cert, key = self.certs.nodes[host]
        return [
            docker.ContainerUploadArgs(file=f"{CERTS_DIR}/ca.crt", content=self.certs.ca_cert_pem,
                                       permissions="0644"),
            docker.ContainerUploadArgs(file=f"{CERTS_DIR}/node.crt", content=cert,
                                       permissions="0644"),
            docker.ContainerUploadArgs(file=f"{CERTS_DIR}/node.key", content=key,
                                       permissions="0600"),
        ]

    def _init_uploads(self, bootstrap_sql: pulumi.Output[str]) -> list[docker.ContainerUploadArgs]:
        uploads = [docker.ContainerUploadArgs(file=BOOTSTRAP_FILE,
                                              content=pulumi.Output.secret(bootstrap_sql),
                                              permissions="0600")]
        if self.certs is not None:
            cert, key = self.certs.root_client
            uploads += [
                docker.ContainerUploadArgs(file=f"{INIT_CERTS_DIR}/ca.crt",
                                           content=self.certs.ca_cert_pem, permissions="0644"),
                docker.ContainerUploadArgs(file=f"{INIT_CERTS_DIR}/client.root.crt",
                                           content=cert, permissions="0644"),
                docker.ContainerUploadArgs(file=f"{INIT_CERTS_DIR}/client.root.key",
                                           content=key, permissions="0600"),
            ]
        return uploads


__all__ = ["SelfHostedCluster", "hba", "health_test", "init_script", "node_command",
           "node_locality", "published_sql_endpoints", "require_success", "OneShotFailed"]
