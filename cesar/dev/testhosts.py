"""Test hosts: Debian bookworm booted with systemd as PID 1 under ``systemd-nspawn``, each in a
network namespace of its own, reachable from the controller over SSH, with a database on the
controller they reach over their veth link. Recipe: ../shared/design/testhosts.md.

One *run* is a set of hosts started together::

    /var/cache/cesar/rootfs            the Debian root filesystem, built once by debootstrap
    /var/lib/cesar-hosts/<run>/
        state.json                     every resource of the run, recorded before it is made
        inventory.yml                  a complete Ansible inventory (no prompt, no vault)
        ssh/                           the run's client key and the hosts' known host keys
        wheelhouse/                    what the hosts install (they reach no package index)
        pg/                            the database the hosts use (embedded PostgreSQL)
        h1/ h2/ ...                    each host's root filesystem (a copy of the cache)

Network, per run: a bridge ``cbr<run>`` holding the controller's address ``10.77.K.1/24``, and per
host a namespace ``cesar-<run>-hN`` with one end of a veth pair (``cv<run>N`` on the bridge) as
``eth0`` at ``10.77.K.(N+1)``. ``K`` is the first /24 of 10.77.0.0/16 that no interface uses yet,
so runs can coexist. No route leaves the subnet: the hosts reach the controller and nothing else.

Teardown (:func:`down`) goes by what ``state.json`` names: the nspawn processes by pid (checked to
still be ours), the namespaces and links by name, then the database and the files. A run left
behind by a test session that died is torn down by the next :func:`up`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from cesar import web
from cesar.db import urls
from cesar.deploy import wheelhouse
from cesar.dev.embedded import CLUSTER_DB, LOCAL_DB, EmbeddedPostgres, tls_bindir
from cesar.errors import ConfigError, OperationFailed

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CESAR_ROOTFS_CACHE", "/var/cache/cesar/rootfs"))
RUNS = Path(os.environ.get("CESAR_TESTHOSTS_DIR", "/var/lib/cesar-hosts"))
MIRROR = os.environ.get("CESAR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# Everything the roles expect to find installed: the hosts cannot reach a package index, so the
# roles' apt tasks find these present. A change here rebuilds the cached root filesystem.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv",
    "python3-apt", "iproute2", "cron", "logrotate", "ca-certificates", "sudo", "procps",
    # the host firewall, failed-login metrics from logs, the local database and its backups,
    # and the dashboard's web server
    "nftables", "mtail", "postgresql", "nginx",
)
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
SUBNETS = ipaddress.ip_network("10.77.0.0/16")
# Where the roles install the database CA on the hosts (cesar_api_db_ca_file's default).
HOST_CA_FILE = "/etc/cesar/db-ca.crt"
BOOT_TIMEOUT = 90.0

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


# -------------------------------------------------------------------- model
@dataclass
class Host:
    name: str           # inventory name and hostname: h1, h2, ...
    netns: str          # cesar-<run>-h1
    veth: str           # controller end, on the bridge: cv<run>1
    address: str        # 10.77.K.2
    root: str           # its root filesystem
    pid: int | None = None


@dataclass
class Run:
    id: str
    dir: str
    owner: str                    # "pytest" (reaped when its process is gone) or "invoke"
    owner_pid: int
    subnet: str = ""
    bridge: str = ""
    controller: str = ""
    hosts: list[Host] = field(default_factory=list)
    pg_dir: str = ""
    inventory: str = ""
    created_at: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def save(self) -> None:
        tmp = self.path / ".state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, self.path / "state.json")

    @classmethod
    def load(cls, run_dir: Path) -> Run:
        data = json.loads((run_dir / "state.json").read_text())
        data["hosts"] = [Host(**h) for h in data.get("hosts", [])]
        return cls(**data)


# -------------------------------------------------------------------- requirements
def missing_requirements() -> list[str]:
    """What this machine lacks to run test hosts, each naming how to get it."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (systemd-nspawn and network namespaces need it)")
    for tool, package in TOOLS.items():
        if not have_tool(tool):
            missing.append(f"{tool} (apt-get install {package})")
    if tls_bindir() is None:
        missing.append("a PostgreSQL built with SSL (apt-get install postgresql)")
    return missing


def have_tool(tool: str) -> bool:
    """Whether ``tool`` is installed (root's PATH may lack /usr/sbin)."""
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


def check_requirements() -> None:
    """Raise a ConfigError naming everything missing_requirements() found."""
    missing = missing_requirements()
    if missing:
        raise ConfigError("test hosts need " + ", ".join(missing))


# -------------------------------------------------------------------- root filesystem
def _rootfs_stamp() -> dict[str, object]:
    return {"suite": SUITE, "packages": sorted(PACKAGES), "variant": "minbase"}


def rootfs_is_current(cache: Path = CACHE) -> bool:
    stamp = cache.with_name(cache.name + ".json")
    try:
        return json.loads(stamp.read_text()) == _rootfs_stamp() and (cache / "sbin/init").exists()
    except (OSError, ValueError):
        return False


def ensure_rootfs(cache: Path = CACHE, progress: Progress = _quiet) -> Path:
    """The cached root filesystem, built by debootstrap when missing or when PACKAGES changed."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with _locked(cache.with_name(cache.name + ".lock")):
        if rootfs_is_current(cache):
            progress(f"root filesystem: cached at {cache}")
            return cache
        for stale in cache.parent.glob(f"{cache.name}.build-*"):  # a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        building = cache.with_name(f"{cache.name}.build-{os.getpid()}")
        progress(f"root filesystem: debootstrap {SUITE} into {cache} (about a minute, once)")
        started = time.monotonic()
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
              SUITE, str(building), MIRROR], "debootstrap", timeout=1200)
        _prepare_image(building)
        stamp = cache.with_name(cache.name + ".json")
        stamp.unlink(missing_ok=True)
        if cache.exists():
            shutil.rmtree(cache)
        building.rename(cache)
        stamp.write_text(json.dumps(_rootfs_stamp(), indent=2) + "\n")
        progress(f"root filesystem: built in {time.monotonic() - started:.0f} s")
        return cache


def _prepare_image(root: Path) -> None:
    """What every host shares: no host keys or machine id (each host gets its own), key-only
    root login over SSH, no downloaded package files."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "etc/ssh/sshd_config.d/cesar-testhost.conf").write_text(
        "# cesar test host: keys only, one host key (written per host by the harness).\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UseDNS no\n"
    )
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


# -------------------------------------------------------------------- up
def up(count: int = 2, *, owner: str = "invoke", sync_hosts: int = 1,
       progress: Progress = _quiet) -> Run:
    """Start ``count`` hosts and their database; write the inventory. Cleans up on failure."""
    if not 1 <= count <= 20:
        raise ConfigError(f"--count {count}: start between 1 and 20 hosts")
    check_requirements()
    reap_orphans(progress)
    rootfs = ensure_rootfs(progress=progress)
    RUNS.mkdir(parents=True, exist_ok=True)
    RUNS.chmod(0o755)
    run_id = secrets.token_hex(3)
    run_dir = RUNS / run_id
    run_dir.mkdir(mode=0o711)
    run = Run(id=run_id, dir=str(run_dir), owner=owner, owner_pid=os.getpid())
    run.save()
    try:
        started = time.monotonic()
        _network(run, count)
        keys = _ssh_keys(run)
        for host in run.hosts:
            _make_host(host, rootfs, keys)
        for host in run.hosts:
            _boot(run, host)
        progress(f"booting {count} hosts in {run.subnet} (run {run.id})")
        pg_urls = _database(run, progress)
        # The hosts finish booting before the builds start: a build's burst of processes and
        # threads competing with the boot once left a unit failed at boot (CI, 2026-11-30).
        for host in run.hosts:
            wait_ready(run, host, keys, progress)
        progress("building the wheelhouse the hosts install from")
        wheelhouse.build(run.path / "wheelhouse", project_dir=REPO)
        progress("building the dashboard's export the web host serves")
        web.build(run.path / "web")
        progress(f"{count} hosts up in {time.monotonic() - started:.1f} s: "
                 + ", ".join(f"{h.name}={h.address}" for h in run.hosts))
        run.inventory = str(_write_inventory(run, keys, pg_urls, sync_hosts))
        run.save()
        return run
    except BaseException:
        down(run, progress=progress)
        raise


def _network(run: Run, count: int) -> None:
    with _locked(RUNS / ".network.lock"):
        subnet = pick_subnet()
        hosts = list(subnet.hosts())
        run.subnet, run.controller = str(subnet), str(hosts[0])
        run.bridge = f"cbr{run.id}"
        run.save()
        _ip("link", "add", run.bridge, "type", "bridge")
        _ip("addr", "add", f"{run.controller}/{subnet.prefixlen}", "dev", run.bridge)
        _ip("link", "set", run.bridge, "up")
    for n in range(1, count + 1):
        host = Host(name=f"h{n}", netns=f"cesar-{run.id}-h{n}", veth=f"cv{run.id}{n}",
                    address=str(hosts[n]), root=str(run.path / f"h{n}"))
        run.hosts.append(host)
        run.save()
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
            "netns", host.netns)
        _ip("link", "set", host.veth, "master", run.bridge)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")


def pick_subnet(ip_addr_json: str | None = None) -> ipaddress.IPv4Network:
    """The first /24 of 10.77.0.0/16 that overlaps no address on this machine (as
    ``ip -j -4 addr`` lists them; ``ip_addr_json`` is that listing, read here when not given)."""
    out = _run(["ip", "-j", "-4", "addr"], "ip addr") if ip_addr_json is None else ip_addr_json
    used = [
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
        for link in json.loads(out) for a in link.get("addr_info", [])
    ]
    for candidate in SUBNETS.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise OperationFailed(f"every /24 of {SUBNETS} is in use; run `invoke testhosts.down --all`")


@dataclass(frozen=True)
class Keys:
    private: Path
    public: str
    known_hosts: Path


def _ssh_keys(run: Run) -> Keys:
    ssh = run.path / "ssh"
    ssh.mkdir(mode=0o700)
    key = ssh / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"cesar-testhosts-{run.id}",
          "-f", str(key)], "ssh-keygen")
    return Keys(key, (ssh / "id_ed25519.pub").read_text().strip(), ssh / "known_hosts")


def _make_host(host: Host, rootfs: Path, keys: Keys) -> None:
    """A private copy of the image with its own identity: hostname, machine id, host key."""
    root = Path(host.root)
    _run(["cp", "-a", "--reflink=auto", str(rootfs), str(root)], "cp rootfs", timeout=300)
    (root / "etc/hostname").write_text(host.name + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    hostkey = root / "etc/ssh/ssh_host_ed25519_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}",
          "-f", str(hostkey)], "ssh-keygen (host key)")
    algo, blob = hostkey.with_suffix(".pub").read_text().split()[:2]
    with keys.known_hosts.open("a") as fh:
        fh.write(f"{host.address} {algo} {blob}\n")
    dot_ssh = root / "root/.ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    (dot_ssh / "authorized_keys").write_text(keys.public + "\n")
    (dot_ssh / "authorized_keys").chmod(0o600)


def _boot(run: Run, host: Host) -> None:
    log = open(run.path / f"{host.name}.console.log", "wb")  # noqa: SIM115 - outlives this call
    proc = subprocess.Popen(
        ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
         f"--network-namespace-path=/run/netns/{host.netns}", f"--directory={host.root}",
         f"--machine={host.name}", "--console=passive", "--link-journal=no",
         "--resolv-conf=off", "--timezone=off",
         # nftables inside the host (its own network namespace), as on a real machine.
         "--capability=CAP_NET_ADMIN"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    host.pid = proc.pid
    run.save()


def _database(run: Run, progress: Progress) -> dict[str, str]:
    """A PostgreSQL of the run's own (Debian's build, with TLS), listening on the bridge with a
    certificate valid for the bridge address; schema applied. Returns the hosts' URLs
    (verify-full against the CA the roles install at HOST_CA_FILE), and the CA."""
    run.pg_dir = str(run.path / "pg")
    run.save()
    pg = EmbeddedPostgres(Path(run.pg_dir), bindir=tls_bindir(), extra_listen=[run.controller],
                          allow_networks=[run.subnet])
    state, _ = pg.up()
    if not state.tls:
        raise OperationFailed(f"the PostgreSQL in {tls_bindir()} did not start with TLS")
    progress(f"database: PostgreSQL with TLS on {run.controller}:{state.port} (and 127.0.0.1)")
    login = state.active_login
    result = {"ca_cert": pg.ca_file.read_text()}
    for name, dbname in (("local", LOCAL_DB), ("cluster", CLUSTER_DB)):
        common = {"user": login, "password": state.passwords[login], "port": state.port,
                  "dbname": dbname}
        result[name] = urls.build(host=run.controller, sslmode="verify-full",
                                  sslrootcert=HOST_CA_FILE, **common)
        _apply_schema(urls.build(host="127.0.0.1", sslmode="verify-full",
                                 sslrootcert=str(pg.ca_file), **common))
    return result


def _apply_schema(url: str) -> None:
    """The schema, applied from the controller before any deploy, by the migration runner."""
    _run([sys.executable, "-m", "cesar.cli", "migrate", "up", "--url", url],
         "cesar migrate up", cwd=REPO, timeout=300)


def ssh_command(run: Run, host: Host, keys: Keys | None = None) -> list[str]:
    key = keys.private if keys else run.path / "ssh" / "id_ed25519"
    known = keys.known_hosts if keys else run.path / "ssh" / "known_hosts"
    return ["ssh", *ssh_options(key, known), f"root@{host.address}"]


def ssh_options(key: Path, known_hosts: Path) -> list[str]:
    return ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=3"]


def wait_ready(run: Run, host: Host, keys: Keys | None = None,
               progress: Progress = _quiet) -> None:
    """SSH answers and systemd reports the boot finished with no failed unit.

    A unit that failed at boot is the base image's (no role has run yet), so each is started
    once more, and why it failed is reported (systemd's result and the last lines of its
    journal: at boot, before any role wrote a secret); if one fails a second time, the run
    stops with that diagnosis. Meant for a host that has just booted."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    ssh = ssh_command(run, host, keys)
    retried: set[str] = set()
    try:
        while True:
            if host.pid is not None and not _alive(host.pid):
                raise OperationFailed(
                    f"{host.name}: systemd-nspawn exited during boot; see "
                    f"{run.path / (host.name + '.console.log')}"
                )
            left = max(deadline - time.monotonic(), 1.0)
            probe = subprocess.run([*ssh, "systemctl", "is-system-running", "--wait"],
                                   capture_output=True, text=True, timeout=left)
            state = probe.stdout.strip()
            if state == "running":
                return
            if state == "degraded":
                failed = failed_units(ssh)
                why = "; ".join(unit_diagnosis(ssh, unit) for unit in failed)
                if not failed or retried.intersection(failed):
                    raise OperationFailed(f"{host.name} booted degraded; failed units: "
                                          + (" ".join(failed) or "none listed") + f". {why}")
                progress(f"{host.name}: failed at boot, starting again: {why}")
                subprocess.run([*ssh, "systemctl", "reset-failed", *failed],
                               capture_output=True, text=True, timeout=30)
                subprocess.run([*ssh, "systemctl", "start", *failed], capture_output=True,
                               text=True, timeout=max(deadline - time.monotonic(), 1.0))
                retried.update(failed)
                continue
            if time.monotonic() > deadline:
                raise OperationFailed(
                    f"{host.name} ({host.address}) not ready after {BOOT_TIMEOUT:.0f} s "
                    f"(last answer: {(probe.stderr or state).strip()[:200]!r})"
                )
            time.sleep(0.5)
    except subprocess.TimeoutExpired as exc:
        raise OperationFailed(f"{host.name} ({host.address}) not ready after "
                              f"{BOOT_TIMEOUT:.0f} s: `{' '.join(exc.cmd[-3:])}` did not "
                              "answer in time") from None


def failed_units(ssh: list[str]) -> list[str]:
    """The host's failed units, by name."""
    out = subprocess.run([*ssh, "systemctl", "--failed", "--plain", "--no-legend"],
                         capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def unit_diagnosis(ssh: list[str], unit: str) -> str:
    """One line on why ``unit`` failed: systemd's result and exit status, and the last lines of
    its journal for this boot."""
    show = subprocess.run([*ssh, "systemctl", "show", unit, "--property",
                           "Result,ExecMainCode,ExecMainStatus"],
                          capture_output=True, text=True, timeout=30).stdout.split()
    journal = subprocess.run([*ssh, "journalctl", "--boot", "--unit", unit, "--lines", "4",
                              "--no-pager", "--output", "cat"],
                             capture_output=True, text=True, timeout=30).stdout
    lines = " | ".join(line.strip() for line in journal.splitlines() if line.strip())
    return f"{unit} ({', '.join(show)}): {lines[-400:] or 'no journal lines'}"


def _write_inventory(run: Run, keys: Keys, db: dict[str, str], sync_hosts: int) -> Path:
    """A complete inventory: `ansible-playbook -i THIS site.yml` from ansible/ needs nothing else.

    The hosts run as staging does: ENVIRONMENT=staging, the "cluster" reached with
    sslmode=verify-full through the CA the roles install. The engine is PostgreSQL."""
    hosts = {h.name: {"ansible_host": h.address} for h in run.hosts}
    ssh_args = " ".join(ssh_options(keys.private, keys.known_hosts)[2:])
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(keys.private),
                "ansible_ssh_common_args": ssh_args,
                "ansible_python_interpreter": "/usr/bin/python3",
                "cesar_release_wheelhouse": str(run.path / "wheelhouse"),
                "cesar_web_build_dir": str(run.path / "web"),
                "cesar_api_environment": "staging",
                "cesar_api_cockroach_db_url": db["cluster"],
                "cesar_api_db_ca_cert": db["ca_cert"],
                "cesar_api_expected_engine": "postgresql",
                # The monitoring credential (generated per run): checks/test_api.py reads /health's
                # details with it, as Prometheus reads /metrics.
                "cesar_api_metrics_token": secrets.token_urlsafe(32),
                "cesar_sync_environment": "staging",
                "cesar_sync_cockroach_db_url": db["cluster"],
                "cesar_sync_local_db_url": db["local"],
                "cesar_sync_db_ca_cert": db["ca_cert"],
                # The controller polls the hosts' API (the firewall admits nothing else).
                "cesar_firewall_api_allowed_cidrs": [f"{run.controller}/32"],
            },
            "children": {
                "cesar_api": {"hosts": {name: {} for name in hosts}},
                "cesar_sync": {"hosts": {h.name: {} for h in run.hosts[:sync_hosts]}},
                # The host that owns the local database (Debian's PostgreSQL in the image).
                "cesar_backup": {"hosts": {run.hosts[0].name: {}}},
                # nginx serving the dashboard in front of that host's API.
                "cesar_web": {"hosts": {run.hosts[0].name: {}}},
            },
            "hosts": hosts,
        }
    }
    path = run.path / "inventory.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# cesar test hosts, run {run.id}: written by cesar/dev/testhosts.py; "
                 "`invoke testhosts.down` removes it.\n")
        yaml.safe_dump(inventory, fh, sort_keys=False, width=1000)
    return path


# -------------------------------------------------------------------- down
def down(run: Run, progress: Progress = _quiet) -> list[str]:
    """Tear down everything ``state.json`` names; safe to repeat, and on a half-made run."""
    done: list[str] = []
    for host in run.hosts:
        if host.pid is not None and stop_nspawn(host):
            done.append(f"stopped {host.name} (pid {host.pid})")
    for host in run.hosts:
        if _exists(["ip", "netns", "list"], host.netns):
            _ip("netns", "del", host.netns)
            done.append(f"deleted namespace {host.netns}")
        _del_link(host.veth)
    if run.bridge and _link_exists(run.bridge):
        _ip("link", "del", run.bridge)
        done.append(f"deleted bridge {run.bridge} ({run.controller})")
    if run.pg_dir and Path(run.pg_dir).exists():
        with contextlib.suppress(OperationFailed):
            if EmbeddedPostgres(Path(run.pg_dir)).down():
                done.append("stopped the hosts' PostgreSQL")
    if run.path.exists():
        shutil.rmtree(run.path)
        done.append(f"removed {run.path} (inventory and host copies)")
    for line in done:
        progress(line)
    return done


def runs() -> list[Run]:
    out = []
    for state in sorted(RUNS.glob("*/state.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(Run.load(state.parent))
    return out


def find(run_id_or_inventory: str) -> Run:
    for run in runs():
        if run_id_or_inventory in (run.id, run.inventory, run.dir):
            return run
    raise ConfigError(f"no test-host run {run_id_or_inventory!r} under {RUNS}; "
                      "`invoke testhosts.down --all` removes every run")


def reap_orphans(progress: Progress = _quiet) -> None:
    """Tear down runs started by a test session whose process is gone (killed, crashed)."""
    for run in runs():
        if run.owner == "pytest" and not _alive(run.owner_pid):
            progress(f"removing run {run.id} left behind by a test session (pid {run.owner_pid})")
            down(run, progress)


def stop_nspawn(host: Host, grace: float = 20.0) -> bool:
    """SIGTERM asks nspawn for an orderly shutdown of the container; SIGKILL after ``grace``."""
    pid = host.pid
    if pid is None or not _alive(pid) or not is_our_nspawn(pid, host):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)
    return True


def is_our_nspawn(pid: int, host: Host) -> bool:
    """The pid still belongs to the nspawn we started (pids are reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"systemd-nspawn") and \
        f"--directory={host.root}".encode() in argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


# -------------------------------------------------------------------- helpers
def _ip(*args: str) -> None:
    _run(["ip", *args], "ip " + " ".join(args[:3]))


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def _del_link(name: str) -> None:
    """Delete a link if it is there. Deleting a namespace destroys its veth pair asynchronously,
    so the host side can vanish between the check and the delete: that is success, not failure."""
    if not _link_exists(name):
        return
    try:
        _ip("link", "del", name)
    except OperationFailed:
        if _link_exists(name):
            raise


def _exists(cmd: list[str], name: str) -> bool:
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    return any(line.split()[0] == name for line in out.splitlines() if line.strip())


def _run(cmd: list[str], what: str, *, timeout: float = 120, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              check=True)
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise OperationFailed(f"{what} failed: {lines[-1] if lines else exc.returncode}") from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{what} did not finish within {timeout:.0f} s") from None
    return done.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
