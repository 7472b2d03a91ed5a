"""Every export format read back by the program it is for: botocore's credential_process
and shared-credentials providers, JavaScript v3 fromProcess, bash and dash, jq, fish and
pwsh when installed, and the GitHub runner's $GITHUB_ENV rules; hostile values cannot
break out of any format's quoting."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.credentials import Credentials, format_expiration
from sidecar.core.errors import ExportError, SidecarError
from sidecar.outputs.exports import FORMATS, github_mask, render
from tests.peers import REPO, clean_aws_env, run_node

# Future expiry: the SDKs refuse (or re-run the process for) credentials about to expire.
EXPIRES = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
CREDS = Credentials(
    access_key_id="ASIAEXAMPLEEXAMPLE12",
    secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY+",
    session_token="IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJGMEQCIEXAMPLE==",
    expiration=EXPIRES,
    role_arn="arn:aws:iam::123456789012:role/deploy",
    assumed_role_arn="arn:aws:sts::123456789012:assumed-role/deploy/ci",
)
#: Everything a shell, a quote or a line format could trip on. STS never sends these.
HOSTILE = "q'uo\"te $(touch PWNED) `touch PWNED` $HOME ${X} \\ \\' %0A % ; | & # ! * ? ~ \u2019 "
HOSTILE_CREDS = replace(
    CREDS,
    access_key_id="'; touch PWNED; '",
    secret_access_key=HOSTILE,
    session_token=HOSTILE + "\nsecond line\r\nthird 'line'\n::add-mask::x\nAWS_X=1\n",
)
VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
)


def expected_variables(creds: Credentials) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": creds.access_key_id,
        "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
        "AWS_SESSION_TOKEN": creds.session_token,
        "AWS_CREDENTIAL_EXPIRATION": format_expiration(creds.expiration),
    }


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# botocore in a child process with nothing but the files we give it.
_BOTOCORE = """
import json, sys, botocore.session
creds = botocore.session.Session(profile=sys.argv[1]).get_credentials()
frozen = creds.get_frozen_credentials()
expiry = getattr(creds, "_expiry_time", None)
print(json.dumps({"method": creds.method, "access_key": frozen.access_key,
    "secret_key": frozen.secret_key, "token": frozen.token,
    "expiry": expiry.isoformat() if expiry else None, "account_id": frozen.account_id}))
"""


def botocore_credentials(profile: str, **env: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _BOTOCORE, profile],
        env=clean_aws_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def process_profile(tmp_path: Path, creds: Credentials) -> Path:
    """An AWS config file whose profile ``exp`` runs ``cat`` on the rendered output."""
    out = write(tmp_path, "process.json", render(creds, "process"))
    return write(tmp_path, "config", f"[profile exp]\ncredential_process = cat {out}\n")


def test_process_is_read_by_botocore_credential_process(tmp_path: Path) -> None:
    """botocore's credential_process provider takes every value, the expiry (so it
    refreshes by re-running the process) and the account id."""
    config = process_profile(tmp_path, CREDS)
    got = botocore_credentials("exp", AWS_CONFIG_FILE=str(config))
    assert got == {
        "method": "custom-process",
        "access_key": CREDS.access_key_id,
        "secret_key": CREDS.secret_access_key,
        "token": CREDS.session_token,
        "expiry": EXPIRES.isoformat(),
        "account_id": "123456789012",
    }


def test_process_keeps_hostile_values_intact_through_botocore(tmp_path: Path) -> None:
    """JSON carries quotes, dollars and line breaks through to botocore unchanged."""
    config = process_profile(tmp_path, HOSTILE_CREDS)
    got = botocore_credentials("exp", AWS_CONFIG_FILE=str(config))
    assert (got["access_key"], got["secret_key"], got["token"]) == (
        HOSTILE_CREDS.access_key_id,
        HOSTILE_CREDS.secret_access_key,
        HOSTILE_CREDS.session_token,
    )


def test_process_matches_the_aws_cli_shape() -> None:
    """The keys and order of `aws configure export-credentials --format process`, Version
    the number 1, Expiration in the Z form, plus AccountId."""
    body = json.loads(render(CREDS, "process"))
    assert list(body) == [
        "Version",
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
        "AccountId",
    ]
    assert body["Version"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["Expiration"])


def test_process_leaves_out_an_unknown_account() -> None:
    """Without an account in the ARNs there is no empty AccountId for an SDK to trust."""
    creds = replace(CREDS, role_arn="", assumed_role_arn="")
    assert "AccountId" not in json.loads(render(creds, "process"))


def test_process_is_read_by_javascript_v3_from_process(tmp_path: Path) -> None:
    """The AWS SDK for JavaScript v3's fromProcess accepts the output, expiry included."""
    js = REPO / "tests" / "js"
    if shutil.which("node") is None or not (js / "node_modules" / "@aws-sdk").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI must install tests/js (npm ci) for the JavaScript SDK tests")
        pytest.skip("JavaScript SDK not installed: run `npm ci` in tests/js")
    config = process_profile(tmp_path, CREDS)
    got = run_node(
        js / "from-process.mjs", clean_aws_env(AWS_CONFIG_FILE=str(config), PROFILE="exp")
    )
    assert got == {
        "ok": True,
        "accessKeyId": CREDS.access_key_id,
        "secretAccessKey": CREDS.secret_access_key,
        "sessionToken": CREDS.session_token,
        "expiration": EXPIRES.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "accountId": "123456789012",
    }


def run_shell(shell: str, script: str, tmp_path: Path) -> bytes:
    result = subprocess.run(
        [shell, "-c", script],
        cwd=tmp_path,
        env=clean_aws_env(),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "PWNED").exists(), "a value was executed"
    return result.stdout


@pytest.mark.parametrize("shell", ["bash", "sh"])
@pytest.mark.parametrize("creds", [CREDS, HOSTILE_CREDS], ids=["sts", "hostile"])
def test_env_is_exported_by_eval_in_a_posix_shell(
    shell: str, creds: Credentials, tmp_path: Path
) -> None:
    """`eval` of the env output exports exactly each value, even hostile ones, in bash and
    in dash (sh); nothing in a value runs."""
    write(tmp_path, "out", render(creds, "env"))
    out = run_shell(shell, 'eval "$(cat out)"; exec printenv -0', tmp_path)
    environment = dict(
        entry.split("=", 1) for entry in out.decode().split("\0") if entry.startswith("AWS_")
    )
    for name, value in expected_variables(creds).items():
        assert environment[name] == value, name


@pytest.mark.parametrize("shell", ["bash", "sh"])
@pytest.mark.parametrize("creds", [CREDS, HOSTILE_CREDS], ids=["sts", "hostile"])
def test_env_no_export_sets_shell_variables_only(
    shell: str, creds: Credentials, tmp_path: Path
) -> None:
    """env-no-export sets each variable in the shell exactly, and exports none of them."""
    write(tmp_path, "out", render(creds, "env-no-export"))
    names = " ".join(f'"${name}"' for name in VARIABLES)
    out = run_shell(
        shell, f"eval \"$(cat out)\"; printf '%s\\0' {names}; printenv -0 || true", tmp_path
    )
    values = out.decode().split("\0")
    assert values[:4] == list(expected_variables(creds).values())
    assert not any(entry.startswith(VARIABLES) for entry in values[4:])


def test_env_lines_match_the_aws_cli_for_sts_values() -> None:
    """For real STS values the lines are exactly the AWS CLI's (no quoting needed)."""
    assert render(CREDS, "env").splitlines() == [
        f"export {name}={value}" for name, value in expected_variables(CREDS).items()
    ]


@pytest.mark.parametrize("creds", [CREDS, HOSTILE_CREDS], ids=["sts", "hostile"])
def test_fish_sets_each_value(creds: Credentials, tmp_path: Path) -> None:
    """`source` in fish sets and exports each value exactly (skipped without fish)."""
    fish = shutil.which("fish")
    if fish is None:
        pytest.skip("fish is not installed on this machine")
    write(tmp_path, "out", render(creds, "fish"))
    names = " ".join(f'"${name}"' for name in VARIABLES)
    out = run_shell(fish, f"source out; printf '%s\\0' {names}", tmp_path)
    assert out.decode().split("\0")[:4] == list(expected_variables(creds).values())


@pytest.mark.parametrize("creds", [CREDS, HOSTILE_CREDS], ids=["sts", "hostile"])
def test_powershell_sets_each_value(creds: Credentials, tmp_path: Path) -> None:
    """Dot-sourcing the output in pwsh sets each $Env: value exactly (skipped without pwsh)."""
    pwsh = shutil.which("pwsh")
    if pwsh is None:
        pytest.skip("PowerShell (pwsh) is not installed on this machine")
    write(tmp_path, "out.ps1", render(creds, "powershell"))
    script = ". ./out.ps1; " + "; ".join(
        f"[Console]::Out.Write($Env:{name} + [char]0)" for name in VARIABLES
    )
    result = subprocess.run(
        [pwsh, "-NoProfile", "-NonInteractive", "-Command", script],
        cwd=tmp_path,
        env=clean_aws_env(),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\0")[:4] == list(expected_variables(creds).values())


def _single_quoted(line: str, prefix: str, unescape: dict[str, str], closing: str) -> str:
    """The value of ``prefix'...'`` read by the documented single-quote rule of a shell:
    ``unescape`` maps each escape to its character; anything else ends at ``closing``."""
    assert line.startswith(prefix + "'")
    value, i = [], len(prefix) + 1
    while True:
        pair = line[i : i + 2]
        if pair in unescape:
            value.append(unescape[pair])
            i += 2
        elif line[i] in closing:
            assert i == len(line) - 1, "text after the closing quote would run"
            return "".join(value)
        else:
            value.append(line[i])
            i += 1


def _statements(text: str, start: str) -> list[str]:
    """Join continuation lines (inside quotes) to the statement that began them."""
    out: list[str] = []
    for line in text.split("\n")[:-1]:
        if line.startswith(start):
            out.append(line)
        else:
            out[-1] += "\n" + line
    return out


@pytest.mark.parametrize("creds", [CREDS, HOSTILE_CREDS], ids=["sts", "hostile"])
def test_fish_and_powershell_quoting_rules_keep_each_value_in_its_quotes(
    creds: Credentials,
) -> None:
    """Where fish and pwsh are not installed: read by each shell's documented rule (fish:
    only \\\\ and \\' are escapes; PowerShell: a doubled quote character, ASCII or curly,
    is one), every value stays inside one statement and comes back exactly."""
    expected = expected_variables(creds)
    fish = _statements(render(creds, "fish"), "set -gx ")
    assert [
        _single_quoted(line, f"set -gx {name} ", {"\\\\": "\\", "\\'": "'"}, "'")
        for line, name in zip(fish, VARIABLES, strict=True)
    ] == list(expected.values())
    quotes = "'\u2018\u2019\u201a\u201b"
    doubled = {a + b: b for a in quotes for b in quotes}
    pwsh = _statements(render(creds, "powershell"), "$Env:")
    assert [
        _single_quoted(line, f"$Env:{name}=", doubled, quotes)
        for line, name in zip(pwsh, VARIABLES, strict=True)
    ] == list(expected.values())


def parse_github_env(text: str) -> dict[str, str]:
    """$GITHUB_ENV read as the runner reads it (actions/runner, SetEnvFileCommand, Linux):
    lines split at LF; ``NAME=value`` when "=" comes before any "<<"; else ``NAME<<DELIM``
    and the value is every line up to the first line equal to DELIM, joined with LF."""
    env: dict[str, str] = {}
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            name, value = line.split("=", 1)
            assert name, "empty name"
            env[name] = value
        elif heredoc >= 0:
            name, delimiter = line.split("<<", 1)
            assert name and delimiter
            value_lines = []
            while lines[i] != delimiter:  # IndexError: the runner's "delimiter not found"
                value_lines.append(lines[i])
                i += 1
            i += 1
            env[name] = "\n".join(value_lines)
        else:
            raise AssertionError(f"invalid line {line!r}")
    return env


@pytest.mark.parametrize("creds", [CREDS, HOSTILE_CREDS], ids=["sts", "hostile"])
def test_github_env_is_read_as_the_runner_reads_it(creds: Credentials) -> None:
    """Each variable comes back exactly, multi-line values through a random heredoc
    delimiter; nothing in a value adds a variable."""
    assert parse_github_env(render(creds, "github-env")) == expected_variables(creds)


def test_github_env_uses_plain_lines_for_sts_values() -> None:
    """One-line values use the simple NAME=value form."""
    assert render(CREDS, "github-env").splitlines() == [
        f"{name}={value}" for name, value in expected_variables(CREDS).items()
    ]


def test_github_env_delimiter_is_random_per_value() -> None:
    """A heredoc delimiter cannot be predicted (and so planted in a value)."""
    first, second = (render(HOSTILE_CREDS, "github-env") for _ in range(2))
    delimiters = re.findall(r"<<(.+)", first + second)
    assert len(delimiters) == len(set(delimiters)) == 2
    assert all(re.fullmatch(r"ghadelimiter_[0-9a-f]{32}", d) for d in delimiters)


def _unescape_command_data(data: str) -> str:
    # The runner's order (ActionCommand.UnescapeData).
    return data.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


@pytest.mark.parametrize("creds", [CREDS, HOSTILE_CREDS], ids=["sts", "hostile"])
def test_github_mask_registers_each_secret_on_its_own_line(creds: Credentials) -> None:
    """One ::add-mask:: line per credential value, escaped as workflow commands are, so
    the runner masks the exact value and a value cannot start another command."""
    lines = github_mask(creds).splitlines()
    assert all(line.startswith("::add-mask::") for line in lines)
    masked = [_unescape_command_data(line.removeprefix("::add-mask::")) for line in lines]
    assert masked == [creds.access_key_id, creds.secret_access_key, creds.session_token]


def test_json_is_read_by_jq(tmp_path: Path) -> None:
    """jq picks each value out of the json format by the STS key names."""
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed on this machine")
    out = write(tmp_path, "out.json", render(HOSTILE_CREDS, "json"))
    result = subprocess.run(
        [
            jq,
            "-j",
            "[.AccessKeyId, .SecretAccessKey, .SessionToken, .Expiration, .AccountId,"
            ' .RoleArn, .AssumedRoleArn] | join("\\u0000")',
            str(out),
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.decode().split("\0") == [
        *expected_variables(HOSTILE_CREDS).values(),
        "123456789012",
        HOSTILE_CREDS.role_arn,
        HOSTILE_CREDS.assumed_role_arn,
    ]


def test_ini_profile_is_read_by_botocore_shared_credentials(tmp_path: Path) -> None:
    """botocore's shared-credentials provider reads the named profile from the ini output."""
    text = render(CREDS, "ini", profile="ci-deploy")
    assert text.startswith("[ci-deploy]\n")
    path = write(tmp_path, "credentials", "[other]\naws_access_key_id = OTHER\n\n" + text)
    got = botocore_credentials("ci-deploy", AWS_SHARED_CREDENTIALS_FILE=str(path))
    assert (got["method"], got["access_key"], got["secret_key"], got["token"]) == (
        "shared-credentials-file",
        CREDS.access_key_id,
        CREDS.secret_access_key,
        CREDS.session_token,
    )


def test_ini_keeps_quotes_and_dollars_verbatim(tmp_path: Path) -> None:
    """Characters that mean something elsewhere ('"$%;#[]=) reach botocore unchanged."""
    creds = replace(CREDS, secret_access_key="a'b\"c$d%e;f#g[h]i=j k")
    path = write(tmp_path, "credentials", render(creds, "ini"))
    got = botocore_credentials("default", AWS_SHARED_CREDENTIALS_FILE=str(path))
    assert got["secret_key"] == creds.secret_access_key


@pytest.mark.parametrize("value", ["two\nlines", "cr\rhere", " padded", "nul\x00"])
def test_ini_refuses_a_value_it_cannot_hold(value: str) -> None:
    """A value an ini file would cut, join or strip is refused, and the error never
    shows the value."""
    with pytest.raises(ExportError, match="aws_session_token") as caught:
        render(replace(CREDS, session_token=f"{value}-hunter2"), "ini")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - {"process", "json", "ini"}))
def test_shell_formats_refuse_a_nul(fmt: str) -> None:
    """No environment can carry a NUL: refused without showing the value."""
    with pytest.raises(ExportError, match="AWS_SECRET_ACCESS_KEY") as caught:
        render(replace(CREDS, secret_access_key="hunter2\x00"), fmt)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("profile", ["", "a]b", "[x", "a b", "x\ny", "-lead", "a" * 129])
def test_a_bad_profile_name_is_refused(profile: str) -> None:
    """A profile name that could end or forge an ini header is refused with the rule."""
    with pytest.raises(ExportError, match="letters, digits"):
        render(CREDS, "ini", profile=profile)


def test_an_unknown_format_lists_the_known_ones() -> None:
    """The error names the bad format and every valid one."""
    with pytest.raises(ExportError, match=r"'yaml'.*process, env, env-no-export") as caught:
        render(CREDS, "yaml")
    assert isinstance(caught.value, SidecarError)


def test_every_format_is_described_and_ends_with_a_newline() -> None:
    """The registry gives --help a description for each format; each output is whole lines."""
    assert set(FORMATS) == {
        "process",
        "env",
        "env-no-export",
        "json",
        "powershell",
        "fish",
        "github-env",
        "ini",
    }
    for name, spec in FORMATS.items():
        assert spec.name == name and spec.description
        assert render(CREDS, name).endswith("\n")
