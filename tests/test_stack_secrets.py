"""Secrets of the plant stack: every secret in docker-compose.yml is a `${VAR:?...}` from the untracked
.env (or a VAR_FILE path under /run/secrets/), .env.example lists every variable with empty secrets,
no literal credential anywhere in the tree, .env is git-ignored and kept out of the image. The rule
checkers are also run on bad input, so the tests can fail.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from typing import Any

import pytest

from tests.plant_stack import (
    DASHBOARD_FILE,
    DATASOURCE_FILE,
    DOCKERIGNORE,
    PROVIDER_FILE,
    ROOT,
    SECRET_REFERENCE_RE,
    compose_model,
    compose_variables,
    env_example,
    environment,
    interpolate,
    is_secret_key,
)


def secret_environment_problems(compose: Mapping[str, Any]) -> list[str]:
    """Environment values of PASSWORD/TOKEN/SECRET keys that are not exactly a `${VAR}` reference, and
    `<SECRET>_FILE` values that are not a path under /run/secrets/ (the file holds the secret)."""
    problems: list[str] = []
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            names_a_file = key.endswith("_FILE") and is_secret_key(key.removesuffix("_FILE"))
            if names_a_file:
                bad = not re.fullmatch(r"/run/secrets/[\w./-]+", value) or ".." in value
            else:
                bad = is_secret_key(key) and not SECRET_REFERENCE_RE.fullmatch(value)
            if bad:
                problems.append(f"{name}: {key}")
    return problems


def test_secret_environment_values_are_interpolated_from_env() -> None:
    compose = compose_model()
    assert secret_environment_problems(compose) == []
    keys = {k for s in compose["services"].values() for k in environment(s) if is_secret_key(k)}
    assert {"DOCKER_INFLUXDB_INIT_PASSWORD", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN", "GF_SECURITY_ADMIN_PASSWORD"} <= keys
    assert {"OPCUA_PASSWORD", "MES_TOKEN", "GATEWAY_TOKEN"} <= keys
    # Each required value fails loudly when .env lacks it.
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if is_secret_key(key):
                assert ":?" in value, f"{name}: {key} should use ${{VAR:?message}}"


def test_the_secret_rule_rejects_a_literal() -> None:
    compose = {"services": {"x": {"environment": {"MES_TOKEN": "abc", "A_PASSWORD": "${A:?x}"}}}}
    assert secret_environment_problems(compose) == ["x: MES_TOKEN"]
    listed = {"services": {"x": {"environment": ["GF_SECURITY_ADMIN_PASSWORD=admin"]}}}
    assert secret_environment_problems(listed) == ["x: GF_SECURITY_ADMIN_PASSWORD"]
    files = {"x": {"environment": {"INFLUX_TOKEN_FILE": "/run/secrets/a/t", "MES_TOKEN_FILE": "abcdef"}}}
    assert secret_environment_problems({"services": files}) == ["x: MES_TOKEN_FILE"]


def test_every_compose_variable_is_in_env_example_and_every_secret_there_is_empty() -> None:
    example = env_example()
    used = compose_variables(compose_model())
    assert used - set(example) == set(), "variables missing from .env.example"
    assert set(example) - used == set(), ".env.example lists variables docker-compose.yml does not use"
    for key, value in example.items():
        if is_secret_key(key):
            assert value == "" or ("<" in value and ">" in value), f".env.example: {key} must be a placeholder"


def test_interpolation_fails_loudly_without_env() -> None:
    with pytest.raises(LookupError, match=r"MES_TOKEN: set MES_TOKEN in \.env"):
        interpolate("${MES_TOKEN:?set MES_TOKEN in .env}", {"MES_TOKEN": ""})
    assert interpolate("${A:-x}/${B}", {"B": "b"}) == "x/b"


# --------------------------------------------------------------------------- the whole tree


_CREDENTIAL_RE = re.compile(
    r"""(?ix)
    (?P<key>[A-Za-z0-9_]*(?:password|passwd|token|secret)[A-Za-z0-9_]*)   # a key naming a secret
    ["']?\s*[:=]\s*                                                      # assigned
    (?P<quote>["']?)(?P<value>[A-Za-z0-9+/=_\-.~!@#%^&*]{16,})(?P=quote) # 16+ credential characters
    (?=\s|$|[,;)\]}])
    """
)


def credential_problems(path: str, text: str) -> list[str]:
    """Lines that assign what looks like a real credential to a PASSWORD/TOKEN/SECRET key."""
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        lowered = line.lower()
        if not any(word in lowered for word in ("password", "passwd", "token", "secret")):
            continue
        for match in _CREDENTIAL_RE.finditer(line):
            value = match.group("value")
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
                continue  # the name of an environment variable, not its value
            if path.endswith(".py") and not match.group("quote"):
                continue  # Python: an expression (a name or attribute), not a literal
            if match.group("key").endswith("_FILE") and value.startswith("/"):
                continue  # VAR_FILE: the path of the file holding the secret
            problems.append(f"{path}:{number}: {match.group('key')}")
    return problems


def test_the_credential_scan_finds_literal_credentials() -> None:
    value = "a1B2" * 5
    assert credential_problems(".env.example", "MES_" + "TOKEN=" + value)
    assert credential_problems("x.yml", "      token: " + value)
    assert credential_problems("x.py", "PASS" + "WORD = '" + value + "'")
    assert credential_problems("x.md", 'export INFLUX_TOKEN="' + value + '"')
    assert credential_problems("x.py", "PASSWORD_ENV = 'DOCKER_INFLUXDB_INIT_PASSWORD'") == []
    assert credential_problems("x.py", "password = settings.password_value_here") == []
    assert credential_problems("x.env", "MES_TOKEN=<set-a-long-random-token>") == []
    assert credential_problems("x.env", "MES_TOKEN=") == []
    assert credential_problems("x.yml", "token: $DOCKER_INFLUXDB_INIT_ADMIN_TOKEN") == []
    assert credential_problems("x.yml", "INFLUX_TOKEN_FILE: /run/secrets/influx/gateway.token") == []
    assert credential_problems("x.yml", "INFLUX_TOKEN_FILE: " + value)


def _tree_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name]


def test_no_literal_credentials_in_the_tree() -> None:
    files = _tree_files()
    mine = {".env.example", "docker-compose.yml", "Dockerfile", ".dockerignore", "tests/test_compose.py"}
    mine |= {
        "deploy/systemd/cmm-twin-gateway.env.example",
        "deploy/docker/influx-tokens.sh",
        "deploy/docker/entrypoint.sh",
    }
    mine |= {str(p.relative_to(ROOT)) for p in (DASHBOARD_FILE, DATASOURCE_FILE, PROVIDER_FILE)}
    assert mine <= set(files)
    problems: list[str] = []
    for name in files:
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()[:1_000_000]
        if b"\0" in data:
            continue  # binary
        problems += credential_problems(name, data.decode("utf-8", errors="replace"))
    assert problems == []


def test_env_is_git_ignored_and_kept_out_of_the_image() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env is not git-ignored"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".env"], cwd=ROOT, capture_output=True, check=False)
    assert tracked.returncode != 0, ".env is tracked"
    assert ".env" in {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
