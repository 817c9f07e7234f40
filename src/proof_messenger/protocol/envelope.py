"""The proof envelope (protocol §3) in its JSON and CBOR forms.

Parsing is check 1 of §4: shape, sizes and types (``malformed_proof``), then the
version (``unsupported_version``) and algorithm (``unsupported_algorithm``). The
version and algorithm are looked at first among the fields, so a proof from a
future protocol is reported as such rather than as malformed. Unknown keys are
refused: a field we do not understand must never be silently ignored in a proof.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from . import cbor
from .encoding import b64u_decode, b64u_encode
from .errors import MalformedProof, UnsupportedAlgorithm, UnsupportedVersion

__all__ = [
    "ALG_ES256",
    "ALG_WEBAUTHN_ES256",
    "SUPPORTED_ALGORITHMS",
    "EnvelopeLimits",
    "Proof",
]

ALG_ES256 = "ES256"
ALG_WEBAUTHN_ES256 = "webauthn.ES256"
SUPPORTED_ALGORITHMS = frozenset({ALG_ES256, ALG_WEBAUTHN_ES256})
_BYTES_FIELDS = ("intent", "sig", "authenticator_data", "client_data_json", "public_key")
_ALL_KEYS = frozenset({"v", "alg", "kid", *_BYTES_FIELDS})
_WEBAUTHN_ONLY = ("authenticator_data", "client_data_json")


@dataclass(frozen=True, slots=True)
class EnvelopeLimits:
    """Upper bounds on each field, far above honest use and far below harm."""

    max_intent_bytes: int = 16 * 1024
    max_kid_chars: int = 1366  # base64url of a 1023-byte WebAuthn credential id
    max_sig_bytes: int = 80  # DER P-256 signatures are at most 72 bytes
    max_authenticator_data_bytes: int = 1024
    max_client_data_json_bytes: int = 4096
    max_public_key_bytes: int = 512
    max_envelope_bytes: int = 64 * 1024


DEFAULT_ENVELOPE_LIMITS = EnvelopeLimits()


@dataclass(frozen=True, slots=True)
class Proof:
    alg: str
    kid: str
    intent: bytes
    sig: bytes
    v: int = 1
    authenticator_data: bytes | None = None
    client_data_json: bytes | None = None
    public_key: bytes | None = None

    # --- output --------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "alg": self.alg, "kid": self.kid}
        for name in _BYTES_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = b64u_encode(value)
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_json_dict(), indent=indent)

    def to_cbor(self) -> bytes:
        out: dict[str, Any] = {"v": self.v, "alg": self.alg, "kid": self.kid}
        for name in _BYTES_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return cbor.encode(out)

    # --- input ---------------------------------------------------------------------------------
    @classmethod
    def from_json(
        cls, data: bytes | str | Mapping[str, Any], limits: EnvelopeLimits = DEFAULT_ENVELOPE_LIMITS
    ) -> Proof:
        if isinstance(data, bytes | str):
            if len(data) > limits.max_envelope_bytes:
                raise MalformedProof("envelope exceeds the size limit")
            fast = _fast_from_json(data, limits)
            if fast is not None:
                return fast
            data = _strict_json(data)
        return cls._from_map(data, text_bytes=True, limits=limits)

    @classmethod
    def from_mapping(
        cls,
        value: Mapping[str, Any],
        *,
        binary: bool,
        limits: EnvelopeLimits = DEFAULT_ENVELOPE_LIMITS,
    ) -> Proof:
        """From an already-decoded map: base64url text fields, or bytes when ``binary``."""
        return cls._from_map(value, text_bytes=not binary, limits=limits)

    @classmethod
    def from_cbor(cls, data: bytes, limits: EnvelopeLimits = DEFAULT_ENVELOPE_LIMITS) -> Proof:
        if len(data) > limits.max_envelope_bytes:
            raise MalformedProof("envelope exceeds the size limit")
        value = cbor.decode(data, strict=False, error=MalformedProof, root="envelope")
        return cls._from_map(value, text_bytes=False, limits=limits)

    @classmethod
    def _from_map(cls, value: Any, *, text_bytes: bool, limits: EnvelopeLimits) -> Proof:
        if not isinstance(value, Mapping):
            raise MalformedProof("envelope must be a map")
        version = value.get("v")
        if type(version) is not int:
            raise MalformedProof("v: required, an integer")
        if version != 1:
            raise UnsupportedVersion(f"v: proof version {version} is not supported")
        alg = value.get("alg")
        if not isinstance(alg, str):
            raise MalformedProof("alg: required, a text string")
        if alg not in SUPPORTED_ALGORITHMS:
            raise UnsupportedAlgorithm(
                f"alg: {alg[:32]!r} is not supported (use ES256 or webauthn.ES256)"
            )
        unknown = set(value) - _ALL_KEYS
        if unknown:
            names = ", ".join(sorted(str(k)[:32] for k in unknown)[:5])
            raise MalformedProof(f"unexpected field(s): {names}")
        kid = value.get("kid")
        if not isinstance(kid, str) or not 1 <= len(kid) <= limits.max_kid_chars:
            raise MalformedProof(f"kid: required, 1-{limits.max_kid_chars} characters")
        if not kid.isascii():
            try:
                kid.encode("utf-8")
            except UnicodeEncodeError as exc:
                # JSON can spell a lone surrogate ("\ud800"); no store can look it up.
                raise MalformedProof("kid: text is not valid Unicode (lone surrogate)") from exc
        fields: dict[str, bytes | None] = {}
        maxima = {
            "intent": limits.max_intent_bytes,
            "sig": limits.max_sig_bytes,
            "authenticator_data": limits.max_authenticator_data_bytes,
            "client_data_json": limits.max_client_data_json_bytes,
            "public_key": limits.max_public_key_bytes,
        }
        for name in _BYTES_FIELDS:
            raw = value.get(name)
            if raw is None:
                if name in value:
                    raise MalformedProof(f"{name}: must not be null")
                fields[name] = None
                continue
            fields[name] = _bytes_field(name, raw, text_bytes, maxima[name])
        for name in ("intent", "sig"):
            if not fields[name]:
                raise MalformedProof(f"{name}: required, non-empty")
        is_webauthn = alg == ALG_WEBAUTHN_ES256
        for name in _WEBAUTHN_ONLY:
            if is_webauthn and not fields[name]:
                raise MalformedProof(f"{name}: required for {ALG_WEBAUTHN_ES256}")
            if not is_webauthn and fields[name] is not None:
                raise MalformedProof(f"{name}: only allowed with {ALG_WEBAUTHN_ES256}")
        if not is_webauthn and len(fields["sig"] or b"") != 64:
            raise MalformedProof("sig: ES256 signatures are 64 bytes (r||s)")
        return cls(
            v=1,
            alg=alg,
            kid=kid,
            intent=fields["intent"] or b"",
            sig=fields["sig"] or b"",
            authenticator_data=fields["authenticator_data"],
            client_data_json=fields["client_data_json"],
            public_key=fields["public_key"],
        )


class _JsonEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """The one shape an honest JSON envelope has, for msgspec's typed C decoder."""

    v: int
    alg: str
    kid: str
    intent: str
    sig: str
    public_key: str | msgspec.UnsetType = msgspec.UNSET
    authenticator_data: str | msgspec.UnsetType = msgspec.UNSET
    client_data_json: str | msgspec.UnsetType = msgspec.UNSET


_FAST_DECODER = msgspec.json.Decoder(_JsonEnvelope)


def _fast_from_json(data: bytes | str, limits: EnvelopeLimits) -> Proof | None:
    """A valid envelope, or ``None`` whenever the strict path must judge the input.

    The strict path (the stdlib decoder with hooks, then :meth:`Proof._from_map`) costs
    several times more and names every problem; this one only ever *accepts*, and only
    what the strict path accepts with the same result. msgspec keeps the last of
    duplicate keys, so duplicates are ruled out by counting: without a backslash no
    escape exists, every ``"`` delimits a string, and each key plus each text value is
    exactly one string, so any repeated key shows up as extra quotes. Everything else
    (floats, ``true`` for ``v``, nulls, unknown fields, non-UTF-8) fails msgspec's typed
    decode, and every rule of :meth:`Proof._from_map` that does not hold falls back.
    """
    if isinstance(data, bytes):
        if b"\\" in data:
            return None
        quotes = data.count(b'"')
    else:
        if "\\" in data:
            return None
        quotes = data.count('"')
    try:
        env = _FAST_DECODER.decode(data)
    except (ValueError, RecursionError):  # msgspec errors, and str that is not UTF-8
        return None
    public_key = env.public_key
    authenticator_data = env.authenticator_data
    client_data_json = env.client_data_json
    # the "v" key, then key + value for each text field: alg, kid, intent, sig always
    strings = 9
    if public_key is not msgspec.UNSET:
        strings += 2
    if authenticator_data is not msgspec.UNSET:
        strings += 2
    if client_data_json is not msgspec.UNSET:
        strings += 2
    if quotes != 2 * strings or env.v != 1:
        return None
    alg = env.alg
    kid = env.kid
    if alg not in SUPPORTED_ALGORITHMS or not 1 <= len(kid) <= limits.max_kid_chars:
        return None
    if not kid.isascii():
        return None
    try:
        intent = _fast_bytes(env.intent, limits.max_intent_bytes)
        sig = _fast_bytes(env.sig, limits.max_sig_bytes)
        pk = (
            None
            if public_key is msgspec.UNSET
            else _fast_bytes(public_key, limits.max_public_key_bytes)
        )
        ad = (
            None
            if authenticator_data is msgspec.UNSET
            else _fast_bytes(authenticator_data, limits.max_authenticator_data_bytes)
        )
        cd = (
            None
            if client_data_json is msgspec.UNSET
            else _fast_bytes(client_data_json, limits.max_client_data_json_bytes)
        )
    except ValueError:
        return None
    if not intent or not sig:
        return None
    if alg == ALG_WEBAUTHN_ES256:
        if not ad or not cd:
            return None
    elif ad is not None or cd is not None or len(sig) != 64:
        return None
    return Proof(
        v=1,
        alg=alg,
        kid=kid,
        intent=intent,
        sig=sig,
        authenticator_data=ad,
        client_data_json=cd,
        public_key=pk,
    )


def _fast_bytes(text: str, maximum: int) -> bytes:
    """Decode one base64url field within ``maximum`` bytes; ``ValueError`` otherwise."""
    if len(text) > (maximum * 4 + 2) // 3:
        raise ValueError("too long")
    data = b64u_decode(text)
    if len(data) > maximum:
        raise ValueError("too long")
    return data


def _bytes_field(name: str, raw: Any, text_bytes: bool, maximum: int) -> bytes:
    if text_bytes:
        if not isinstance(raw, str):
            raise MalformedProof(f"{name}: must be a base64url string")
        if len(raw) > (maximum * 4 + 2) // 3:
            raise MalformedProof(f"{name}: longer than {maximum} bytes")
        try:
            data = b64u_decode(raw)
        except ValueError as exc:
            raise MalformedProof(f"{name}: {exc}") from exc
    else:
        if not isinstance(raw, bytes):
            raise MalformedProof(f"{name}: must be a CBOR byte string")
        data = raw
    if len(data) > maximum:
        raise MalformedProof(f"{name}: longer than {maximum} bytes")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:32]!r}")
        out[key] = value
    return out


def _no_float(text: str) -> Any:
    raise ValueError("numbers with a fraction or exponent are not allowed")


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not allowed")


#: Built once: json.loads with hooks builds a new decoder on every call.
_DECODER = json.JSONDecoder(
    parse_float=_no_float, parse_constant=_no_constant, object_pairs_hook=_unique_keys
)


def _strict_json(data: bytes | str) -> Any:
    """The JSON value of ``data`` by the strict rules, or the ``MalformedProof`` naming why."""
    try:
        # exactly what json.loads does with bytes
        text = (
            data.decode(json.detect_encoding(data), "surrogatepass")
            if isinstance(data, bytes)
            else data
        )
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedProof(f"envelope is not valid JSON: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
