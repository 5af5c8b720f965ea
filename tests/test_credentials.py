"""Logins of catalogs (source.credentials): validation, lookup, and the GDAL options of a read.

A netrc login is checked end to end against a file server on 127.0.0.1 that wants HTTP Basic:
curl finds the login in the netrc file that NETRC names, for the host it connects to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from pipeline.config import catalog_to_json, load_catalog
from pipeline.credentials import (
    CredentialsSpec,
    MissingCredentialsError,
    credentials_env,
    gdal_credential_options,
    require_credentials,
)
from pipeline.errors import ConfigError, ReadError
from pipeline.gdal_io import DEFAULT_GDAL_OPTIONS, warp_to_grid
from tests.auth_server import basic_authorization, serve_with_auth

REPO_ROOT = Path(__file__).resolve().parents[1]
EARTHDATA = CredentialsSpec("earthdata", ("data.lpdaac.earthdatacloud.nasa.gov",))
DLR_LOCAL = CredentialsSpec("dlr-eoc", ("127.0.0.1",))
PASSWORD = "Netrc-Passw0rd-3e8f21"
GDAL_OPTIONS = {**DEFAULT_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY": 0}


def write_netrc(path: Path, *machines: str, password: str = PASSWORD) -> Path:
    lines = [f"machine {machine} login sensorcube password {password}" for machine in machines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_missing_login_names_variable_and_netrc(tmp_path: Path) -> None:
    environ = {"NETRC": str(tmp_path / "netrc")}

    with pytest.raises(MissingCredentialsError) as raised:
        require_credentials(EARTHDATA, catalog="emit-cmr", environ=environ)

    message = str(raised.value)
    assert "catalog 'emit-cmr' needs a login (source.credentials 'earthdata')" in message
    assert (
        "set EARTHDATA_TOKEN or add 'machine urs.earthdata.nasa.gov login USER password " in message
    )
    assert str(tmp_path / "netrc") in message
    assert "https://urs.earthdata.nasa.gov" in message


@pytest.mark.parametrize(
    "environ",
    [{"EARTHDATA_TOKEN": "t"}, "netrc"],
    ids=["token", "netrc"],
)
def test_configured_login_passes_check(tmp_path: Path, environ: Any) -> None:
    if environ == "netrc":
        environ = {"NETRC": str(write_netrc(tmp_path / "netrc", "urs.earthdata.nasa.gov"))}
    else:
        environ = {**environ, "NETRC": str(tmp_path / "absent")}

    require_credentials(EARTHDATA, catalog="emit-cmr", environ=environ)


def test_netrc_of_another_machine_is_not_a_login(tmp_path: Path) -> None:
    environ = {"NETRC": str(write_netrc(tmp_path / "netrc", "example.org"))}

    with pytest.raises(MissingCredentialsError):
        require_credentials(EARTHDATA, catalog="emit-cmr", environ=environ)


def test_options_only_for_listed_hosts(tmp_path: Path) -> None:
    environ = {"EARTHDATA_TOKEN": "abc", "NETRC": str(tmp_path / "absent")}
    listed = "https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/x.nc"

    assert gdal_credential_options(EARTHDATA, [listed], environ) == {
        "GDAL_HTTP_HEADERS": "Authorization: Bearer abc"
    }
    assert gdal_credential_options(EARTHDATA, ["https://example.org/x.nc"], environ) == {}
    assert gdal_credential_options(EARTHDATA, [listed, "/data/local.tif"], environ) == {}
    assert gdal_credential_options(None, [listed], environ) == {}


def test_basic_and_netrc_options(tmp_path: Path) -> None:
    href = "http://127.0.0.1:8000/tile.tif"
    basic = {"DLR_USERNAME": "u", "DLR_PASSWORD": "p", "NETRC": str(tmp_path / "absent")}
    netrc_file = write_netrc(tmp_path / "netrc", "download.geoservice.dlr.de")

    assert gdal_credential_options(DLR_LOCAL, [href], basic) == {
        "GDAL_HTTP_AUTH": "BASIC",
        "GDAL_HTTP_USERPWD": "u:p",
    }
    options = gdal_credential_options(DLR_LOCAL, [href], {"NETRC": str(netrc_file)})
    assert options["GDAL_HTTP_NETRC_FILE"] == str(netrc_file)
    assert options["GDAL_HTTP_COOKIEJAR"] == options["GDAL_HTTP_COOKIEFILE"]


def _write_tile(path: Path) -> np.ndarray:
    values = np.arange(64, dtype=np.float32).reshape(8, 8)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": 8,
        "height": 8,
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": from_origin(400000.0, 5000080.0, 10.0, 10.0),
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(values, 1)
    return values


def _read(href: str) -> np.ndarray:
    return warp_to_grid(
        href,
        crs="EPSG:32633",
        transform=(10.0, 0.0, 400000.0, 0.0, -10.0, 5000080.0),
        shape=(8, 8),
        resampling="nearest",
        indexes=[1],
        src_nodata=None,
        gdal_options=GDAL_OPTIONS,
    )[0]


def test_netrc_login_reaches_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    values = _write_tile(tmp_path / "tile.tif")
    # The check looks for the kind's machine; curl looks up the host it connects to.
    netrc_file = write_netrc(tmp_path / "netrc", "download.geoservice.dlr.de", "127.0.0.1")
    monkeypatch.setenv("NETRC", str(netrc_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("DLR_USERNAME", raising=False)
    monkeypatch.delenv("DLR_PASSWORD", raising=False)
    caplog.set_level(logging.DEBUG)

    with serve_with_auth(tmp_path, [basic_authorization("sensorcube", PASSWORD)]) as server:
        require_credentials(DLR_LOCAL, catalog="enmap-dlr")
        with credentials_env(DLR_LOCAL, [f"{server.url}/tile.tif"]):
            read = _read(f"{server.url}/tile.tif")

    np.testing.assert_array_equal(read, values)
    assert server.rejected == 0
    assert PASSWORD not in caplog.text


def test_rejected_login_names_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_tile(tmp_path / "tile.tif")
    monkeypatch.setenv("DLR_USERNAME", "sensorcube")
    monkeypatch.setenv("DLR_PASSWORD", "Wrong-" + PASSWORD)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    with serve_with_auth(tmp_path, [basic_authorization("sensorcube", PASSWORD)]) as server:
        href = f"{server.url}/tile.tif"
        with pytest.raises(ReadError) as raised, credentials_env(DLR_LOCAL, [href]):
            _read(href)

    message = str(raised.value)
    assert "HTTP response code: 401" in message
    assert "the read sent the dlr-eoc login from DLR_USERNAME and DLR_PASSWORD" in message
    assert PASSWORD not in message


def _catalog_with_source(tmp_path: Path, **source: Any) -> Path:
    data = yaml.safe_load((REPO_ROOT / "catalogs/emit-cmr.yaml").read_text("utf-8"))
    data["source"].update(source)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_credentials_stay_out_of_config_hash(tmp_path: Path) -> None:
    shipped = load_catalog(REPO_ROOT / "catalogs/emit-cmr.yaml")
    local = load_catalog(
        _catalog_with_source(tmp_path, credentials={"kind": "earthdata", "hosts": ["127.0.0.1"]})
    )

    assert local.source("hsi").credentials == CredentialsSpec("earthdata", ("127.0.0.1",))
    assert catalog_to_json(local) == catalog_to_json(shipped)
    assert "credentials" not in str(catalog_to_json(shipped))


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ("aws", r"invalid source\.credentials 'aws'; choose one of \['earthdata', 'dlr-eoc'\]"),
        ({"kind": "earthdata", "user": "x"}, r"unknown key 'source\.credentials\.user'"),
    ],
    ids=["unknown-kind", "unknown-key"],
)
def test_invalid_credentials_rejected(tmp_path: Path, credentials: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_catalog(_catalog_with_source(tmp_path, credentials=credentials))


def test_credentials_rejected_for_sentinel_modalities(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO_ROOT / "catalogs/earth-search.yaml").read_text("utf-8"))
    data["source"]["credentials"] = "earthdata"
    path = tmp_path / "earth-search.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    with pytest.raises(
        ConfigError, match=r"source\.credentials applies to the hsi and vhr modalities only"
    ):
        load_catalog(path)


def test_hsi_format_validated(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO_ROOT / "catalogs/emit-cmr.yaml").read_text("utf-8"))
    data["modalities"]["hsi"]["format"] = "envi"
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    with pytest.raises(ConfigError, match=r"invalid modalities\.hsi\.format 'envi'"):
        load_catalog(path)
