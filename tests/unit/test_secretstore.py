"""Secrets come from the environment or the owner's 0600 secrets.toml; a missing one is one
clear error naming it and both ways to provide it, never a value."""

from __future__ import annotations

import os

import pytest

from siteboot.errors import EXIT_USAGE, SecretError
from siteboot.secretstore import SecretStore

NOBODY = 65534


def secrets_file(folder, text: str, mode: int = 0o600):
    path = folder / "secrets.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_the_environment_comes_first_then_the_file(tmp_path):
    path = secrets_file(tmp_path, 'DB = "from-file"\nMQ = "mq-file"\n')
    store = SecretStore(path, {"SITEBOOT_SECRET_DB": "from-env"})
    assert store.get("DB") == "from-env"
    assert store.get("MQ") == "mq-file"


def test_a_missing_secret_names_itself_and_both_ways(tmp_path):
    path = tmp_path / "secrets.toml"
    with pytest.raises(SecretError) as info:
        SecretStore(path, {}).get("DB_PASSWORD")
    assert info.value.exit_code == EXIT_USAGE
    assert str(info.value) == (
        "secret DB_PASSWORD is not set\n"
        "  hint: export SITEBOOT_SECRET_DB_PASSWORD=... for siteboot (a masked CI variable), or "
        f"add DB_PASSWORD = \"...\" to {path} (mode 0600)")


def test_an_empty_variable_is_not_a_secret(tmp_path):
    """A masked CI variable that a job does not get is empty, not a password."""
    with pytest.raises(SecretError, match="it is empty in the environment"):
        SecretStore(tmp_path / "secrets.toml", {"SITEBOOT_SECRET_PW": ""}).get("PW")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_file_others_may_read_is_refused(tmp_path, mode):
    path = secrets_file(tmp_path, 'PW = "x"\n', mode)
    with pytest.raises(SecretError) as info:
        SecretStore(path, {}).get("PW")
    assert f"{path} is mode {mode:04o}" in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)


def test_a_read_only_file_of_the_owner_is_fine(tmp_path):
    assert SecretStore(secrets_file(tmp_path, 'PW = "x"\n', 0o400), {}).get("PW") == "x"


def test_a_file_of_another_owner_or_a_symlink_is_refused(tmp_path):
    path = secrets_file(tmp_path, 'PW = "x"\n')
    os.chown(path, NOBODY, -1)
    with pytest.raises(SecretError, match=r"belongs to .*refusing to read secrets"):
        SecretStore(path, {}).get("PW")
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.toml"
    link.symlink_to(secrets_file(tmp_path / "real", 'PW = "x"\n'))
    with pytest.raises(SecretError, match="cannot read"):
        SecretStore(link, {}).get("PW")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(SecretError, match="not a regular file"):
        SecretStore(tmp_path / "dir.toml", {}).get("PW")


def test_a_broken_file_never_shows_a_value(tmp_path):
    path = secrets_file(tmp_path, 'PW = "hunter2\n')
    with pytest.raises(SecretError) as info:
        SecretStore(path, {}).get("PW")
    assert "is not valid TOML" in str(info.value)
    assert "hunter2" not in str(info.value)
    path = secrets_file(tmp_path, 'PW = 123456\nOK = "x"\n')
    with pytest.raises(SecretError, match="PW must be strings") as info:
        SecretStore(path, {}).get("OK")
    assert "123456" not in str(info.value)


def test_scrub_hides_what_was_handed_out(tmp_path):
    store = SecretStore(tmp_path / "secrets.toml", {"SITEBOOT_SECRET_A": "abc",
                                                    "SITEBOOT_SECRET_B": "abcdef"})
    store.get("A")
    store.get("B")
    assert store.scrub("x abcdef y abc") == "x {secret:B} y {secret:A}"
