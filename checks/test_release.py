"""The service account and the release: a virtualenv built offline from the wheelhouse."""

from __future__ import annotations

import re

PIP_CONFIG_FILES = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "/root/.pip/pip.conf",
                    "/root/.config/pip/pip.conf")
INDEX_SETTING = re.compile(r"^\s*(index-url|extra-index-url|index)\s*=", re.MULTILINE)


def test_service_user_is_a_system_account_without_login(host, expected) -> None:
    user = host.user(expected.cesar_release_user)
    assert user.exists
    assert user.uid < 1000
    assert user.shell in ("/usr/sbin/nologin", "/bin/false")
    assert user.home == expected.cesar_release_home
    assert user.group == expected.cesar_release_group
    assert user.password in ("!", "*", "!*")


def test_current_release_is_installed_and_runs_as_the_service_user(host, expected) -> None:
    current = host.file(f"{expected.cesar_release_root}/current")
    assert current.is_symlink
    release = host.file(current.linked_to)
    assert host.file(f"{release.path}/.installed").is_file
    venv = host.file(f"{release.path}/venv")
    assert venv.user == "root"  # the service cannot modify the code it runs
    version = host.run(f"runuser -u {expected.cesar_release_user} -- "
                       f"{release.path}/venv/bin/cesar --version")
    assert version.rc == 0, version.stderr
    assert version.stdout.startswith("cesar, version ")


def test_no_package_index_is_configured(host, expected) -> None:
    """The wheelhouse is the only source: no pip configuration names an index."""
    homes = [expected.cesar_release_home]
    files = [*PIP_CONFIG_FILES, *(f"{h}/.pip/pip.conf" for h in homes),
             *(f"{h}/.config/pip/pip.conf" for h in homes)]
    for path in files:
        f = host.file(path)
        if f.exists:
            assert not INDEX_SETTING.search(f.content_string), f"{path} configures an index"
    listed = host.run(f"PIP_CONFIG_FILE= {expected.venv}/bin/pip config list")
    assert listed.rc == 0, listed.stderr
    assert "index-url" not in listed.stdout
    assert "global.no-index='true'" in listed.stdout
    for path in ("/etc/environment", expected.cesar_api_env_file, expected.cesar_sync_env_file):
        f = host.file(path)
        if f.exists:
            assert "PIP_INDEX_URL" not in f.content_string
            assert "PIP_EXTRA_INDEX_URL" not in f.content_string

