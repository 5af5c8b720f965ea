"""Logins for catalogs whose assets need one: NASA Earthdata and DLR's EOC download service.

A catalog declares ``source.credentials`` (see :class:`CredentialsSpec`). The plan step calls
:func:`require_credentials`, which only checks that a login is configured and names the variable
or file to set when none is. The secret itself is read where a read needs it, in the process
that reads (a Dask worker, or the client for a plan-time header read), and reaches GDAL as
configuration options of one ``rasterio.Env`` around that read (:func:`credentials_env`). It
never enters ``ChipJob.gdal_options``, a chip record, a manifest or a log line.

Sources, first match wins:

- ``earthdata``: the environment variable ``EARTHDATA_TOKEN`` (an Earthdata Login user token,
  sent as ``Authorization: Bearer``), else a ``machine urs.earthdata.nasa.gov`` entry in the
  netrc file (``$NETRC``, default ``~/.netrc``), which curl uses for the Earthdata Login
  redirect, with a cookie file per process.
- ``dlr-eoc``: ``DLR_USERNAME`` and ``DLR_PASSWORD`` (HTTP Basic), else a ``machine
  download.geoservice.dlr.de`` entry in the netrc file.

Credentials go only to hrefs on the hosts the catalog lists (``source.credentials.hosts``, or
the kind's default hosts). curl 7.58 and later drops an ``Authorization`` header on a redirect
to another host, so a redirect does not carry the header further.
"""

from __future__ import annotations

import netrc
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.errors import ConfigError, ReadError

MASK = "***"


@dataclass(frozen=True)
class CredentialKind:
    """Lookup places of one kind of login, and the hosts that receive it by default."""

    name: str
    netrc_machine: str
    token_variable: str | None
    username_variable: str | None
    password_variable: str | None
    default_hosts: tuple[str, ...]
    registration: str


CREDENTIAL_KINDS: Mapping[str, CredentialKind] = {
    "earthdata": CredentialKind(
        name="earthdata",
        netrc_machine="urs.earthdata.nasa.gov",
        token_variable="EARTHDATA_TOKEN",
        username_variable=None,
        password_variable=None,
        default_hosts=("data.lpdaac.earthdatacloud.nasa.gov",),
        registration="register at https://urs.earthdata.nasa.gov and generate a user token "
        "under 'Generate Token'",
    ),
    "dlr-eoc": CredentialKind(
        name="dlr-eoc",
        netrc_machine="download.geoservice.dlr.de",
        token_variable=None,
        username_variable="DLR_USERNAME",
        password_variable="DLR_PASSWORD",
        default_hosts=("download.geoservice.dlr.de",),
        registration="register an EOC account at https://geoservice.dlr.de and accept the "
        "EnMAP licence",
    ),
}


class MissingCredentialsError(ConfigError):
    """A catalog needs a login and neither its environment variables nor netrc provide one."""


@dataclass(frozen=True)
class CredentialsSpec:
    """A catalog's ``source.credentials``: the kind of login and the hosts that receive it."""

    kind: str
    hosts: tuple[str, ...]

    @property
    def definition(self) -> CredentialKind:
        return CREDENTIAL_KINDS[self.kind]


def netrc_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return the netrc file that curl and requests read: ``$NETRC`` or ``~/.netrc``."""
    source = os.environ if environ is None else environ
    configured = source.get("NETRC")
    return Path(configured).expanduser() if configured else Path.home() / ".netrc"


def _netrc_login(path: Path, machine: str) -> tuple[str, str] | None:
    """Return (login, password) of ``machine`` in ``path``; None when absent or unreadable."""
    try:
        entry = netrc.netrc(str(path)).authenticators(machine)
    except (OSError, netrc.NetrcParseError):
        return None
    if entry is None or not entry[0] or not entry[2]:
        return None
    return entry[0], entry[2]


def _source_of(spec: CredentialsSpec, environ: Mapping[str, str]) -> str | None:
    """Name the configured source of a login (a variable or the netrc file), without its value."""
    kind = spec.definition
    if kind.token_variable and environ.get(kind.token_variable):
        return kind.token_variable
    user, password = kind.username_variable, kind.password_variable
    if user and password and environ.get(user) and environ.get(password):
        return f"{user} and {password}"
    path = netrc_path(environ)
    if _netrc_login(path, kind.netrc_machine) is not None:
        return f"netrc file {str(path)!r}"
    return None


def describe_setup(spec: CredentialsSpec, environ: Mapping[str, str] | None = None) -> str:
    """Say which variables or netrc entry provide a login of ``spec.kind``."""
    kind = spec.definition
    options = []
    if kind.token_variable:
        options.append(f"set {kind.token_variable}")
    if kind.username_variable and kind.password_variable:
        options.append(f"set {kind.username_variable} and {kind.password_variable}")
    path = netrc_path(os.environ if environ is None else environ)
    options.append(
        f"add 'machine {kind.netrc_machine} login USER password PASSWORD' to {str(path)!r} "
        "(the file NETRC names, default ~/.netrc)"
    )
    return " or ".join(options)


def require_credentials(
    spec: CredentialsSpec | None, *, catalog: str, environ: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`MissingCredentialsError` when ``spec`` needs a login that is not configured.

    Only presence is checked here. A wrong login is reported by the server at read time.
    """
    if spec is None:
        return
    source = os.environ if environ is None else environ
    if _source_of(spec, source) is not None:
        return
    kind = spec.definition
    raise MissingCredentialsError(
        f"catalog {catalog!r} needs a login (source.credentials {kind.name!r}) to read its "
        f"assets, and none is configured: {describe_setup(spec, source)}; to get one, "
        f"{kind.registration}. Dask workers on other machines need the same variable or file"
    )


def _host(href: str) -> str:
    path = href.removeprefix("/vsicurl/")
    return urlsplit(path).netloc.rpartition("@")[2].lower()


def _host_allowed(href: str, hosts: Sequence[str]) -> bool:
    host = _host(href)
    hostname = host.partition(":")[0]
    return bool(host) and any(allowed.lower() in (host, hostname) for allowed in hosts)


_COOKIE_FILES: dict[int, str] = {}


def _cookie_file() -> str:
    """Return a cookie file of this process, for the Earthdata Login redirect of netrc logins."""
    pid = os.getpid()
    path = _COOKIE_FILES.get(pid)
    if path is None:
        handle, path = tempfile.mkstemp(prefix="sensorcube-cookies-", suffix=".txt")
        os.close(handle)
        _COOKIE_FILES[pid] = path
    return path


def gdal_credential_options(
    spec: CredentialsSpec | None,
    hrefs: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return the GDAL options that send the login of ``spec`` with reads of ``hrefs``.

    The result is empty without ``spec``, or when an href is not on one of ``spec.hosts``.
    It contains the secret, so it must go to ``rasterio.Env`` only, never to a log or record.
    """
    if spec is None or not hrefs or not all(_host_allowed(href, spec.hosts) for href in hrefs):
        return {}
    source = os.environ if environ is None else environ
    kind = spec.definition
    if kind.token_variable and source.get(kind.token_variable):
        return {"GDAL_HTTP_HEADERS": f"Authorization: Bearer {source[kind.token_variable]}"}
    user, password = kind.username_variable, kind.password_variable
    if user and password and source.get(user) and source.get(password):
        return {
            "GDAL_HTTP_AUTH": "BASIC",
            "GDAL_HTTP_USERPWD": f"{source[user]}:{source[password]}",
        }
    path = netrc_path(source)
    if _netrc_login(path, kind.netrc_machine) is None:
        return {}
    cookies = _cookie_file()
    return {
        "GDAL_HTTP_NETRC": "YES",
        "GDAL_HTTP_NETRC_FILE": str(path),
        "GDAL_HTTP_COOKIEFILE": cookies,
        "GDAL_HTTP_COOKIEJAR": cookies,
    }


def _secret_values(options: Mapping[str, str]) -> list[str]:
    values = []
    header = options.get("GDAL_HTTP_HEADERS", "")
    if header.startswith("Authorization: Bearer "):
        values.append(header.removeprefix("Authorization: Bearer "))
    userpwd = options.get("GDAL_HTTP_USERPWD")
    if userpwd:
        values.extend([userpwd, userpwd.partition(":")[2]])
    return [value for value in values if value]


def redact(text: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of each secret in ``text`` by ***."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


@contextmanager
def credentials_env(spec: CredentialsSpec | None, hrefs: Sequence[str]) -> Iterator[None]:
    """Send the login of ``spec`` with GDAL reads of ``hrefs`` inside the block.

    A :class:`ReadError` raised inside whose message contains the secret is raised again with
    the secret masked and without the chained errors, so no message carries it further.
    """
    # Imported here so that loading a catalog (pipeline.config) does not import GDAL.
    from pipeline.gdal_io import gdal_config

    options = gdal_credential_options(spec, hrefs)
    if not options:
        yield
        return
    secrets = _secret_values(options)
    origin = _source_of(spec, os.environ) if spec is not None else None
    with gdal_config(options):
        try:
            yield
        except ReadError as error:
            # GDAL reports a rejected login as HTTP 401 or 403, or with some drivers only as a
            # file it cannot open, so the message names the login that the read sent.
            message = (
                f"{error}; the read sent the {spec.kind if spec else ''} login from {origin}, "
                "so if the server rejected it (HTTP 401 or 403), check that login"
            )
            if any(secret in message for secret in secrets):
                raise type(error)(redact(message, secrets)) from None
            raise type(error)(message) from error
