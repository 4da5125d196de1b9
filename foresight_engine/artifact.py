"""Artifact directory: where builders and the engine meet (neither imports the other). This module owns its layout
and the typed manifest both sides read and write.

Layout: `DIR/manifest.json` + one subfolder per component (`vision_tower/`, `backbone/`, `adapter/`,
`video_decoder/`, `vae/`, and `spatial_encoder/` with the hybrid encoder) holding `weights.safetensors` and the
files of its built stages (`<stage>.onnx`, `<stage>.plan`, `<stage>.pt2`, `<stage>.fp8.safetensors`) + `processor/` (tokenizer
and image processor). The manifest keeps the raw key factors (`KeyFactors`), their hash (`key`), what each
component was built as (`ComponentEntry`, one `StageEntry` per stage), the sha256 and size of every file, and a
`digest` of all of that. A cache hit is a key match of a verified artifact, never a directory that exists.

`verify` checks the artifact whole before anything in it is deserialized: the manifest's digest (every field the
loader reads: factors, components, files table; optionally against a digest the caller pins), its key, every
stage's backend (known, this build's, runnable on this device), the toolchain and device, then the files: every
path is relative and inside the directory (no `..`, no absolute path, no symlink out), every file the loader opens
is listed, every listed file has its size and sha256, and no unlisted file sits anywhere in the artifact (the
processor folder is read whole by transformers: an extra file there would change the tokens).

Writes go to a temporary sibling directory; `manifest.json` is written last and the directory is renamed into
place under a file lock, so a killed build leaves only a `.NAME.tmp-*` folder without a valid manifest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import torch
from filelock import FileLock

from .backends import Backend, toolchain_packages
from .errors import ArtifactError
from .precision import COMPONENTS

log = logging.getLogger(__name__)

FORMAT = "foresight-artifact-v4"  # v3: manifest digest, every file listed; v4: the config's decoder is a
# discriminated section (`decoder.family`), the optional `spatial_encoder` component
MANIFEST = "manifest.json"
PROCESSOR_DIR = "processor"
WEIGHTS_FILE = "weights.safetensors"
# Packages whose version changes what an artifact holds or how it runs (each backend depends on a subset).
TOOLCHAIN_PACKAGES = toolchain_packages()


def weights_file(component: str) -> str:
    """Relative path of a component's weights."""
    return f"{component}/{WEIGHTS_FILE}"


def stage_file(component: str, stage: str, suffix: str) -> str:
    """Relative path of one of a stage's files: `.onnx` graph, `.plan` TensorRT engine, `.fp8.safetensors` scales,
    `.pt2` AOTInductor package."""
    return f"{component}/{stage}{suffix}"


# Import names whose distributions have other names (TensorRT ships as `tensorrt-cu13`, `tensorrt-cu12`, ...).
_DISTRIBUTIONS = {"tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings",
                               "tensorrt-cu12-bindings"),
                  "torch_tensorrt": ("torch-tensorrt",)}


def _version(package: str) -> str | None:
    for name in _DISTRIBUTIONS.get(package, (package,)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def toolchain() -> dict[str, str | None]:
    """Installed versions of the packages artifacts depend on (None: not installed)."""
    return {name: _version(name) for name in TOOLCHAIN_PACKAGES} | {"python": platform.python_version()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What an artifact is specialised for: device type, model name and CUDA SM (`major.minor`) or CPU ISA."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "sm": f"{major}.{minor}"}
    return {"type": device.type, "name": _cpu_name(), "sm": None, "isa": torch.backends.cpu.get_cpu_capability()}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensors_hash(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Content hash of named tensors: names, dtypes, shapes and bytes (order-independent)."""
    h = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda kv: kv[0]):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class KeyFactors:
    """Everything a built artifact depends on. Two builds with equal factors produce interchangeable artifacts;
    anything else (log level, output path, progress bars) is deliberately left out."""

    config: dict[str, Any]
    weights_hash: str
    precision: dict[str, Any]
    shapes: dict[str, Any]  # the build shape and every stage's min/opt/max profile
    backend: str
    toolchain: dict[str, str | None]
    device: dict[str, Any]
    calibration_hash: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # backend options (compile mode, opset, ...)

    def key(self) -> str:
        return hashlib.sha256(_canonical(asdict(self)).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(_canonical(asdict(self)))  # tuples -> lists, exactly as the manifest stores them

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KeyFactors":
        return cls(**data)


@dataclass(frozen=True)
class StageEntry:
    """How one stage was built: the backend that runs it, its precision, its shape profile and its files."""

    backend: str
    precision: str
    profile: dict[str, Any] = field(default_factory=dict)  # input -> [min, opt, max] shapes
    reason: str = ""  # why it runs eager in a non-eager build
    file: str | None = None  # its ONNX graph (onnx, tensorrt) or AOTInductor package (compile)
    engine: str | None = None  # its TensorRT plan, or its torch-tensorrt program
    fp8_scales: str | None = None  # its FP8 scales (Q/DQ graphs)
    fp8_layers: int = 0
    ort_vs_eager: dict[str, float] = field(default_factory=dict)  # relative L2 per output of the exported graph
    tensorrt_config: dict[str, Any] | None = None
    # what the GPU backends add
    buffers: dict[str, Any] | None = None  # the I/O buffer plan (names, dtypes, min/opt/max shapes) runners allocate
    program: str | None = None  # its torch.export program (torch-tensorrt's input)
    fp8_attention: str | None = None  # its FP8 attention / KV-cache scales
    device_vs_eager: dict[str, float] = field(default_factory=dict)  # built stage vs eager, both on the GPU
    aot_vs_eager: dict[str, float] = field(default_factory=dict)  # the AOTInductor package's, per output

    @property
    def built(self) -> bool:
        """Whether a backend other than eager runs it (the engine then loads it through that backend's runner)."""
        return self.backend != Backend.EAGER.value

    @property
    def files(self) -> list[str]:
        """The relative paths of the files its runner opens."""
        return [path for path in (self.file, self.engine, self.fp8_scales) if path is not None]

    def to_dict(self) -> dict[str, Any]:
        """Fields left at their default are left out."""
        data = asdict(self)
        return {k: v for k, v in data.items() if k in ("backend", "precision") or v not in (None, "", 0, {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageEntry":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise _rebuild(f"manifest stage entry has unknown field(s) {unknown}")
        entry = cls(**data)
        for path in entry.files:
            _check_relative(path)
        return entry


@dataclass(frozen=True)
class ComponentEntry:
    precision: str
    stages: dict[str, StageEntry] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"precision": self.precision, "stages": {n: s.to_dict() for n, s in self.stages.items()}}
        return out | ({"note": self.note} if self.note else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComponentEntry":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise _rebuild(f"manifest component entry has unknown field(s) {unknown}")
        return cls(precision=data["precision"], note=data.get("note", ""),
                   stages={n: StageEntry.from_dict(s) for n, s in data.get("stages", {}).items()})


@dataclass
class Manifest:
    key: str
    factors: KeyFactors
    components: dict[str, ComponentEntry]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> {sha256, bytes}
    report: dict[str, Any] = field(default_factory=dict)  # accuracy, build seconds
    format: str = FORMAT
    created: float = 0.0
    digest: str = ""  # sha256 of every other field (`manifest_digest`), set by `write_manifest`

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "key": self.key, "created": self.created, "factors": self.factors.to_dict(),
                "components": {n: c.to_dict() for n, c in self.components.items()}, "files": self.files,
                "report": self.report, "digest": self.digest}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise _rebuild(f"manifest has unknown field(s) {unknown}")
        files = data["files"]
        for rel, entry in files.items():
            _check_relative(rel)
            if set(entry) != {"sha256", "bytes"} or not isinstance(entry["bytes"], int) \
                    or not re.fullmatch(r"[0-9a-f]{64}", str(entry["sha256"])):
                raise _rebuild(f"manifest files entry {rel!r} must be {{sha256: 64 hex digits, bytes: int}}")
        return cls(key=data["key"], factors=KeyFactors.from_dict(data["factors"]),
                   components={n: ComponentEntry.from_dict(c) for n, c in data["components"].items()},
                   files=files, report=data.get("report", {}), format=data["format"],
                   created=data.get("created", 0.0), digest=data.get("digest", ""))

    def opened_files(self) -> list[str]:
        """Every file the loader opens by name: each component's weights and each stage's files."""
        return [weights_file(name) for name in self.components] + \
            [path for component in self.components.values() for stage in component.stages.values()
             for path in stage.files]

    @property
    def stages(self) -> dict[str, StageEntry]:
        """Every stage's entry, by stage name."""
        return {name: entry for c in self.components.values() for name, entry in c.stages.items()}


def _rebuild(reason: str) -> ArtifactError:
    return ArtifactError(f"rebuild needed: {reason}")


def manifest_digest(data: dict[str, Any]) -> str:
    """sha256 of a manifest's JSON form without its `digest` field: covers everything the loader reads."""
    return hashlib.sha256(_canonical({k: v for k, v in data.items() if k != "digest"}).encode()).hexdigest()


def _check_relative(rel: Any) -> None:
    """A path the manifest names must be relative, in POSIX form, and stay inside the artifact."""
    parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
    if not parts or rel.startswith("/") or "\\" in rel or ":" in parts[0] or any(p in ("..", ".") for p in parts) \
            or str(PurePosixPath(*parts)) != rel:
        raise _rebuild(f"manifest names the path {rel!r}: artifact paths must be relative, inside the artifact "
                       "(no '..', no absolute path)")


def read_manifest(directory: str | Path) -> Manifest:
    """Parse `DIR/manifest.json` and check its format, digest and structure (no file checks); `ArtifactError` when
    missing, malformed or edited."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: not an artifact directory (it does not exist)", argument="directory")
        unfinished = ".tmp-" in directory.name  # `build_atomically`'s temp folder, left by a killed build
        raise ArtifactError(f"{directory}: not an artifact directory (no {MANIFEST}"
                            + ("; a build that did not finish: build again)" if unfinished else ")"),
                            argument="directory")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise _rebuild(f"artifact format {data.get('format')!r}, this engine reads {FORMAT!r}")
        digest = manifest_digest(data)
        if data.get("digest") != digest:
            raise _rebuild(f"manifest digest {str(data.get('digest'))[:12]!r} does not match its contents "
                           f"({digest[:12]}): the manifest was edited")
        return Manifest.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise _rebuild(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None


def _check_stages(manifest: Manifest, device: str | torch.device) -> None:
    """Every component is one this engine knows and every stage's backend is eager or the artifact's own; a built
    stage's backend can run here (its runner, device type and packages). (Precisions come from the key factors.)"""
    artifact_backend = manifest.factors.backend
    for component, entry in manifest.components.items():
        if component not in COMPONENTS:
            raise _rebuild(f"manifest component {component!r} is not one of {list(COMPONENTS)}")
        for name, stage in entry.stages.items():
            if stage.backend not in (Backend.EAGER.value, artifact_backend):
                raise _rebuild(f"stage {name}: backend {stage.backend!r} is neither this artifact's "
                               f"({artifact_backend!r}) nor eager")
            if stage.built:
                spec = Backend(stage.backend).spec
                if spec.runner is None:
                    raise _rebuild(f"stage {name} is marked built by backend {stage.backend!r}, which has no runner")
                spec.require(device)  # BackendUnavailable naming what is missing


def _check_files(directory: Path, manifest: Manifest) -> None:
    """The files table against the directory: listed paths stay inside (symlinks too), nothing unlisted is there,
    every file the loader opens is listed, every listed file has its size and sha256."""
    root = directory.resolve()
    missing = sorted(set(manifest.opened_files()) - set(manifest.files))
    if missing:
        raise _rebuild(f"the manifest's files table does not list {missing}, which the loader would open")
    for folder, subfolders, names in os.walk(directory):
        for name in subfolders:
            if (Path(folder) / name).is_symlink():
                raise _rebuild(f"{Path(folder, name).relative_to(directory)} is a symlinked folder")
        for name in names:
            rel = Path(folder, name).relative_to(directory).as_posix()
            if rel != MANIFEST and rel not in manifest.files:
                raise _rebuild(f"file {rel} is not listed in the manifest (an artifact holds only what it lists)")
    for rel, expected in sorted(manifest.files.items()):
        path = directory / rel
        real = path.resolve()
        if not real.is_relative_to(root):
            raise _rebuild(f"file {rel} resolves outside the artifact ({real})")
        if not real.is_file():
            raise _rebuild(f"file {rel} is missing")
        size = real.stat().st_size
        if size != expected["bytes"]:
            raise _rebuild(f"file {rel} is truncated or grew ({size} bytes, manifest says {expected['bytes']})")
        digest = sha256_file(real)
        if digest != expected["sha256"]:
            raise _rebuild(f"file {rel} was modified (sha256 {digest[:12]}, manifest says {expected['sha256'][:12]})")


def verify(directory: str | Path, device: str | torch.device = "cpu", digest: str | None = None) -> Manifest:
    """Check an artifact whole before anything in it is deserialized (see the module docstring): the manifest's
    digest (and `digest`, when the caller pins the one it trusts), key, stage backends, toolchain versions, device,
    then every file. Raises `ArtifactError("rebuild needed: <factor>")` on the first mismatch."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if digest is not None and manifest.digest != digest:
        raise ArtifactError(f"artifact digest {manifest.digest[:16]} is not the pinned {str(digest)[:16]}: "
                            "not the artifact you trust")
    factors = manifest.factors
    if factors.key() != manifest.key:
        raise _rebuild(f"manifest key {manifest.key[:12]} does not match its factors ({factors.key()[:12]}): "
                       "the manifest was edited")
    here = toolchain()
    try:
        backend = Backend(factors.backend).spec
    except ValueError:
        raise _rebuild(f"artifact backend {factors.backend!r} is not one this engine knows "
                       f"({[b.value for b in Backend]})") from None
    _check_stages(manifest, device)
    for package in backend.toolchain:
        built = factors.toolchain.get(package)
        if built != here.get(package):
            raise _rebuild(f"{package} version changed (artifact built with {built}, installed: {here.get(package)})")
    dev = device_info(device)
    for part in ("type", "name", "sm"):
        if factors.device.get(part) != dev.get(part):
            raise _rebuild(f"other device: artifact built for {factors.device.get('type')} "
                           f"{factors.device.get('name')!r} (sm {factors.device.get('sm')}), this is {dev.get('type')} "
                           f"{dev.get('name')!r} (sm {dev.get('sm')})")
    if not manifest.files:
        raise _rebuild(f"{directory / MANIFEST} lists no files")
    _check_files(directory, manifest)
    return manifest


def cached(directory: str | Path, key: str) -> Manifest | None:
    """The verified manifest at `directory` when its key is `key`, else None (a miss, with the reason logged)."""
    try:
        manifest = verify(directory)
    except ArtifactError as exc:
        log.info("cache miss at %s: %s", directory, exc)
        return None
    if manifest.key != key:
        log.info("cache miss at %s: key %s != wanted %s", directory, manifest.key[:12], key[:12])
        return None
    return manifest


def _file_table(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(directory).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(directory.rglob("*")) if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST}


def current_umask() -> int:
    """The process umask, read without changing it (`os.umask` can only be read by setting it, which would race
    with files other threads create meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): the racy read, once
    os.umask(mask)
    return mask


def _share_like_umask(directory: Path) -> None:
    """Give every folder and file the modes a plain `mkdir`/`open` would: some writers (safetensors writes
    through a 0600 temp file) lock the group out, which breaks an artifact cache shared by a group."""
    mask = current_umask()
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Hash every file in `directory`, then write `manifest.json` with its digest (always the last file written)."""
    manifest.files = _file_table(directory)
    manifest.created = time.time()
    data = manifest.to_dict()
    manifest.digest = manifest_digest(data)
    (directory / MANIFEST).write_text(json.dumps({**data, "digest": manifest.digest}, indent=2, sort_keys=True))
    return manifest


def lock_path(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.lock"


@contextmanager
def artifact_lock(directory: Path, timeout: float = -1) -> Iterator[None]:
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path(directory)), timeout=timeout):
        yield


def build_atomically(directory: str | Path, key: str, write: Callable[[Path], Manifest],
                     timeout: float = -1) -> tuple[Manifest, bool]:
    """Build once per key: under a file lock, return `(manifest, True)` when `directory` already holds a verified
    artifact with `key`; else call `write(tmp_dir)` (it fills `tmp_dir` and returns the manifest without files),
    write the manifest last and rename `tmp_dir` to `directory`. Returns `(manifest, False)`."""
    directory = Path(directory).absolute()
    with artifact_lock(directory, timeout):
        hit = cached(directory, key)
        if hit is not None:
            return hit, True
        for stale in directory.parent.glob(f".{directory.name}.tmp-*"):  # left by killed builds (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()  # not mkdtemp: its 0700 would lock a shared cache's group out
        try:
            manifest = write(tmp)
            if manifest.key != key:
                raise ArtifactError(f"builder wrote key {manifest.key[:12]}, expected {key[:12]}")
            write_manifest(tmp, manifest)
            _share_like_umask(tmp)
            old = None
            if directory.exists():
                old = directory.parent / f".{directory.name}.old-{os.getpid()}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
            os.replace(tmp, directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest, False


def describe(manifest: Manifest) -> str:
    """A readable summary of a manifest (`foresight-engine inspect`)."""
    f = manifest.factors
    lines = [f"artifact {manifest.key[:16]}  ({manifest.format}, built {time.ctime(manifest.created)})",
             f"  digest:     {manifest.digest}  (pin it: Engine.load(DIR, digest=...))",
             f"  model:      {f.config.get('name')}   weights sha256 {f.weights_hash[:16]}",
             f"  backend:    {f.backend}  options {f.options}",
             "  precision:  " + ", ".join(f"{c}={f.precision[c]}" for c in manifest.components),
             f"  shape:      {f.shapes.get('build')}",
             f"  device:     {f.device.get('type')} {f.device.get('name')!r} sm={f.device.get('sm')}",
             "  toolchain:  " + ", ".join(f"{k} {v}" for k, v in f.toolchain.items() if v),
             f"  calibration: {f.calibration_hash or '-'}",
             "  components:"]
    for name, comp in manifest.components.items():
        stages = ", ".join(f"{s}={info.backend}/{info.precision}" for s, info in comp.stages.items())
        lines.append(f"    {name:14s} {comp.precision:5s} {stages}")
        if comp.note:
            lines.append(f"    {'':14s} note: {comp.note}")
    other = {k: v for k, v in manifest.report.items() if k != "accuracy"}  # the accuracy table: `inspect`
    if other:
        lines.append("  report:")
        for k, v in other.items():
            lines.append(f"    {k}: {json.dumps(v, default=str)}")
    total = sum(v["bytes"] for v in manifest.files.values())
    lines.append(f"  files: {len(manifest.files)} ({total / 1e6:.1f} MB)")
    return "\n".join(lines)


__all__ = ["ComponentEntry", "FORMAT", "KeyFactors", "MANIFEST", "Manifest", "PROCESSOR_DIR", "StageEntry",
           "WEIGHTS_FILE", "build_atomically", "cached", "describe", "device_info", "manifest_digest",
           "read_manifest", "sha256_file", "stage_file", "tensors_hash", "toolchain", "verify", "weights_file",
           "write_manifest"]
