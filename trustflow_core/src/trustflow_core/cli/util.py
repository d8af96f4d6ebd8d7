"""``trustflow util``: local utilities, the equivalent of upstream ``cms_util``
(docs/compat.md#cms-util).

Commands (kebab-case like upstream): ``generate-rsa-keypair``, ``generate-party-id``,
``generate-data-key-b64``, ``encrypt-file``, ``decrypt-file``, ``encrypt-file-inplace``,
``decrypt-file-inplace``, and the data-export vote tools ``sign-vote-request``, ``voter-sign``,
``generate-vote-result`` (byte-identical bodies and signatures to upstream), and ours:
``verify-audit`` (an owner's audit bundle of the Capsule Manager, docs/audit.md).
Differences from upstream, all deliberate:

* data keys are decoded strictly (canonical standard base64 of 16, 24 or 32 bytes), where
  upstream silently accepts garbage; ``--data-key-file`` is an alternative to putting the
  key on the command line;
* ``generate-rsa-keypair`` prints the party id, writes the private key with mode 0600, takes
  ``--days`` (upstream: 30) and refuses to overwrite files without ``--force``;
* outputs are replaced atomically, so a failed decryption leaves nothing behind, and
  in-place variants never lose the original;
* ``encrypt-file`` / ``encrypt-file-inplace`` take ``--format v1|v2``: ``v1`` (default) is
  upstream's data capsule, ``v2`` our authenticated format (:mod:`trustflow_core.capsule.v2`)
  that upstream tools cannot read; ``decrypt-file`` / ``decrypt-file-inplace`` detect the
  format (:mod:`trustflow_core.capsule`);
* errors are one ``Error: ...`` line with exit code 1 (upstream: an ``AssertionError``
  traceback).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hmac
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from .. import capsule
from ..errors import (
    AccessDenied,
    InvalidInput,
    ObjectNotFound,
    TrustflowError,
    VerificationError,
)
from ..fileio import atomic_write_bytes
from ..identity import load_pem_chain, party_id_of_chain, party_id_of_key, self_signed_cert

F = TypeVar("F", bound=Callable[..., Any])

PROGRESS_THRESHOLD = 4 * 1024 * 1024
"""Files at least this large get a progress bar on stderr (unless ``--quiet``)."""

RSA_BITS = 3072
CERT_COMMON_NAME = "capsule-manager"

_KEY_HELP_NOTE = (
    "A key given on the command line is visible to other local users (ps) and lands in "
    "shell history; prefer --data-key-file."
)


@click.group()
def util() -> None:
    """Local utilities: key pairs, party ids, data keys and data-capsule files
    (the equivalent of upstream cms_util)."""


# ---- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_errors() -> Iterator[None]:
    """Turn OS errors into one-line Trustflow errors naming the file."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"{where}{exc.strerror or exc}"
        if isinstance(exc, FileNotFoundError):
            raise ObjectNotFound(message) from exc
        if isinstance(exc, PermissionError):
            raise AccessDenied(message) from exc
        raise TrustflowError(message) from exc


def decode_data_key(text: str, origin: str = "data key") -> bytes:
    """Decode a data key given as canonical standard base64 with padding (16/24/32 bytes).

    Raises :class:`InvalidInput` naming ``origin``; the message never contains the key.
    """
    text = text.strip()
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise InvalidInput(f"{origin} is not valid standard base64 ({exc})") from None
    if not hmac.compare_digest(base64.b64encode(key), text.encode()):
        raise InvalidInput(f"{origin} is not canonical standard base64")
    if len(key) not in capsule.KEY_LENGTHS:
        raise InvalidInput(
            f"{origin} decodes to {len(key)} bytes; a data key must be 16, 24 or 32 bytes"
        )
    return key


def _key_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--data-key-file",
        type=click.File("r"),
        help="File holding the base64 data key (as written by generate-data-key-b64 "
        "--output-file); '-' reads it from stdin.",
    )(func)
    return click.option(
        "--data-key-b64",
        metavar="KEY",
        help=f"The data key, standard base64 of 16, 24 or 32 bytes. {_KEY_HELP_NOTE}",
    )(func)


def _resolve_key(data_key_b64: str | None, data_key_file: TextIO | None) -> bytes:
    if (data_key_b64 is None) == (data_key_file is None):
        raise click.UsageError("give exactly one of --data-key-b64 and --data-key-file")
    if data_key_file is not None:
        return decode_data_key(data_key_file.read(), f"data key in {data_key_file.name}")
    assert data_key_b64 is not None
    return decode_data_key(data_key_b64, "--data-key-b64")


_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(capsule.FORMATS),
    default=capsule.DEFAULT_FORMAT,
    show_default=True,
    help="v1: upstream's data capsule (upstream tools read it); v2: authenticated (detects "
    "reordered, dropped or truncated blocks; read by trustflow only).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@contextlib.contextmanager
def _progress(path: Path, quiet: bool, label: str) -> Iterator[capsule.Progress | None]:
    """A progress callback drawing a bar on stderr for large files, else None."""
    with _file_errors():
        size = path.stat().st_size
    if quiet or size < PROGRESS_THRESHOLD:
        yield None
        return
    with click.progressbar(length=size, label=label, file=sys.stderr) as bar:
        yield bar.update


def _check_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InvalidInput(f"{path} already exists; pass --force to overwrite it")


def _src_path() -> Callable[..., Any]:
    return click.option(
        "--source-file", required=True, type=click.Path(dir_okay=False, path_type=Path)
    )


def _dest_path(default_suffix: str) -> Callable[..., Any]:
    return click.option(
        "--dest-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"Output file (default: SOURCE{default_suffix}); replaced atomically.",
    )


# ---- identities ----------------------------------------------------------------------------


def generate_self_signed(days: int, *, key_bits: int = RSA_BITS) -> tuple[bytes, bytes, str]:
    """A fresh RSA key (3072 bits unless ``key_bits``) and self-signed certificate like
    upstream ``generate-rsa-keypair`` (docs/compat.md#cm-certificate): CN=capsule-manager,
    SHA256withRSA, random serial, valid from one day ago for ``days`` days. Returns (PKCS#8 PEM key,
    PEM certificate, party id)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    cert = self_signed_cert(
        key,
        CERT_COMMON_NAME,
        backdate=datetime.timedelta(days=1),
        lifetime=datetime.timedelta(days=days),
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    return key_pem, cert_pem, party_id_of_key(key.public_key())


def _key_pair_options(key_what: str, cert_what: str) -> Callable[[F], F]:
    """``--private-key-file``, ``--cert-file``, ``--days`` and ``--force`` of the key pair
    generators."""

    def decorate(command: F) -> F:
        for option in reversed(
            (
                click.option(
                    "--private-key-file",
                    required=True,
                    type=click.Path(dir_okay=False, path_type=Path),
                    help=f"Where to write the {key_what} (PKCS#8 PEM, unencrypted, mode 0600).",
                ),
                click.option(
                    "--cert-file",
                    required=True,
                    type=click.Path(dir_okay=False, path_type=Path),
                    help=f"Where to write the {cert_what} (PEM).",
                ),
                click.option(
                    "--days",
                    type=click.IntRange(min=1),
                    default=365,
                    show_default=True,
                    help="Validity of the certificate.",
                ),
                click.option("--force", is_flag=True, help="Overwrite existing files."),
            )
        ):
            command = option(command)
        return command

    return decorate


def _write_key_pair(
    private_key_file: Path, cert_file: Path, key_pem: bytes, cert_pem: bytes, force: bool
) -> None:
    """Write the key (0600) and the certificate, refusing to overwrite without ``force``."""
    if private_key_file.resolve() == cert_file.resolve():
        raise InvalidInput("--private-key-file and --cert-file must be different files")
    _check_overwrite(private_key_file, force)
    _check_overwrite(cert_file, force)
    with _file_errors():
        atomic_write_bytes(private_key_file, key_pem, mode=0o600)
        atomic_write_bytes(cert_file, cert_pem, mode=0o644)


@util.command("generate-rsa-keypair")
@_key_pair_options("private key", "self-signed certificate")
@_json_option
def generate_rsa_keypair(
    private_key_file: Path, cert_file: Path, days: int, force: bool, as_json: bool
) -> None:
    """Generate an RSA-3072 key pair and a self-signed certificate (CN=capsule-manager);
    print the party id."""
    key_pem, cert_pem, party_id = generate_self_signed(days)
    _write_key_pair(private_key_file, cert_file, key_pem, cert_pem, force)
    if as_json:
        result = {
            "party_id": party_id,
            "private_key_file": str(private_key_file),
            "cert_file": str(cert_file),
        }
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(party_id)


@util.command("generate-ecdh-keypair")
@_key_pair_options("P-256 private key", "ECDH offer certificate for ra-proxy --ecdh-cert-path")
def generate_ecdh_keypair(private_key_file: Path, cert_file: Path, days: int, force: bool) -> None:
    """Generate an online app's P-256 key-agreement key and its self-signed offer certificate
    (CN=trustflow-ecdh, critical keyUsage keyAgreement): the RA Proxy serves it after the app
    certificate (--ecdh-cert-path), the gateway opens ECDH-ES+A128KW envelopes with the key
    (docs/online.md#ecdh-profile)."""
    import datetime

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from ..ecdh_offer import offer_certificate

    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert = offer_certificate(key, lifetime=datetime.timedelta(days=days))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_key_pair(private_key_file, cert_file, key_pem, cert_pem, force)
    click.echo(f"wrote {private_key_file} (0600) and {cert_file}")


@util.command("generate-party-id")
@click.option(
    "--cert-file",
    "cert_files",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate; repeat in chain order (leaf first). The party id is that of the "
    "LAST certificate.",
)
@_json_option
def generate_party_id(cert_files: tuple[Path, ...], as_json: bool) -> None:
    """Print the party id (base32 of SHA-256 of the public key) of a certificate chain."""
    chain = []
    for path in cert_files:
        with _file_errors():
            pem = path.read_bytes()
        try:
            chain.extend(load_pem_chain(pem))
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: {exc}") from exc
    party_id = party_id_of_chain(chain)
    click.echo(json.dumps({"party_id": party_id}) if as_json else party_id)


@util.command("generate-data-key-b64")
@click.option(
    "--bit-len",
    type=click.Choice(["128", "192", "256"]),
    default="128",
    show_default=True,
    help="Key size (AES-128/192/256). Upstream C++ readers accept only 128 and 256.",
)
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the key to this file (mode 0600) instead of stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --output-file.")
@_json_option
def generate_data_key_b64(
    bit_len: str, output_file: Path | None, force: bool, as_json: bool
) -> None:
    """Print a random data key as standard base64."""
    import secrets

    bits = int(bit_len)
    key_b64 = base64.b64encode(secrets.token_bytes(bits // 8)).decode()
    if output_file is not None:
        _check_overwrite(output_file, force)
        with _file_errors():
            atomic_write_bytes(output_file, f"{key_b64}\n".encode(), mode=0o600)
        if as_json:
            click.echo(json.dumps({"bit_len": bits, "output_file": str(output_file)}))
        return
    click.echo(json.dumps({"bit_len": bits, "data_key_b64": key_b64}) if as_json else key_b64)


# ---- data capsules -------------------------------------------------------------------------


def _capsule_result(
    as_json: bool, action: str, source: Path, dest: Path, size_in: int, size_out: int, **extra: str
) -> None:
    """With ``--json``: one object naming the files and their sizes; else nothing (the
    upstream commands print nothing either)."""
    if as_json:
        result = {
            "action": action,
            "source_file": str(source),
            "dest_file": str(dest),
            "source_bytes": size_in,
            "dest_bytes": size_out,
            **extra,
        }
        click.echo(json.dumps(result, indent=2))


@util.command("encrypt-file")
@_src_path()
@_dest_path(".enc")
@_key_options
@_format_option
@_quiet_option
@_json_option
def encrypt_file(
    source_file: Path,
    dest_file: Path | None,
    data_key_b64: str | None,
    data_key_file: TextIO | None,
    fmt: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Encrypt a file into a data capsule (format v1 unless --format v2)."""
    key = _resolve_key(data_key_b64, data_key_file)
    dest = dest_file or Path(f"{source_file}.enc")
    with _progress(source_file, quiet or as_json, "encrypting") as progress, _file_errors():
        size_in = source_file.stat().st_size
        size_out = capsule.encrypt_file(source_file, dest, key, fmt=fmt, progress=progress)
    _capsule_result(as_json, "encrypt", source_file, dest, size_in, size_out, format=fmt)


@util.command("decrypt-file")
@_src_path()
@_dest_path(".dec")
@_key_options
@_quiet_option
@_json_option
def decrypt_file(
    source_file: Path,
    dest_file: Path | None,
    data_key_b64: str | None,
    data_key_file: TextIO | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Decrypt a data capsule, v1 or v2 (detected); output mode 0600, nothing is written if
    it fails."""
    key = _resolve_key(data_key_b64, data_key_file)
    dest = dest_file or Path(f"{source_file}.dec")
    with _progress(source_file, quiet or as_json, "decrypting") as progress, _file_errors():
        size_in = source_file.stat().st_size
        size_out = capsule.decrypt_file(source_file, dest, key, progress=progress)
    _capsule_result(as_json, "decrypt", source_file, dest, size_in, size_out)


@util.command("encrypt-file-inplace")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_key_options
@_format_option
@_quiet_option
@_json_option
def encrypt_file_inplace(
    path: Path,
    data_key_b64: str | None,
    data_key_file: TextIO | None,
    fmt: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Replace a file by its data capsule (atomically; format v1 unless --format v2)."""
    key = _resolve_key(data_key_b64, data_key_file)
    with _progress(path, quiet or as_json, "encrypting") as progress, _file_errors():
        size_in = path.stat().st_size
        capsule.encrypt_file_inplace(path, key, fmt=fmt, progress=progress)
        size_out = path.stat().st_size
    _capsule_result(as_json, "encrypt", path, path, size_in, size_out, format=fmt)


@util.command("decrypt-file-inplace")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_key_options
@_quiet_option
@_json_option
def decrypt_file_inplace(
    path: Path, data_key_b64: str | None, data_key_file: TextIO | None, quiet: bool, as_json: bool
) -> None:
    """Replace a data capsule, v1 or v2 (detected), by its plaintext (atomically, mode
    0600; untouched on error)."""
    key = _resolve_key(data_key_b64, data_key_file)
    with _progress(path, quiet or as_json, "decrypting") as progress, _file_errors():
        size_in = path.stat().st_size
        capsule.decrypt_file_inplace(path, key, progress=progress)
        size_out = path.stat().st_size
    _capsule_result(as_json, "decrypt", path, path, size_in, size_out)


# ---- data-export votes (docs/compat.md#votes) ------------------------------------------------


def _read_yaml(path: Path) -> Any:
    import yaml

    with _file_errors():
        text = path.read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path} is not valid YAML: {exc}") from None


def _write_yaml(path: Path, data: Any) -> None:
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1 << 16)
    with _file_errors():
        atomic_write_bytes(path, text.encode(), mode=0o644)


def _signer(spec: dict[str, Any], where: str) -> tuple[list[str], Any]:
    """Pop ``cert_chain_file`` (list of PEM paths) and ``private_key_file`` from ``spec``;
    return (PEM texts, RSA key or None)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    files = spec.pop("cert_chain_file", None)
    key_file = spec.pop("private_key_file", None)
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise InvalidInput(f"{where}: cert_chain_file must be a list of PEM files")
    with _file_errors():
        chain = [Path(f).read_text() for f in files]
    for path, pem in zip(files, chain, strict=True):
        try:
            load_pem_chain(pem.encode())
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {path}: {exc}") from None
    if key_file is None:
        return chain, None
    with _file_errors():
        key_pem = Path(key_file).read_bytes()
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{where}: private_key_file {key_file}: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidInput(f"{where}: private_key_file {key_file} is not an RSA key")
    return chain, key


@util.command("sign-vote-request")
@click.option("--vote-request-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--signed-vote-request-file", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
def sign_vote_request(vote_request_file: Path, signed_vote_request_file: Path) -> None:
    """Sign a data-export vote request (vote_request: type, approved_threshold,
    approved_action, cert_chain_file, private_key_file) like upstream cms_util."""
    from ..roles.capsule_manager_protocol import votes

    doc = _read_yaml(vote_request_file)
    spec = doc.get("vote_request") if isinstance(doc, dict) else None
    if not isinstance(spec, dict):
        raise InvalidInput(f"{vote_request_file}: no vote_request mapping")
    chain, key = _signer(spec, str(vote_request_file))
    _write_yaml(signed_vote_request_file, votes.sign_vote_request(spec, chain, key))


@util.command("voter-sign")
@click.option("--voter-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--signed-voter-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
def voter_sign(voter_file: Path, signed_voter_file: Path) -> None:
    """Sign a vote (vote_request_signature, action, cert_chain_file, private_key_file)."""
    from ..roles.capsule_manager_protocol import votes

    spec = _read_yaml(voter_file)
    if not isinstance(spec, dict):
        raise InvalidInput(f"{voter_file}: not a mapping")
    request_signature = spec.pop("vote_request_signature", None)
    if not isinstance(request_signature, str) or not request_signature:
        raise InvalidInput(f"{voter_file}: vote_request_signature is required")
    chain, key = _signer(spec, str(voter_file))
    if key is None:
        raise InvalidInput(f"{voter_file}: private_key_file is required")
    _write_yaml(signed_voter_file, votes.voter_sign(spec, request_signature, chain, key))


@util.command("generate-vote-result")
@click.option(
    "--signed-vote-request-file", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--signed-voter-files",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option("--vote-result-file", required=True, type=click.Path(dir_okay=False, path_type=Path))
def generate_vote_result(
    signed_vote_request_file: Path, signed_voter_files: tuple[Path, ...], vote_result_file: Path
) -> None:
    """Combine a signed vote request and signed votes into the data-export certificate."""
    from ..roles.capsule_manager_protocol import votes

    request = _read_yaml(signed_vote_request_file)
    needed = ("cert_chain", "body", "vote_request_signature")
    if not isinstance(request, dict) or any(k not in request for k in needed):
        raise InvalidInput(f"{signed_vote_request_file}: needs {', '.join(needed)}")
    voters = []
    for path in signed_voter_files:
        voter = _read_yaml(path)
        if not isinstance(voter, dict) or any(
            k not in voter for k in ("cert_chain", "body", "voter_signature")
        ):
            raise InvalidInput(f"{path}: needs cert_chain, body, voter_signature")
        voters.append(voter)
    with _file_errors():
        atomic_write_bytes(vote_result_file, votes.vote_result(request, voters).encode())


@util.command("verify-audit")
@click.argument("audit_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--cm-cert",
    "cm_cert_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The CM's certificate (PEM) the tree heads must be signed with.",
)
@click.option(
    "--tee-plat",
    default=None,
    help="Instead of (or besides) --cm-cert: verify the CM attestation report in the bundle "
    "with this verifier backend (tdx, csv, sim, ...) and use the certificate it binds.",
)
@click.option(
    "--tee-constraint",
    "tee_constraints",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A measurement the CM's report must have (the verifier's constraint fields), repeatable.",
)
@click.option(
    "--previous",
    type=click.Path(dir_okay=False, path_type=Path),
    help="An earlier audit of the same owner and filters: its head must be the start of the "
    "bundle's consistency proof and its entries must be unchanged.",
)
@click.option(
    "--owner", default=None, help="Party id every entry must belong to (default: the bundle's)."
)
def verify_audit(
    audit_file: Path,
    cm_cert_file: Path | None,
    tee_plat: str | None,
    tee_constraints: tuple[str, ...],
    previous: Path | None,
    owner: str | None,
) -> None:
    """Check a `trustflow cms audit --json` bundle offline: the CM's signature on the tree
    head, every entry's form, position and inclusion proof, the consistency proof from the
    previous head; with --tee-plat, the CM's attestation report binding its certificate.
    Exit 1 naming the entry or head at fault."""
    import asyncio

    from ..roles.capsule_manager_client.audit import attested_cm_cert
    from ..roles.capsule_manager_protocol.audit import cm_public_key, verify_bundle

    if cm_cert_file is None and tee_plat is None:
        raise InvalidInput("give --cm-cert, --tee-plat or both")

    def load(path: Path) -> Any:
        with _file_errors():
            text = path.read_text()
        try:
            return json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"{path} is not JSON: {exc}") from None

    bundle = load(audit_file)
    cert_pem = None
    if cm_cert_file is not None:
        with _file_errors():
            cert_pem = cm_cert_file.read_text()
    if tee_plat is not None:
        if not isinstance(bundle, dict):
            raise InvalidInput("an audit bundle must be a JSON object")
        constraints: dict[str, str | None] = {}
        for item in tee_constraints:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise InvalidInput(f"--tee-constraint {item!r} is not FIELD=VALUE")
            constraints[name] = value
        from ..roles._options import command_plugin_manager

        pm = command_plugin_manager()
        attested = asyncio.run(attested_cm_cert(bundle, tee_plat, constraints, pm=pm))
        if cert_pem is not None and attested.strip() != cert_pem.strip():
            raise VerificationError("cm_cert", "the attested CM certificate is not --cm-cert")
        cert_pem = attested
    assert cert_pem is not None
    key = cm_public_key(cert_pem)
    earlier = load(previous) if previous is not None else None
    if owner is None and isinstance(bundle, dict) and isinstance(bundle.get("owner"), str):
        owner = bundle["owner"]
    if earlier is not None:
        verify_bundle(earlier, key, owner=owner)
    result = verify_bundle(bundle, key, owner=owner, previous=earlier)
    since = (
        f", consistent with the head of size {result.consistent_with.size}"
        if result.consistent_with is not None
        else ""
    )
    click.echo(
        f"verified: {len(result.entries)} entries in the CM's log of {result.head.size} entries "
        f"(root {result.head.root.hex()}){since}"
    )
