"""Region specs and catalog YAMLs: loading and validation at the edge.

Everything downstream works on the frozen dataclasses defined here. Unknown keys are rejected,
and every error names the file, the key and what would be valid.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import shapely
import shapely.geometry
import yaml

from pipeline.credentials import CREDENTIAL_KINDS, CredentialsSpec
from pipeline.errors import ConfigError

MODALITIES = ("s2", "s1", "dem", "coherence", "hsi", "vhr")
DERIVED_LAYERS = ("ndvi", "slope", "aspect")
SPLIT_NAMES = ("train", "val", "test")
ORBIT_STATES = ("any", "ascending", "descending")
COVERAGE_RULES = ("within", "intersects")
RESAMPLING_METHODS = ("nearest", "bilinear", "cubic", "average", "mode")
SOURCE_KINDS = (
    "stac-api",
    "stac-static",
    "stac-geoparquet",
    "bigearthnet-sample",
    "raster-files",
)
COHERENCE_KINDS = ("product", "slc")
COREGISTRATION_ACTIONS = ("record", "apply", "drop")
# "dn": uncalibrated digital numbers. A catalog may declare them honestly, but no region may read
# them, because they are not backscatter (see _check_s1_calibrated).
S1_UNITS = ("dB", "linear", "dn")
S1_QUANTITIES = ("sigma0", "gamma0", "beta0")
S1_PRODUCTS = ("GRD", "RTC")
# Methods of signing the asset hrefs of a STAC API before a read (source.signing).
SIGNING_METHODS = ("planetary-computer",)
# File formats of hyperspectral assets: GeoTIFFs on a map grid (EnMAP), or EMIT NetCDF swaths
# with a geometry lookup table (modalities.hsi.format).
HSI_FORMATS = ("geotiff", "emit-netcdf")
DEFAULT_CHIP_SIZE = 264
DEFAULT_RESOLUTION_M = 10.0
DEFAULT_HSI_RESOLUTION_M = 30.0
DEFAULT_VHR_RESOLUTION_M = 2.5
VHR_UNITS = ("dn", "reflectance")
# A polygon wider than this is almost always one that crosses the antimeridian, drawn the long
# way round. Regions that wide are given as several polygons.
MAX_POLYGON_LON_SPAN_DEG = 180.0


# ----------------------------------------------------------------------------------------------
# Catalog YAML


@dataclass(frozen=True)
class BandSpec:
    """One sensorcube band and the catalog asset it is read from."""

    name: str
    asset: str
    resampling: str
    index: int = 1  # band of a multi-band asset, counted from 1


@dataclass(frozen=True)
class S2Radiometry:
    """Rule turning Sentinel-2 digital numbers into surface reflectance.

    ``offset`` is ``"baseline"`` to decide the additive offset per item (declared
    ``raster:bands`` offset when the item has one, else -1000 DN for processing baseline 04.00
    and later, else none) or a number of DN applied to every item.
    """

    scale: float
    offset: str | float


@dataclass(frozen=True)
class S1Radiometry:
    """Units, quantity and product type of a catalog's Sentinel-1 rasters."""

    units: str
    quantity: str
    product: str
    terrain_flattening: bool


@dataclass(frozen=True)
class DemRadiometry:
    """Units and vertical datum of a catalog's elevation rasters."""

    units: str
    vertical_datum: str


@dataclass(frozen=True)
class CoherenceRadiometry:
    """Kind of a catalog's coherence items.

    ``product``: coherence rasters of one pair each, with both acquisition times. ``slc``:
    co-registered single-look complex rasters of one date each, from which sensorcube estimates
    the coherence of consecutive acquisitions.
    """

    kind: str


@dataclass(frozen=True)
class HsiRadiometry:
    """Scale from stored values to reflectance of a catalog's hyperspectral rasters."""

    scale: float


@dataclass(frozen=True)
class VhrRadiometry:
    """Units of a catalog's very-high-resolution images and the scale to those units.

    ``dn`` keeps the digital numbers of uncalibrated aerial imagery such as NAIP, times
    ``scale``. ``reflectance`` multiplies stored values by ``scale`` to get reflectance.
    """

    units: str
    scale: float


@dataclass(frozen=True)
class MaskSpec:
    """Source of the clear and valid fraction of a Sentinel-2 chip: SCL classes or nodata."""

    kind: str  # "scl" or "nodata"
    asset: str | None = None
    clear_classes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModalitySource:
    """One modality of a catalog: collection, band mapping, nodata and radiometry."""

    modality: str
    collection: str
    bands: tuple[BandSpec, ...]
    nodata: float | None
    s2: S2Radiometry | None = None
    s1: S1Radiometry | None = None
    mask: MaskSpec | None = None
    dem: DemRadiometry | None = None
    coherence: CoherenceRadiometry | None = None
    hsi: HsiRadiometry | None = None
    vhr: VhrRadiometry | None = None
    # Local raster files (source kind raster-files): a glob pattern, and the datetime of files
    # whose tags carry none (for example a DEM mosaic).
    files: str | None = None
    datetime: str | None = None
    datetime_pattern: str | None = None  # regular expression whose group 1 is a file name's date
    # The catalog's source.signing: hrefs are signed on the worker just before a read, and the
    # item dicts everywhere else keep the unsigned hrefs.
    signing: str | None = None
    # The catalog's source.credentials: the login sent with asset reads, looked up where a read
    # runs (pipeline.credentials). Like signing, it stays out of the config hash.
    credentials: CredentialsSpec | None = None
    format: str = "geotiff"  # modalities.hsi.format, one of HSI_FORMATS

    def band(self, name: str) -> BandSpec:
        for band in self.bands:
            if band.name == name:
                return band
        raise KeyError(name)


@dataclass(frozen=True)
class CatalogSpec:
    """A catalog YAML: where items come from and how each modality is read."""

    name: str
    path: str
    kind: str
    url: str | None
    href: str | None
    licence: str
    modalities: Mapping[str, ModalitySource]
    href_as_written: str | None = None

    def source(self, modality: str) -> ModalitySource:
        try:
            return self.modalities[modality]
        except KeyError:
            raise ConfigError(
                f"catalog {self.name!r} ({self.path}) has no modality {modality!r}; "
                f"it provides {sorted(self.modalities)}"
            ) from None


# ----------------------------------------------------------------------------------------------
# Region spec


@dataclass(frozen=True)
class GridSpec:
    """Chip lattice parameters: chip size in pixels and base resolution in metres."""

    chip_size: int
    resolution_m: float
    coverage: str

    @property
    def chip_extent_m(self) -> float:
        return self.chip_size * self.resolution_m


@dataclass(frozen=True)
class S2Selection:
    """Sentinel-2 selection rule per chip."""

    catalog: str
    bands: tuple[str, ...]
    min_clear_fraction: float
    max_cloud_cover: float
    max_candidates: int


@dataclass(frozen=True)
class CoregistrationSpec:
    """Co-registration policy of one modality against a Sentinel-2 reference band.

    ``band`` is the modality's band measured (a polarization for s1, a wavelength in nm for
    hsi). ``action`` is ``record``, ``apply`` (shift when confident and below the limit) or
    ``drop`` (skip the chip when a confident shift exceeds the limit).
    """

    action: str
    max_shift_px: float
    min_confidence: float
    reference_band: str
    band: str


@dataclass(frozen=True)
class S1Selection:
    """Sentinel-1 pairing rule: nearest in time to the chosen Sentinel-2 item."""

    catalog: str
    bands: tuple[str, ...]
    max_time_gap_days: float
    orbit_state: str
    min_valid_fraction: float
    max_candidates: int
    coregistration: CoregistrationSpec | None = None


@dataclass(frozen=True)
class DemSelection:
    """Elevation from one catalog; static, so no time rule."""

    catalog: str
    bands: tuple[str, ...] = ("dem",)


@dataclass(frozen=True)
class CoherenceSelection:
    """Coherence: the pair bracketing, or else nearest, the reference time.

    ``looks`` is the estimator window (rows, columns) used when coherence is estimated from
    complex rasters.
    """

    catalog: str
    max_time_gap_days: float
    looks: tuple[int, int] = (3, 3)
    bands: tuple[str, ...] = ("coherence",)


@dataclass(frozen=True)
class HsiSelection:
    """Hyperspectral scenes on their own lattice nesting in the base one, nearest in time."""

    catalog: str
    resolution_m: float
    max_time_gap_days: float
    min_valid_fraction: float
    coregistration: CoregistrationSpec | None = None
    bands: tuple[str, ...] = ("reflectance",)

    def factor(self, base_resolution_m: float) -> int:
        """Base pixels per hyperspectral pixel along one axis."""
        return round(self.resolution_m / base_resolution_m)


@dataclass(frozen=True)
class VhrSelection:
    """Very-high-resolution images on a finer lattice nested in the base one, nearest in time.

    Aerial surveys are years apart, so ``max_time_gap_days`` has its own, wide default.
    """

    catalog: str
    bands: tuple[str, ...]
    resolution_m: float
    max_time_gap_days: float
    min_valid_fraction: float

    def upsample(self, base_resolution_m: float) -> int:
        """VHR pixels per base pixel along one axis."""
        return round(base_resolution_m / self.resolution_m)


Selection = (
    S2Selection | S1Selection | DemSelection | CoherenceSelection | HsiSelection | VhrSelection
)


@dataclass(frozen=True)
class SplitSpec:
    """Spatial-block split policy."""

    fractions: Mapping[str, float]
    block_size: int
    buffer_m: float
    seed: int


@dataclass(frozen=True)
class RegionSpec:
    """A validated region spec (``splits/<region>/region.yaml``)."""

    name: str
    path: str
    description: str
    aoi: shapely.Geometry
    start: dt.datetime
    end: dt.datetime
    grid: GridSpec
    s2: S2Selection | None
    s1: S1Selection | None
    derived: tuple[str, ...]
    split: SplitSpec
    raw: Mapping[str, Any] = field(repr=False, compare=False, hash=False)
    dem: DemSelection | None = None
    coherence: CoherenceSelection | None = None
    hsi: HsiSelection | None = None
    vhr: VhrSelection | None = None

    def selections(self) -> dict[str, Selection]:
        """Return the requested modalities and their rules, in store order."""
        present: dict[str, Selection | None] = {
            "s2": self.s2,
            "s1": self.s1,
            "dem": self.dem,
            "coherence": self.coherence,
            "hsi": self.hsi,
            "vhr": self.vhr,
        }
        return {name: rule for name, rule in present.items() if rule is not None}

    @property
    def reference_time(self) -> dt.datetime:
        """Time that coherence and hyperspectral pairing use when a chip has no Sentinel-2."""
        return self.start + (self.end - self.start) / 2

    def config_hash(self, catalogs: Mapping[str, CatalogSpec]) -> str:
        """Hash the region spec and the catalog specs it uses, as canonical JSON."""
        # The description is free text; it decides nothing about the output.
        region = {key: value for key, value in self.raw.items() if key != "description"}
        payload = {
            "region": region,
            "catalogs": {name: catalog_to_json(spec) for name, spec in sorted(catalogs.items())},
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Validation helpers


class _Section:
    """A mapping being validated, with the file and key path used in messages."""

    def __init__(self, data: object, where: str, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: {where or 'the file'} must be a mapping, got {data!r}")
        self.data: Mapping[str, Any] = data
        self.where = where
        self.path = path

    def key_name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def reject_unknown(self, allowed: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in allowed:
                raise ConfigError(
                    f"{self.path}: unknown key {self.key_name(str(key))!r}; "
                    f"valid keys here are {list(allowed)}"
                )

    def get(self, key: str, default: Any = ...) -> Any:
        if key in self.data:
            return self.data[key]
        if default is ...:
            raise ConfigError(f"{self.path}: missing required key {self.key_name(key)!r}")
        return default

    def section(self, key: str, default: Any = ...) -> _Section:
        value = self.get(key, default)
        return _Section(value, self.key_name(key), self.path)

    def string(self, key: str, default: Any = ...) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{self.path}: {self.key_name(key)} must be a non-empty string, got {value!r}"
            )
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, default)
        if value not in choices:
            raise ConfigError(
                f"{self.path}: invalid {self.key_name(key)} {value!r}; "
                f"choose one of {list(choices)}"
            )
        return str(value)

    def number(
        self, key: str, default: Any = ..., *, low: float | None = None, high: float | None = None
    ) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.path}: {self.key_name(key)} must be a number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(
                f"{self.path}: {self.key_name(key)} is {value!r}; it must be within "
                f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            )
        return float(value)

    def integer(self, key: str, default: Any = ..., *, low: int = 1) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(
                f"{self.path}: {self.key_name(key)} must be an integer >= {low}, got {value!r}"
            )
        return value

    def boolean(self, key: str, default: Any = ...) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(
                f"{self.path}: {self.key_name(key)} must be true or false, got {value!r}"
            )
        return value

    def string_list(self, key: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{self.path}: {self.key_name(key)} must be a non-empty list of strings, "
                f"got {value!r}"
            )
        if len(set(value)) != len(value):
            raise ConfigError(f"{self.path}: {self.key_name(key)} lists a name twice: {value!r}")
        for item in value:
            if choices is not None and item not in choices:
                raise ConfigError(
                    f"{self.path}: unknown name {item!r} in {self.key_name(key)}; "
                    f"valid names are {list(choices)}"
                )
        return tuple(value)


def _description(root: _Section) -> str:
    """The optional free-text description; when present it must be a string."""
    if "description" not in root.data:
        return ""
    return root.string("description")


def read_yaml(path: Path, what: str) -> Mapping[str, Any]:
    """Read a YAML mapping, turning I/O and syntax errors into :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {str(path)!r}; check the name or path") from None
    except OSError as error:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {error}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: malformed YAML in {what}: {error}") from error
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: {what} must be a YAML mapping, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------
# Catalog loading


def load_catalog(path: Path) -> CatalogSpec:
    """Load and validate a catalog YAML."""
    root = _Section(read_yaml(path, "catalog file"), "", str(path))
    root.reject_unknown(("name", "description", "source", "licence", "modalities"))
    name = root.string("name")
    _description(root)  # free text, validated for type only

    source = root.section("source")
    source.reject_unknown(("kind", "url", "href", "signing", "credentials"))
    # raster-files catalogs name their files per modality (modalities.<name>.files).
    kind = source.choice("kind", SOURCE_KINDS)
    signing = _load_signing(source, kind)
    credentials = _load_credentials(source)
    url = source.string("url") if kind == "stac-api" else None
    href = source.string("href") if kind in ("stac-geoparquet", "stac-static") else None
    href_as_written = href
    # A static catalog may also be read over http(s); other hrefs are paths.
    is_url = href is not None and href.startswith(("http://", "https://"))
    if href is not None and not is_url and not Path(href).is_absolute():
        href = str((path.parent / href).resolve())
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: source.url {url!r} must start with http:// or https://")

    modalities_section = root.section("modalities")
    modalities: dict[str, ModalitySource] = {}
    for modality in modalities_section.data:
        if modality not in MODALITIES:
            raise ConfigError(
                f"{path}: unknown modality {modality!r} under modalities; "
                f"valid modalities are {list(MODALITIES)}"
            )
        modalities[modality] = replace(
            _load_modality_source(modalities_section.section(modality), modality, kind=kind),
            signing=signing,
            credentials=credentials,
        )
    if credentials is not None:
        _check_credential_modalities(source, modalities)
    if not modalities:
        raise ConfigError(
            f"{path}: modalities is empty; declare at least one of {list(MODALITIES)}"
        )

    return CatalogSpec(
        name=name,
        path=str(path),
        kind=kind,
        url=url,
        href=href,
        href_as_written=href_as_written,
        licence=root.string("licence"),
        modalities=modalities,
    )


def _load_signing(source: _Section, kind: str) -> str | None:
    """Read source.signing; signing needs a STAC API and the package that fetches tokens."""
    if "signing" not in source.data:
        return None
    signing = source.choice("signing", SIGNING_METHODS)
    if kind != "stac-api":
        raise ConfigError(
            f"{source.path}: source.signing applies to source.kind 'stac-api' only, not "
            f"{kind!r}; remove source.signing"
        )
    if importlib.util.find_spec("planetary_computer") is None:
        raise ConfigError(
            f"{source.path}: source.signing {signing!r} needs the planetary-computer package; "
            "install it with: pip install 'sensorcube[planetary-computer]'"
        )
    return signing


def _load_credentials(source: _Section) -> CredentialsSpec | None:
    """Read source.credentials: a kind name, or a mapping with kind and hosts."""
    if "credentials" not in source.data:
        return None
    value = source.get("credentials")
    kinds = tuple(CREDENTIAL_KINDS)
    if isinstance(value, str):
        kind = source.choice("credentials", kinds)
        return CredentialsSpec(kind=kind, hosts=CREDENTIAL_KINDS[kind].default_hosts)
    section = source.section("credentials")
    section.reject_unknown(("kind", "hosts"))
    kind = section.choice("kind", kinds)
    hosts = (
        section.string_list("hosts")
        if "hosts" in section.data
        else CREDENTIAL_KINDS[kind].default_hosts
    )
    return CredentialsSpec(kind=kind, hosts=hosts)


def _check_credential_modalities(
    source: _Section, modalities: Mapping[str, ModalitySource]
) -> None:
    """Reject credentials in a catalog with modalities other than hsi and vhr.

    Only the GDAL reads of hsi and vhr assets send the login, so elsewhere it would be ignored.
    """
    others = sorted(set(modalities) - {"hsi", "vhr"})
    if others:
        raise ConfigError(
            f"{source.path}: source.credentials applies to the hsi and vhr modalities only, "
            f"but the catalog also declares {others}; put those modalities in a catalog file "
            "of their own"
        )


def _load_modality_source(section: _Section, modality: str, *, kind: str) -> ModalitySource:
    allowed: tuple[str, ...] = ("collection", "bands", "nodata", "radiometry", "mask")
    if kind == "raster-files":
        allowed = (*allowed, "files", "datetime", "datetime_pattern")
    if modality == "hsi":
        allowed = (*allowed, "format")
    section.reject_unknown(allowed)
    bands = _load_bands(section.section("bands"))
    nodata_value = section.get("nodata", None)
    nodata = None if nodata_value is None else section.number("nodata")
    radiometry = section.section("radiometry", {})
    if "mask" in section.data and modality != "s2":
        raise ConfigError(f"{section.path}: {section.key_name('mask')} applies to s2 only")
    files = datetime = pattern = None
    if kind == "raster-files":
        files = section.string("files")
        datetime = str(section.get("datetime")) if "datetime" in section.data else None
        pattern = _load_pattern(section)
    return ModalitySource(
        modality=modality,
        collection=section.string("collection"),
        bands=bands,
        nodata=nodata,
        files=files,
        datetime=datetime,
        datetime_pattern=pattern,
        format=section.choice("format", HSI_FORMATS, "geotiff"),
        **_load_radiometry(section, radiometry, modality),
    )


def _load_pattern(section: _Section) -> str | None:
    if "datetime_pattern" not in section.data:
        return None
    pattern = section.string("datetime_pattern")
    try:
        groups = re.compile(pattern).groups
    except re.error as error:
        raise ConfigError(
            f"{section.path}: {section.key_name('datetime_pattern')} {pattern!r} is not a "
            f"valid regular expression: {error}"
        ) from None
    if groups < 1:
        raise ConfigError(
            f"{section.path}: {section.key_name('datetime_pattern')} {pattern!r} needs a group "
            r"around the date, for example '_(\d{8})\.tif$' for names ending in _20180716.tif"
        )
    return pattern


def _load_bands(section: _Section) -> tuple[BandSpec, ...]:
    bands: list[BandSpec] = []
    for band_name in section.data:
        band = section.section(str(band_name))
        band.reject_unknown(("asset", "resampling", "index"))
        bands.append(
            BandSpec(
                name=str(band_name),
                asset=band.string("asset"),
                resampling=band.choice("resampling", RESAMPLING_METHODS, "bilinear"),
                index=band.integer("index", 1),
            )
        )
    return tuple(bands)


def _load_radiometry(section: _Section, radiometry: _Section, modality: str) -> dict[str, Any]:
    """Build the radiometry fields of one modality as keyword arguments of ModalitySource."""
    if modality == "s2":
        radiometry.reject_unknown(("scale", "offset"))
        offset = radiometry.get("offset", "baseline")
        if offset != "baseline":
            offset = radiometry.number("offset")
        return {
            "s2": S2Radiometry(scale=radiometry.number("scale", low=0.0), offset=offset),
            "mask": _load_mask(section.section("mask", {"kind": "nodata"})),
        }
    if modality == "s1":
        radiometry.reject_unknown(("units", "quantity", "product", "terrain_flattening"))
        units = radiometry.choice("units", S1_UNITS)
        # Uncalibrated digital numbers are not yet sigma0, gamma0 or beta0: quantity 'none'.
        if units == "dn":
            quantity = radiometry.choice("quantity", ("none",), "none")
        else:
            quantity = radiometry.choice("quantity", S1_QUANTITIES)
        return {
            "s1": S1Radiometry(
                units=units,
                quantity=quantity,
                product=radiometry.choice("product", S1_PRODUCTS),
                terrain_flattening=radiometry.boolean("terrain_flattening"),
            )
        }
    if modality == "dem":
        radiometry.reject_unknown(("units", "vertical_datum"))
        return {
            "dem": DemRadiometry(
                units=radiometry.choice("units", ("m",), "m"),
                vertical_datum=radiometry.string("vertical_datum"),
            )
        }
    if modality == "coherence":
        radiometry.reject_unknown(("kind",))
        return {"coherence": CoherenceRadiometry(kind=radiometry.choice("kind", COHERENCE_KINDS))}
    if modality == "vhr":
        radiometry.reject_unknown(("units", "scale"))
        return {
            "vhr": VhrRadiometry(
                units=radiometry.choice("units", VHR_UNITS),
                scale=radiometry.number("scale", 1.0, low=0.0),
            )
        }
    radiometry.reject_unknown(("scale",))
    return {"hsi": HsiRadiometry(scale=radiometry.number("scale", low=0.0))}


def _load_mask(section: _Section) -> MaskSpec:
    section.reject_unknown(("kind", "asset", "clear_classes"))
    kind = section.choice("kind", ("scl", "nodata"))
    if kind == "nodata":
        return MaskSpec(kind="nodata")
    classes = section.get("clear_classes", [4, 5, 6, 7, 11])
    if not isinstance(classes, list) or not all(isinstance(c, int) for c in classes):
        raise ConfigError(
            f"{section.path}: {section.key_name('clear_classes')} must be a list of SCL class "
            f"numbers (0-11), got {classes!r}"
        )
    return MaskSpec(kind="scl", asset=section.string("asset", "SCL"), clear_classes=tuple(classes))


def catalog_to_json(spec: CatalogSpec) -> dict[str, Any]:
    """Describe what of a catalog spec decides the pixels, as plain JSON for hashing.

    The file path, the resolved local href (which depends on where the clone lives) and the
    licence text are left out, so neither moving a clone nor editing a citation changes the hash.
    """
    data = asdict(spec)
    # Signing and credentials only grant access to the same pixels, so they stay out of the
    # hash. The default format is left out too, so catalogs written before it keep their hash.
    data["modalities"] = {
        name: {
            key: value
            for key, value in asdict(source).items()
            if key not in ("signing", "credentials")
            and not (key == "format" and value == "geotiff")
        }
        for name, source in spec.modalities.items()
    }
    for key in ("path", "href", "licence"):
        data.pop(key)
    return data


# ----------------------------------------------------------------------------------------------
# Region loading


def resolve_region_path(region: str, splits_dir: Path) -> Path:
    """Map ``REGION`` (a name under the splits folder or a path to a YAML file) to a file."""
    candidate = Path(region)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        return candidate
    path = splits_dir / region / "region.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in splits_dir.glob("*/region.yaml"))
        raise ConfigError(
            f"region {region!r} not found: no file {str(path)!r}; known regions under "
            f"{str(splits_dir)!r}: {known}; or pass a path to a region YAML"
        )
    return path


def load_region(path: Path) -> RegionSpec:
    """Load and validate a region spec."""
    raw = read_yaml(path, "region file")
    root = _Section(raw, "", str(path))
    root.reject_unknown(
        ("name", "description", "aoi", "time", "grid", "modalities", "derived", "split")
    )
    name = root.string("name")
    if not all(ch.isalnum() or ch in "-_" for ch in name):
        raise ConfigError(
            f"{path}: name {name!r} may contain only letters, digits, '-' and '_' "
            "because it names the store and the splits folder"
        )
    start, end = _load_time(root.section("time"))
    modalities = root.section("modalities")
    modalities.reject_unknown(MODALITIES)
    if not modalities.data:
        raise ConfigError(
            f"{path}: modalities is empty; request at least one of {list(MODALITIES)}"
        )
    if "s1" in modalities.data and "s2" not in modalities.data:
        raise ConfigError(
            f"{path}: modalities.s1 is paired in time with the chosen Sentinel-2 item, so it "
            "needs modalities.s2 as well; add s2 or remove s1"
        )
    grid = _load_grid(root.section("grid", {}))
    present = modalities.data
    hsi = _load_hsi_selection(modalities.section("hsi")) if "hsi" in present else None
    if hsi is not None:
        _check_nesting(grid, hsi.resolution_m, "hsi", str(path))
    s2 = _load_s2_selection(modalities.section("s2")) if "s2" in present else None
    vhr = _load_vhr_selection(modalities.section("vhr")) if "vhr" in present else None
    if vhr is not None:
        _check_fine_nesting(grid, vhr.resolution_m, str(path))

    return RegionSpec(
        name=name,
        path=str(path),
        description=_description(root),
        aoi=_load_aoi(root.get("aoi"), str(path)),
        start=start,
        end=end,
        grid=grid,
        s2=s2,
        s1=_load_s1_selection(modalities.section("s1")) if "s1" in present else None,
        derived=_load_derived(root, has_s2=s2 is not None),
        split=_load_split(root.section("split", {})),
        raw=json.loads(json.dumps(raw, default=str)),
        dem=_load_dem_selection(modalities.section("dem")) if "dem" in present else None,
        coherence=_load_coherence_selection(modalities.section("coherence"))
        if "coherence" in present
        else None,
        hsi=hsi,
        vhr=vhr,
    )


def _check_nesting(grid: GridSpec, resolution_m: float, modality: str, path: str) -> None:
    """Require a coarser lattice whose pixels each cover a whole k x k block of base pixels."""
    ratio = resolution_m / grid.resolution_m
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 1e-9:
        raise ConfigError(
            f"{path}: modalities.{modality}.resolution {resolution_m:g} m does not nest in the "
            f"{grid.resolution_m:g} m base lattice; use a whole multiple of it, such as "
            f"{grid.resolution_m * max(1, factor):g} m"
        )
    if grid.chip_size % factor:
        below = grid.chip_size - grid.chip_size % factor
        raise ConfigError(
            f"{path}: grid.chip_size {grid.chip_size} at {grid.resolution_m:g} m does not nest "
            f"the {resolution_m:g} m {modality} lattice: each {modality} pixel covers "
            f"{factor} x {factor} base pixels, so the chip size must be a multiple of {factor}; "
            f"chip sizes that nest are {below} and {below + factor}"
        )


def _load_aoi(value: object, path: str) -> shapely.Geometry:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: aoi must be a GeoJSON geometry mapping, got {value!r}")
    try:
        geometry = shapely.geometry.shape(value)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        raise ConfigError(
            f"{path}: aoi is not a valid GeoJSON geometry ({error}); give a Polygon or "
            "MultiPolygon with [lon, lat] coordinates"
        ) from error
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise ConfigError(
            f"{path}: aoi has type {geometry.geom_type!r}; it must be a Polygon or MultiPolygon"
        )
    # Validity comes before the area test because a symmetric bow-tie has zero signed area.
    if not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        raise ConfigError(
            f"{path}: aoi is not a valid polygon: {reason}; fix the ring (for example remove "
            "the self-intersection) or run it through shapely.make_valid"
        )
    if geometry.is_empty or geometry.area == 0:
        raise ConfigError(f"{path}: aoi is empty or has zero area; give a polygon with extent")
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    if min_lon < -180 or max_lon > 180 or min_lat < -90 or max_lat > 90:
        raise ConfigError(
            f"{path}: aoi bounds {geometry.bounds!r} are outside lon [-180, 180] and "
            "lat [-90, 90]; aoi coordinates must be [lon, lat] in degrees (EPSG:4326)"
        )
    for part in shapely.get_parts(geometry):
        part_min_lon, _, part_max_lon, _ = part.bounds
        if part_max_lon - part_min_lon > MAX_POLYGON_LON_SPAN_DEG:
            raise ConfigError(
                f"{path}: an aoi polygon spans {part_max_lon - part_min_lon:.1f} degrees of "
                f"longitude ({part_min_lon:g} to {part_max_lon:g}); if it crosses the "
                "antimeridian, split it at 180 degrees into a MultiPolygon with one part on "
                "each side"
            )
    return geometry


def _parse_time(value: object, key: str, path: str, *, end: bool) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime.combine(value, dt.time.max if end else dt.time.min)
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"{path}: time.{key} {value!r} is not an ISO 8601 date or datetime "
                "(for example 2017-06-01 or 2017-06-01T00:00:00Z)"
            ) from None
        if len(value) == 10 and end:
            parsed = dt.datetime.combine(parsed.date(), dt.time.max)
    else:
        raise ConfigError(f"{path}: time.{key} must be a date, got {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _load_time(section: _Section) -> tuple[dt.datetime, dt.datetime]:
    section.reject_unknown(("start", "end"))
    start = _parse_time(section.get("start"), "start", section.path, end=False)
    end = _parse_time(section.get("end"), "end", section.path, end=True)
    if end <= start:
        raise ConfigError(
            f"{section.path}: empty time range: time.end {end.isoformat()} is not after "
            f"time.start {start.isoformat()}; set an end later than the start"
        )
    return start, end


def _load_grid(section: _Section) -> GridSpec:
    section.reject_unknown(("chip_size", "resolution", "coverage"))
    return GridSpec(
        chip_size=section.integer("chip_size", DEFAULT_CHIP_SIZE, low=8),
        resolution_m=section.number("resolution", DEFAULT_RESOLUTION_M, low=0.01, high=1000),
        coverage=section.choice("coverage", COVERAGE_RULES, "intersects"),
    )


def _load_s2_selection(section: _Section) -> S2Selection:
    section.reject_unknown(
        ("catalog", "bands", "min_clear_fraction", "max_cloud_cover", "max_candidates")
    )
    return S2Selection(
        catalog=section.string("catalog"),
        bands=section.string_list("bands"),
        min_clear_fraction=section.number("min_clear_fraction", 0.9, low=0.0, high=1.0),
        max_cloud_cover=section.number("max_cloud_cover", 100.0, low=0.0, high=100.0),
        max_candidates=section.integer("max_candidates", 8),
    )


def _load_s1_selection(section: _Section) -> S1Selection:
    section.reject_unknown(
        (
            "catalog",
            "bands",
            "max_time_gap_days",
            "orbit_state",
            "min_valid_fraction",
            "max_candidates",
            "coregistration",
        )
    )
    return S1Selection(
        coregistration=_load_coregistration(section, "VV"),
        catalog=section.string("catalog"),
        bands=section.string_list("bands"),
        max_time_gap_days=section.number("max_time_gap_days", 3.0, low=0.0),
        orbit_state=section.choice("orbit_state", ORBIT_STATES, "any"),
        min_valid_fraction=section.number("min_valid_fraction", 0.9, low=0.0, high=1.0),
        max_candidates=section.integer("max_candidates", 4),
    )


def _check_fine_nesting(grid: GridSpec, resolution_m: float, path: str) -> None:
    """Require a finer lattice with a whole number of its pixels per base pixel."""
    ratio = grid.resolution_m / resolution_m
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        divisors = [grid.resolution_m / k for k in (2, 4, 8)]
        raise ConfigError(
            f"{path}: modalities.vhr.resolution {resolution_m:g} m does not nest in the "
            f"{grid.resolution_m:g} m base lattice; use the base resolution divided by a whole "
            f"number, such as {', '.join(f'{value:g}' for value in divisors)} m"
        )


def _load_vhr_selection(section: _Section) -> VhrSelection:
    section.reject_unknown(
        ("catalog", "bands", "resolution", "max_time_gap_days", "min_valid_fraction")
    )
    return VhrSelection(
        catalog=section.string("catalog"),
        bands=section.string_list("bands"),
        resolution_m=section.number("resolution", DEFAULT_VHR_RESOLUTION_M, low=0.01, high=1000),
        max_time_gap_days=section.number("max_time_gap_days", 3653.0, low=0.0),
        min_valid_fraction=section.number("min_valid_fraction", 0.9, low=0.0, high=1.0),
    )


def _load_derived(root: _Section, *, has_s2: bool) -> tuple[str, ...]:
    if "derived" not in root.data:
        return ("ndvi",) if has_s2 else ()
    if root.data["derived"] == []:
        return ()
    return root.string_list("derived", DERIVED_LAYERS)


def _load_coregistration(section: _Section, band_default: str) -> CoregistrationSpec | None:
    if "coregistration" not in section.data:
        return None
    policy = section.section("coregistration")
    policy.reject_unknown(("action", "max_shift_px", "min_confidence", "reference_band", "band"))
    band = policy.get("band", band_default)
    return CoregistrationSpec(
        action=policy.choice("action", COREGISTRATION_ACTIONS, "record"),
        max_shift_px=policy.number("max_shift_px", 1.0, low=0.0),
        min_confidence=policy.number("min_confidence", 0.5, low=0.0, high=1.0),
        reference_band=policy.string("reference_band", "B08"),
        band=str(band),
    )


def _load_dem_selection(section: _Section) -> DemSelection:
    section.reject_unknown(("catalog",))
    return DemSelection(catalog=section.string("catalog"))


def _load_coherence_selection(section: _Section) -> CoherenceSelection:
    section.reject_unknown(("catalog", "max_time_gap_days", "looks"))
    looks = section.get("looks", [3, 3])
    if (
        not isinstance(looks, list)
        or len(looks) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in looks)
        or not all(v >= 1 and v % 2 == 1 for v in looks)
    ):
        raise ConfigError(
            f"{section.path}: modalities.coherence.looks must be two odd positive integers "
            f"[rows, columns] of the centred estimator window, got {looks!r}; for example "
            "[3, 3] for 9 looks or [7, 7] for 49"
        )
    return CoherenceSelection(
        catalog=section.string("catalog"),
        max_time_gap_days=section.number("max_time_gap_days", 48.0, low=0.0),
        looks=(looks[0], looks[1]),
    )


def _load_hsi_selection(section: _Section) -> HsiSelection:
    section.reject_unknown(
        ("catalog", "resolution", "max_time_gap_days", "min_valid_fraction", "coregistration")
    )
    policy = _load_coregistration(section, "842")
    if policy is not None:
        try:
            float(policy.band)
        except ValueError:
            raise ConfigError(
                f"{section.path}: modalities.hsi.coregistration.band {policy.band!r} must be a "
                "wavelength in nm, for example 842 for the band nearest Sentinel-2 B08"
            ) from None
    return HsiSelection(
        catalog=section.string("catalog"),
        resolution_m=section.number("resolution", DEFAULT_HSI_RESOLUTION_M, low=0.01, high=1000),
        max_time_gap_days=section.number("max_time_gap_days", 30.0, low=0.0),
        min_valid_fraction=section.number("min_valid_fraction", 0.5, low=0.0, high=1.0),
        coregistration=policy,
    )


def _load_split(section: _Section) -> SplitSpec:
    section.reject_unknown(("fractions", "block_size", "buffer_m", "seed"))
    fractions_section = section.section("fractions", {"train": 0.7, "val": 0.15, "test": 0.15})
    fractions_section.reject_unknown(SPLIT_NAMES)
    fractions = {
        name: fractions_section.number(name, 0.0, low=0.0, high=1.0) for name in SPLIT_NAMES
    }
    if abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ConfigError(
            f"{section.path}: split.fractions {fractions!r} sum to "
            f"{sum(fractions.values()):.6g}; they must sum to 1"
        )
    return SplitSpec(
        fractions=fractions,
        block_size=section.integer("block_size", 8),
        buffer_m=section.number("buffer_m", 0.0, low=0.0),
        seed=section.integer("seed", 0, low=0),
    )


def validate_region_against_catalogs(
    region: RegionSpec, catalogs: Mapping[str, CatalogSpec]
) -> None:
    """Check that every band a region requests exists in its catalog."""
    _check_s1_calibrated(region, catalogs)
    for modality, selection in region.selections().items():
        source = catalogs[selection.catalog].source(modality)
        known = [band.name for band in source.bands]
        if modality == "hsi" and len(known) != 1:
            raise ConfigError(
                f"{catalogs[selection.catalog].path}: modalities.hsi must declare one "
                f"band (the multi-band reflectance asset), got {known}"
            )
        for band in selection.bands if modality in ("s2", "s1", "vhr") else ():
            if band not in known:
                raise ConfigError(
                    f"{region.path}: unknown band {band!r} in modalities.{modality}.bands; "
                    f"catalog {selection.catalog!r} provides {known}"
                )
    _check_derived(region)
    policy_s1 = region.s1.coregistration if region.s1 else None
    if region.s1 is not None and policy_s1 is not None and policy_s1.band not in region.s1.bands:
        raise ConfigError(
            f"{region.path}: modalities.s1.coregistration.band {policy_s1.band!r} is not a "
            f"requested polarization; choose one of {list(region.s1.bands)}"
        )
    for modality, policy in (
        ("s1", region.s1.coregistration if region.s1 else None),
        ("hsi", region.hsi.coregistration if region.hsi else None),
    ):
        s2_bands = region.s2.bands if region.s2 is not None else ()
        if policy is not None and policy.reference_band not in s2_bands:
            raise ConfigError(
                f"{region.path}: modalities.{modality}.coregistration measures against Sentinel-2 "
                f"band {policy.reference_band!r}; request modalities.s2 with that band or set "
                "coregistration.reference_band to one of the requested Sentinel-2 bands"
            )


def _check_s1_calibrated(region: RegionSpec, catalogs: Mapping[str, CatalogSpec]) -> None:
    """Reject Sentinel-1 sources of uncalibrated digital numbers, which are not backscatter."""
    if region.s1 is None:
        return
    catalog = catalogs[region.s1.catalog]
    source = catalog.source("s1")
    if source.s1 is not None and source.s1.units == "dn":
        raise ConfigError(
            f"{region.path}: modalities.s1 reads collection {source.collection!r} of catalog "
            f"{catalog.name!r} ({catalog.path}), whose rasters are uncalibrated digital numbers "
            "(radiometry.units dn) in radar geometry, not backscatter, and sensorcube neither "
            "calibrates nor terrain-corrects them; read Sentinel-1 from collection "
            "'sentinel-1-rtc' of catalog 'planetary-computer' (terrain-flattened gamma0) or "
            "from another catalog of calibrated sigma0 or gamma0 products"
        )


def _check_derived(region: RegionSpec) -> None:
    if "ndvi" in region.derived:
        bands = region.s2.bands if region.s2 is not None else ()
        missing = [band for band in ("B04", "B08") if band not in bands]
        if missing:
            raise ConfigError(
                f"{region.path}: derived layer 'ndvi' needs Sentinel-2 bands B04 and B08; "
                f"add {missing} to modalities.s2.bands or remove ndvi from derived"
            )
    for layer in ("slope", "aspect"):
        if layer in region.derived and region.dem is None:
            raise ConfigError(
                f"{region.path}: derived layer {layer!r} is computed from the DEM; add "
                f"modalities.dem or remove {layer} from derived"
            )


def load_catalogs(region: RegionSpec, catalogs_dir: Path) -> dict[str, CatalogSpec]:
    """Load the catalogs a region names (by name under ``catalogs_dir`` or by path)."""
    catalogs: dict[str, CatalogSpec] = {}
    references = {selection.catalog for selection in region.selections().values()}
    for reference in sorted(references):
        path = _resolve_catalog_path(reference, catalogs_dir, Path(region.path).parent)
        catalogs[reference] = load_catalog(path)
    validate_region_against_catalogs(region, catalogs)
    return catalogs


def _resolve_catalog_path(reference: str, catalogs_dir: Path, region_dir: Path) -> Path:
    if reference.endswith((".yaml", ".yml")):
        path = Path(reference)
        return path if path.is_absolute() else region_dir / path
    path = catalogs_dir / f"{reference}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in catalogs_dir.glob("*.yaml"))
        raise ConfigError(
            f"unknown catalog {reference!r}: no file {str(path)!r}; catalogs under "
            f"{str(catalogs_dir)!r} are {known}; run from the repository folder or pass "
            "--catalogs-dir"
        )
    return path
