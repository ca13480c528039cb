"""Signed model files: who exported a model.pt, and that not one byte of it changed since.

The metadata checksum inside every model.pt catches accidents, but anyone can recompute it. A signature
covers the whole file (weights, TorchScript code, metadata) and only the holder of the signing key can make
one. A model.pt is a zip archive: its digest is SHA-256 over every entry but the signature's own, in name
order, with names stripped of the archive's top folder (torch names that folder after the file it writes,
here a temp file). The signature is one more entry, `extra/churnwatch/metadata.sig`, appended after
`torch.jit.save`: torch cannot write it itself, since its `.data/serialization_id` entry hashes every entry,
the signature included.

Key files: a secret of at least 32 bytes (`openssl rand -hex 32 > model.key`) signs and verifies with
HMAC-SHA256; an Ed25519 PEM private key (`openssl genpkey -algorithm ed25519 -out sign.pem`) signs and its
public key (`openssl pkey -in sign.pem -pubout -out verify.pem`) verifies, through the optional
`cryptography` package (`pip install 'churnwatch[signing]'`). Loaders verify the bytes they then hand to
`torch.jit.load`, before loading (TorchScript is code), and never trust the file to name the algorithm.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnwatch.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

SIGNATURE_FILE = "churnwatch/metadata.sig"
SIGNATURE_ENTRY = f"extra/{SIGNATURE_FILE}"
"""The signature's name inside the archive, below its top folder (torch keeps extra files under extra/)."""
HMAC_SHA256, ED25519 = "hmac-sha256", "ed25519"
MIN_SECRET_BYTES = 32
_DOMAIN = b"churnwatch model.pt signature v1\n"
"""Prefixed to every digest, so a churnwatch signature can never be replayed as another protocol's."""
_CHUNK = 1 << 20
_KEY_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Key:
    """A loaded key file. `key_id` is a short fingerprint of the verifying side (the public key, or the
    HMAC secret), written next to each signature so a mismatch can say which key signed."""

    path: Path
    algorithm: str
    key_id: str
    secret: bytes | None = field(default=None, repr=False)
    """The HMAC secret (HMAC-SHA256 keys)."""
    private: Any = field(default=None, repr=False)
    """cryptography's Ed25519PrivateKey (Ed25519 signing keys)."""
    public: Any = None
    """cryptography's Ed25519PublicKey (Ed25519 verify keys)."""

    @classmethod
    def load(cls, path: str | Path, role: str) -> Key:
        """The key in `path`; `role` (signing_key | verify_key) is the config key the messages name. A
        private key refuses to verify and a public key to sign, so the two stay on separate machines."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{role}={path}: cannot read the key file ({exc.strerror or exc})") from exc
        if raw.lstrip().startswith(b"-----BEGIN"):
            return cls._ed25519(path, raw, role)
        secret = raw.strip()
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{role}={path}: an HMAC secret of {len(secret)} bytes is too short (at least "
                f"{MIN_SECRET_BYTES}: openssl rand -hex 32 > {path}); an Ed25519 key is a PEM file"
            )
        key_id = hashlib.sha256(b"churnwatch key id\n" + secret).hexdigest()[:16]
        return cls(path, HMAC_SHA256, key_id, secret=secret)

    @classmethod
    def _ed25519(cls, path: Path, pem: bytes, role: str) -> Key:
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ed25519
        except ImportError as exc:
            raise ConfigError(
                f"{role}={path} is a PEM key: Ed25519 needs the optional package cryptography: "
                "pip install 'churnwatch[signing]'"
            ) from exc
        private = public = None
        try:
            if b"PRIVATE KEY" in pem:
                private = serialization.load_pem_private_key(pem, password=None)
                public = private.public_key()
            else:
                public = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{role}={path}: not a readable PEM key ({exc})") from exc
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise ConfigError(f"{role}={path}: a {type(public).__name__}; churnwatch signs with Ed25519 keys")
        if role == "signing_key" and private is None:
            raise ConfigError(
                f"{role}={path} is a public key: signing needs the private key "
                "(openssl genpkey -algorithm ed25519 -out sign.pem)"
            )
        if role == "verify_key" and private is not None:
            raise ConfigError(
                f"{role}={path} is a private key: verify with its public key (openssl pkey -in {path} "
                "-pubout -out verify.pem) and keep the private key off the machines that only load models"
            )
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(path, ED25519, hashlib.sha256(raw).hexdigest()[:16], private=private, public=public)

    def sign(self, digest: bytes) -> bytes:
        if self.secret is not None:
            return hmac.new(self.secret, digest, hashlib.sha256).digest()
        return self.private.sign(digest)

    def verifies(self, digest: bytes, signature: bytes) -> bool:
        if self.secret is not None:
            return hmac.compare_digest(self.sign(digest), signature)
        from cryptography.exceptions import InvalidSignature

        try:
            self.public.verify(signature, digest)
        except InvalidSignature:
            return False
        return True


def load_signing_key(path: str | Path | None) -> Key | None:
    """The key that signs written model files (config `signing_key`), or None to write them unsigned."""
    return Key.load(path, "signing_key") if path else None


def _inner(name: str) -> str:
    """An entry's name without the archive's top folder."""
    return name.split("/", 1)[1] if "/" in name else name


def archive_digest(archive: zipfile.ZipFile) -> bytes:
    """SHA-256 over every entry but the signature: each entry's length-prefixed inner name and the SHA-256
    of its content, in name order."""
    digest = hashlib.sha256(_DOMAIN)
    for info in sorted(archive.infolist(), key=lambda i: _inner(i.filename)):
        name = _inner(info.filename)
        if name == SIGNATURE_ENTRY:
            continue
        content = hashlib.sha256()
        with archive.open(info) as f:
            while chunk := f.read(_CHUNK):
                content.update(chunk)
        digest.update(len(name.encode()).to_bytes(8, "big") + name.encode() + content.digest())
    return digest.digest()


def sign_file(path: str | Path, key: Key) -> None:
    """Append the signature entry to the model file at `path`, as torch.jit.save wrote it."""
    with zipfile.ZipFile(path, "a") as archive:
        names = archive.namelist()
        if SIGNATURE_ENTRY in map(_inner, names):
            raise ArtifactError(f"{path}: already signed")
        signature = {
            "algorithm": key.algorithm,
            "key_id": key.key_id,
            "signature": key.sign(archive_digest(archive)).hex(),
        }
        top = names[0].split("/", 1)[0]
        archive.writestr(f"{top}/{SIGNATURE_ENTRY}", json.dumps(signature, sort_keys=True))


@dataclass(frozen=True)
class Verification:
    """What loading a model file demands of its signature: made by `key`'s key, over the file as it is; an
    unsigned file is refused when `required`, else loaded with a warning."""

    key: Key
    required: bool = False

    @classmethod
    def from_config(
        cls, verify_key: str | Path | None, require_signature: bool = False
    ) -> Verification | None:
        """From the config keys `verify_key` and `require_signature`; None when nothing is to be checked.
        Reads the key now, so a bad key fails before any work."""
        if not verify_key:
            if require_signature:
                raise ConfigError(
                    "require_signature=true needs verify_key=<the public key, or HMAC secret, file> "
                    "(or CHURNWATCH_VERIFY_KEY)"
                )
            return None
        return cls(Key.load(verify_key, "verify_key"), bool(require_signature))

    def check(self, data: bytes, path: str | Path) -> None:
        """Raise ArtifactError unless `data` (the bytes of the model file `path`) passes."""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                entries = [i for i in archive.infolist() if _inner(i.filename) == SIGNATURE_ENTRY]
                if not entries:
                    self._unsigned(path)
                    return
                if len(entries) > 1:
                    raise ArtifactError(f"{path}: signature check failed: {len(entries)} signature entries")
                found = _parse(archive.read(entries[0]), path)
                digest = archive_digest(archive)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError, EOFError) as exc:
            raise ArtifactError(f"{path}: signature check failed: not a readable zip ({exc})") from exc
        key = self.key
        if (found["algorithm"], found["key_id"]) != (key.algorithm, key.key_id):
            raise ArtifactError(
                f"{path}: signature check failed: signed with {found['algorithm']} key "
                f"{found['key_id']}, verify_key {key.path} is {key.algorithm} key {key.key_id}"
            )
        if not key.verifies(digest, found["signature"]):
            raise ArtifactError(
                f"{path}: signature check failed: the file changed after it was signed by key {key.key_id}"
            )

    def _unsigned(self, path: str | Path) -> None:
        if self.required:
            raise ArtifactError(f"{path}: signature check failed: the file is not signed (require_signature)")
        log.warning(
            "%s is not signed: loaded without a signature check (require_signature=true refuses it)", path
        )


def _parse(text: bytes, path: str | Path) -> dict[str, Any]:
    """The signature entry's fields, the signature as bytes; the file's own strings are shown in messages
    only once known to be an algorithm name and a hex key id."""
    try:
        found = json.loads(text)
        parsed = {
            "algorithm": found["algorithm"],
            "key_id": found["key_id"],
            "signature": bytes.fromhex(found["signature"]),
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: signature check failed: unreadable signature entry ({exc})") from exc
    if parsed["algorithm"] not in (HMAC_SHA256, ED25519) or not _KEY_ID.fullmatch(str(parsed["key_id"])):
        raise ArtifactError(f"{path}: signature check failed: unknown algorithm or key id in its entry")
    return parsed
