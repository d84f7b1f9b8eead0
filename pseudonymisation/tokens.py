"""Keyed, two-layer pseudonyms for NHS numbers, computed a whole column at a time.

Layer one, the *internal pseudonym*, is what the TRE stores at ingestion: the NHS number packed into
one 16-byte block with a domain tag and encrypted with AES-256 under the TRE's **linkage key**.
Layer two, the *project token*, is the internal pseudonym encrypted again under the **project key**
and written as ``T`` plus 32 letters: the hex digits of the ciphertext spelled with sixteen
consonants (``T`` + ``[bcdfghjkmnpqrstv]{32}``), so a token holds no digit and no word.

Why a block cipher and not a hash: AES is a keyed permutation, so one call over a whole column of
16-byte blocks runs at memory speed, and governed re-identification is a decryption by the holder of
both keys rather than a table nobody should have to keep. Equal inputs give equal outputs by design
(that is what makes a pseudonym deterministic); every input is exactly one block, so ECB leaks
nothing beyond that equality.

Nothing here reads keys from anywhere: callers pass key bytes in (the key provider lives in the
control plane). Key material never appears in a repr, an exception or a manifest; ``key_fingerprint``
gives a non-secret id to record instead.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from pseudonymisation import nhs_number

KEY_BYTES = 32
BLOCK_BYTES = 16
TOKEN_PREFIX = "T"  # noqa: S105 - a label, not a secret
INVALID_TOKEN_PREFIX = "INVALID-"  # noqa: S105
TOKEN_ALPHABET = b"bcdfghjkmnpqrstv"
# Each byte spelled as two letters at once: one little-endian uint16 per byte, first letter low.
_BYTE_TO_LETTERS = (
    np.frombuffer(TOKEN_ALPHABET, np.uint8)[np.arange(256) >> 4].astype("<u2")
    | np.frombuffer(TOKEN_ALPHABET, np.uint8)[np.arange(256) & 15].astype("<u2") << 8
)
_FROM_LETTERS = bytes.maketrans(TOKEN_ALPHABET, b"0123456789abcdef")
_TOKEN_BODY = re.compile(r"[bcdfghjkmnpqrstv]{32}")

# Six-byte tags put valid numbers, ten-digit numbers that fail the check digit, and anything else
# in separate domains, so no invalid value can ever share a pseudonym with a valid one.
_TAG_VALID = b"TREnv1"
_TAG_BAD_CHECK = b"TREbc1"
# A person of the person index who holds no trusted NHS number: ten bytes of their person key.
_TAG_PERSON = b"TREpi1"
PERSON_KEY_BYTES = BLOCK_BYTES - len(_TAG_PERSON)
_JUNK_LABEL = b"tre/junk-nhs-number/v1"
_TAG_VALID_NP = np.frombuffer(_TAG_VALID, dtype=np.uint8)
_TAG_BAD_CHECK_NP = np.frombuffer(_TAG_BAD_CHECK, dtype=np.uint8)
# Work a column in slices this long: temporaries stay in the CPU cache and the OS is not asked for
# (and made to zero) hundreds of megabytes of fresh pages per call.
_SLICE_ROWS = 1 << 15
# What Python's \s matches (as ``nhs_number.normalise`` uses it), spelled for RE2, whose \s is ASCII.
_SEPARATORS = r"[\s\x0b\x1c-\x1f\x85\p{Z}\-]"
_WEIGHTS = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2], dtype=np.float32)


class KeyMaterialError(ValueError):
    """Raised for a key of the wrong size; its message never contains the key."""


class Status(IntEnum):
    """Why a value did or did not yield a valid-namespace pseudonym."""

    VALID = 0
    MISSING = 1
    INVALID_FORMAT = 2  # not ten digits after removing spaces and dashes
    BAD_CHECK_DIGIT = 3


STATUS_REASONS = {
    Status.MISSING: "nhs_number_missing",
    Status.INVALID_FORMAT: "nhs_number_invalid_format",
    Status.BAD_CHECK_DIGIT: "nhs_number_bad_check_digit",
}


# --------------------------------------------------------------------------------------------------
# Keys


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise KeyMaterialError(f"a token key must be {KEY_BYTES} bytes")
    return bytes(key)


def generate_key() -> bytes:
    """A fresh random 256-bit key: the right kind of project key when it must be shreddable."""
    return secrets.token_bytes(KEY_BYTES)


def derive_key(master_secret: bytes, purpose: str, context: str = "", salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 from a master secret; ``purpose`` and ``context`` (e.g. a project id) form the info.

    A key derived only from the master secret can always be derived again, so it cannot be shredded;
    pass a random per-project ``salt`` (kept by the key provider and destroyed at closure) when the
    derived key must become unrecoverable.
    """
    if len(master_secret) < KEY_BYTES:
        raise KeyMaterialError(f"a master secret must be at least {KEY_BYTES} bytes")
    info = f"tre/{purpose}/v1/{context}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(master_secret)


def derive_linkage_key(master_secret: bytes) -> bytes:
    """The TRE-wide key for internal pseudonyms (layer one)."""
    return derive_key(master_secret, "linkage")


def derive_project_key(master_secret: bytes, project_id: str, salt: bytes | None = None) -> bytes:
    """A project's token key (layer two); see ``derive_key`` for why a salt makes it shreddable."""
    if not project_id:
        raise ValueError("a project key needs a project id")
    return derive_key(master_secret, "project-token", project_id, salt)


def derive_subkey(project_key: bytes, purpose: str) -> bytes:
    """A key for one use inside a project (e.g. date shifting), so no key serves two purposes."""
    return derive_key(_check_key(project_key), purpose)


def wrap_key(key_encryption_key: bytes, key: bytes) -> bytes:
    """Wrap a key (RFC 3394) for storage; destroying the wrapped copy shreds the key."""
    return aes_key_wrap(_check_key(key_encryption_key), _check_key(key))


def unwrap_key(key_encryption_key: bytes, wrapped: bytes) -> bytes:
    return aes_key_unwrap(_check_key(key_encryption_key), wrapped)


def key_fingerprint(key: bytes) -> str:
    """A short non-secret id for a key (a keyed hash of a constant), safe for manifests and logs."""
    return "k1:" + hmac.new(_check_key(key), b"tre/key-fingerprint/v1", hashlib.sha256).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Block cipher over whole columns


class _Ecb:
    """AES-256 applied slice by slice into caller-owned arrays, so a column costs no extra copies."""

    def __init__(self, key: bytes, *, decrypt: bool = False) -> None:
        cipher = Cipher(algorithms.AES(_check_key(key)), modes.ECB())  # noqa: S305 - one block per value  # nosec B305
        self._op = cipher.decryptor() if decrypt else cipher.encryptor()
        self._scratch = bytearray()

    def apply(self, blocks: np.ndarray, out: np.ndarray) -> None:
        need = blocks.nbytes + BLOCK_BYTES - 1  # update_into wants room for one more block
        if len(self._scratch) < need:
            self._scratch = bytearray(need)
        # A contiguous array is a buffer; the type stubs only name bytes-like types.
        written = self._op.update_into(np.ascontiguousarray(blocks), self._scratch)  # type: ignore[arg-type]
        out[:] = np.frombuffer(self._scratch, dtype=np.uint8, count=written).reshape(out.shape)


def _ecb(key: bytes, blocks: np.ndarray, *, decrypt: bool = False) -> np.ndarray:
    """AES-256 over an (n, 16) uint8 array in one call; each row is an independent block."""
    cipher = Cipher(algorithms.AES(_check_key(key)), modes.ECB())  # noqa: S305 - one block per value  # nosec B305
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    out = op.update(np.ascontiguousarray(blocks).tobytes()) + op.finalize()
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, BLOCK_BYTES)


def keyed_uint32(blocks: np.ndarray, key: bytes) -> np.ndarray:
    """A keyed pseudo-random uint32 per block (e.g. a per-patient date shift), the same for equal blocks."""
    out = np.empty_like(blocks)
    ecb = _Ecb(key)
    for lo in range(0, len(blocks), _SLICE_ROWS):
        ecb.apply(blocks[lo : lo + _SLICE_ROWS], out[lo : lo + _SLICE_ROWS])
    return np.ascontiguousarray(out[:, :4]).view("<u4").reshape(-1)


# --------------------------------------------------------------------------------------------------
# NHS numbers as a column


def _as_digit_strings(values: pa.Array) -> pa.Array:
    """Normalise a column the way ``nhs_number.normalise`` does a value: strings without spaces or
    dashes, integers zero-padded to ten digits."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_integer(values.type):
        in_range = pc.and_(pc.greater_equal(values, 0), pc.less_equal(values, 9_999_999_999))
        text = pc.utf8_lpad(pc.cast(values, pa.string()), width=10, padding="0")
        return pc.if_else(in_range, text, pa.scalar("x", pa.string()))
    if pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    if not pa.types.is_string(values.type):
        raise TypeError("NHS numbers must be a string or integer column")
    return pc.replace_substring_regex(values, _SEPARATORS, "")


def _fixed_ten(values: pa.Array) -> np.ndarray | None:
    """A zero-copy (n, 10) view of a string column when every value is present and ten bytes long."""
    n = len(values)
    if n == 0 or values.null_count:
        return None
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=n + 1, offset=4 * values.offset)
    first, last = int(offsets[0]), int(offsets[-1])
    if last - first != 10 * n:
        return None
    lengths = pc.min_max(pc.binary_length(values)).as_py()
    if lengths["min"] != 10 or lengths["max"] != 10:
        return None
    return np.frombuffer(values.buffers()[2], dtype=np.uint8, count=10 * n, offset=first).reshape(n, 10)


def reason_counts(status: np.ndarray) -> dict[str, int]:
    """Counts of rows that are not valid, by reason (no values, only counts)."""
    counts = np.bincount(status, minlength=len(Status))
    return {STATUS_REASONS[s]: int(counts[s]) for s in STATUS_REASONS if counts[s]}


@dataclass(frozen=True)
class ParsedNumbers:
    """A column of NHS numbers as fixed-width digits plus a status per row."""

    digits: np.ndarray  # (n, 10) uint8 ASCII digits; "0000000000" where the value is not ten digits
    status: np.ndarray  # (n,) int8 of Status
    raw: pa.Array  # normalised text, for values that are not ten digits

    def __len__(self) -> int:
        return len(self.status)

    def reasons(self) -> dict[str, int]:
        return reason_counts(self.status)

    def filter(self, mask: np.ndarray) -> ParsedNumbers:
        return ParsedNumbers(self.digits[mask], self.status[mask], self.raw.filter(pa.array(mask)))


def _status_of_digits(digits: np.ndarray, status: np.ndarray) -> None:
    """Fill ``status`` for ten-character rows, a cache-sized slice at a time (no huge temporaries)."""
    for lo in range(0, len(digits), _SLICE_ROWS):
        d = digits[lo : lo + _SLICE_ROWS] - np.uint8(48)  # non-digits wrap to values above 9
        nondigit = d > 9
        # Single-precision BLAS is exact for these small integers and far faster than integer matmul.
        total = (d[:, :9].astype(np.float32) @ _WEIGHTS).astype(np.int32)
        check = 11 - total % 11
        check[check == 11] = 0  # 10 stays 10 and matches no digit
        part = status[lo : lo + _SLICE_ROWS]
        part[:] = Status.BAD_CHECK_DIGIT
        part[check == d[:, 9]] = Status.VALID
        if nondigit.any():
            part[nondigit.any(axis=1)] = Status.INVALID_FORMAT


def parse_numbers(values: pa.Array) -> ParsedNumbers:
    """Normalise and check a whole column of NHS numbers without a per-value Python loop."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_string(values.type):
        # The usual case, ten digits each and nothing to strip, costs no copy of the column.
        digits = _fixed_ten(values)
        if digits is not None:
            status = np.empty(len(values), dtype=np.int8)
            _status_of_digits(digits, status)
            if not (status == Status.INVALID_FORMAT).any():
                return ParsedNumbers(digits=digits, status=status, raw=values)
    text = _as_digit_strings(values)
    n = len(text)
    status = np.empty(n, dtype=np.int8)
    ten = pc.fill_null(pc.equal(pc.binary_length(text), 10), False)
    filled = pc.if_else(ten, text, pa.scalar("0000000000", pa.string()))
    # Every value of ``filled`` is present and ten characters long, so the view always exists.
    digits = _fixed_ten(filled) if n else np.zeros((0, 10), dtype=np.uint8)
    _status_of_digits(digits, status)  # type: ignore[arg-type]
    status[~ten.to_numpy(zero_copy_only=False)] = Status.INVALID_FORMAT
    status[text.is_null().to_numpy(zero_copy_only=False)] = Status.MISSING
    return ParsedNumbers(digits=digits, status=status, raw=text)  # type: ignore[arg-type]


# At most this many bytes around ten digits: "943 476 5919", "943-476-5919", padded with spaces.
_SPACED_NUMBER_BYTES = 16


def mostly_valid_numbers(values: pa.Array | pa.ChunkedArray) -> bool:
    """Whether most present values of a column are valid NHS numbers: ten digits (spaces and dashes
    aside; an integer of ten digits), not starting with 0, passing the check digit. A column of
    anything else is answered from its lengths or its range alone, so a whole extract chunk costs
    little; a column of random ten-digit numbers passes the check about one time in eleven."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_floating(values.type):  # numbers read by a spreadsheet: 9434765919.0
        whole = pc.fill_null(pc.equal(pc.floor(values), values), False)
        values = pc.cast(pc.if_else(whole, values, pa.scalar(None, values.type)), pa.int64(), safe=False)
    present = len(values) - values.null_count
    if not present:
        return False
    if pa.types.is_integer(values.type):
        candidates = values.filter(pc.and_(pc.greater_equal(values, 1_000_000_000),
                                           pc.less_equal(values, 9_999_999_999)))
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        lengths = pc.binary_length(values)  # bytes: ten digits and a few spaces are as many characters
        candidates = values.filter(pc.and_(pc.greater_equal(lengths, 10),
                                           pc.less_equal(lengths, _SPACED_NUMBER_BYTES)))
    else:
        return False  # dates, booleans, binary: never an NHS number as written
    if 2 * len(candidates) <= present:
        return False
    parsed = parse_numbers(candidates)
    valid = (parsed.status == Status.VALID) & (parsed.digits[:, 0] != ord("0"))
    return 2 * int(valid.sum()) > present


# --------------------------------------------------------------------------------------------------
# Layer one: internal pseudonyms


@dataclass(frozen=True)
class Pseudonyms:
    """Internal pseudonyms for a column: 16-byte blocks plus the status they were made from.

    Rows whose status is MISSING have no pseudonym (their block is zero and must not be used).
    """

    blocks: np.ndarray  # (n, 16) uint8
    status: np.ndarray  # (n,) int8 of Status

    def __len__(self) -> int:
        return len(self.status)

    @property
    def present(self) -> np.ndarray:
        return self.status != Status.MISSING

    @property
    def valid(self) -> np.ndarray:
        return self.status == Status.VALID

    def filter(self, mask: np.ndarray) -> Pseudonyms:
        return Pseudonyms(self.blocks[mask], self.status[mask])

    def as_arrow(self) -> pa.Array:
        """The pseudonyms as a binary column (for a TRE-internal store, never for a workspace)."""
        present = self.present
        bitmap = None if present.all() else pa.py_buffer(np.packbits(present, bitorder="little"))
        return pa.Array.from_buffers(
            pa.binary(BLOCK_BYTES),
            len(self),
            [bitmap, pa.py_buffer(np.ascontiguousarray(self.blocks).tobytes())],
            null_count=int((~present).sum()),
        )


def internal_pseudonyms(values: pa.Array | ParsedNumbers, linkage_key: bytes) -> Pseudonyms:
    """Layer one: encrypt each tagged NHS number under the linkage key.

    Ten-digit values go in whole (so they can be recovered by governed re-identification); values
    that are not ten digits get a keyed hash in their own domain (a slow path: such values are rare).
    """
    parsed = values if isinstance(values, ParsedNumbers) else parse_numbers(values)
    n = len(parsed)
    blocks = np.empty((n, BLOCK_BYTES), dtype=np.uint8)
    ecb = _Ecb(linkage_key)
    plain = np.empty((min(n, _SLICE_ROWS), BLOCK_BYTES), dtype=np.uint8)
    for lo in range(0, n, _SLICE_ROWS):
        m = min(_SLICE_ROWS, n - lo)
        plain[:m, :6] = _TAG_VALID_NP
        bad = np.flatnonzero(parsed.status[lo : lo + m] == Status.BAD_CHECK_DIGIT)
        plain[bad, :6] = _TAG_BAD_CHECK_NP
        plain[:m, 6:] = parsed.digits[lo : lo + m]
        ecb.apply(plain[:m], blocks[lo : lo + m])
    junk = np.flatnonzero(parsed.status == Status.INVALID_FORMAT)
    if junk.size:
        junk_key = derive_subkey(linkage_key, "invalid-nhs-number")  # never one key for two primitives
        texts = parsed.raw.take(pa.array(junk)).to_pylist()
        for row, text in zip(junk, texts, strict=True):
            mac = hmac.new(junk_key, _JUNK_LABEL + b"\x00" + text.encode(), hashlib.sha256).digest()
            blocks[row] = np.frombuffer(mac[:BLOCK_BYTES], dtype=np.uint8)
    blocks[parsed.status == Status.MISSING] = 0
    return Pseudonyms(blocks=blocks, status=parsed.status)


def person_pseudonyms(person_keys: Sequence[bytes], linkage_key: bytes) -> np.ndarray:
    """Layer one for people of the person index who hold no trusted NHS number: each ten-byte person
    key, tagged in its own domain and encrypted under the linkage key, as an (n, 16) array.

    The tag keeps these apart from every number's pseudonym, so a person without a number can never
    share a token with a number; re-identification of such a token yields no number
    (``pseudonym_to_nhs_number`` returns None) and is answered from the person index instead.
    """
    if any(len(k) != PERSON_KEY_BYTES for k in person_keys):
        raise ValueError(f"a person key is {PERSON_KEY_BYTES} bytes")
    plain = np.empty((len(person_keys), BLOCK_BYTES), dtype=np.uint8)
    plain[:, :6] = np.frombuffer(_TAG_PERSON, dtype=np.uint8)
    if person_keys:
        plain[:, 6:] = np.frombuffer(b"".join(person_keys), dtype=np.uint8).reshape(-1, PERSON_KEY_BYTES)
    return _ecb(linkage_key, plain) if len(person_keys) else plain


def person_numbers(blocks: np.ndarray, linkage_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """For person pseudonyms: each one's NHS number as (n, 10) ASCII digits, and whether it has one
    (a person without a trusted number has a block in its own domain). For opt-outs, which follow
    the person: the caller holds the linkage key already, and the digits never leave the pipeline."""
    if not len(blocks):
        return np.zeros((0, 10), dtype=np.uint8), np.zeros(0, dtype=bool)
    plain = _ecb(linkage_key, blocks, decrypt=True)
    has = (plain[:, :6] == _TAG_VALID_NP).all(axis=1)
    return np.ascontiguousarray(plain[:, 6:]), has


def with_person_blocks(pseudonyms: Pseudonyms, rows: np.ndarray, blocks: np.ndarray) -> Pseudonyms:
    """The pseudonyms with ``rows`` replaced by their person's block (from the person index) and
    marked valid: the record's own number, missing or not, no longer decides its token."""
    out_blocks = pseudonyms.blocks.copy()
    status = pseudonyms.status.copy()
    out_blocks[rows] = blocks
    status[rows] = Status.VALID
    return Pseudonyms(out_blocks, status)


# --------------------------------------------------------------------------------------------------
# Layer two: project tokens


def _string_array(prefix: bytes, body: np.ndarray, present: np.ndarray | None) -> pa.Array:
    """A pyarrow string column from fixed-width rows, built from buffers without a Python loop."""
    data = np.empty((len(body), len(prefix) + body.shape[1]), dtype=np.uint8)
    data[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    data[:, len(prefix) :] = body
    return _fixed_width_strings(data, present)


def _fixed_width_strings(data: np.ndarray, present: np.ndarray | None, buffer: pa.Buffer | None = None) -> pa.Array:
    """Wrap an (n, width) uint8 array of characters as a string column (zero-copy).

    ``buffer``, when given, is the Arrow buffer that owns ``data``."""
    n, width = data.shape
    large = (n + 1) * width >= 2**31
    typ, dtype = (pa.large_string(), np.int64) if large else (pa.string(), np.int32)
    offsets, offsets_buffer = _pool_array(n + 1, np.dtype(dtype).itemsize)
    offsets = offsets.view(dtype).reshape(-1)
    for lo in range(0, n + 1, _SLICE_ROWS):
        hi = min(n + 1, lo + _SLICE_ROWS)
        offsets[lo:hi] = np.arange(lo, hi, dtype=dtype) * width
    bitmap, null_count = None, 0
    if present is not None and not present.all():
        bitmap = pa.py_buffer(np.packbits(present, bitorder="little"))
        null_count = int(n - present.sum())
    values = buffer if buffer is not None else pa.py_buffer(np.ascontiguousarray(data))
    return pa.Array.from_buffers(typ, n, [bitmap, offsets_buffer, values], null_count=null_count)


def _pool_array(rows: int, width: int) -> tuple[np.ndarray, pa.Buffer]:
    """An uninitialised (rows, width) uint8 array in Arrow's memory pool. The pool keeps freed pages
    for the next chunk, where a fresh numpy array would make the OS fault in and zero new ones."""
    buffer = pa.allocate_buffer(rows * width)
    return np.frombuffer(buffer, dtype=np.uint8).reshape(rows, width), buffer


def _spell(cipher: np.ndarray) -> np.ndarray:
    """(m, 16) bytes → (m, 32) letters, by one table lookup per byte."""
    return np.take(_BYTE_TO_LETTERS, cipher).view(np.uint8)


def _token_bodies(blocks: np.ndarray, project_key: bytes, prefix: bytes = b"") -> tuple[np.ndarray, pa.Buffer]:
    """Encrypt under the project key and spell each block as ``prefix`` + 32 consonants.

    Hex spelled with consonants rather than base32: a byte-to-two-letters table lookup is several
    times faster over a column than base32's five-bit groups; with no digits a token can never hold
    anything that looks like an NHS number (plain hex would: a run of ten digits in one token in twelve),
    and with one case it survives spreadsheets, whose case-insensitive matching would merge base64.
    """
    n = len(blocks)
    out, buffer = _pool_array(n, len(prefix) + 2 * BLOCK_BYTES)
    out[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    cipher = np.empty((min(n, _SLICE_ROWS), BLOCK_BYTES), dtype=np.uint8)
    ecb = _Ecb(project_key)
    for lo in range(0, n, _SLICE_ROWS):
        m = min(_SLICE_ROWS, n - lo)
        ecb.apply(blocks[lo : lo + m], cipher[:m])
        out[lo : lo + m, len(prefix) :] = _spell(cipher[:m])
    return out, buffer


def project_tokens(pseudonyms: Pseudonyms, project_key: bytes) -> pa.Array:
    """Layer two: a project's tokens for a column of internal pseudonyms (null where missing).

    Valid numbers become ``T`` + 32 consonants; invalid ones ``INVALID-`` + 32, so they can
    never be mistaken for a patient and are never linked to one.
    """
    present = pseudonyms.present
    invalid = ~pseudonyms.valid & present
    if not invalid.any():
        body, buffer = _token_bodies(pseudonyms.blocks, project_key, TOKEN_PREFIX.encode())
        return _fixed_width_strings(body, present, buffer)
    body, _ = _token_bodies(pseudonyms.blocks, project_key)
    # Build both spellings at fixed width (fast), then pick per row.
    spelled_valid = _string_array(TOKEN_PREFIX.encode(), body, None)
    spelled_invalid = _string_array(INVALID_TOKEN_PREFIX.encode(), body, None)
    chosen = pc.if_else(pa.array(invalid), spelled_invalid, spelled_valid)
    return pc.if_else(pa.array(present), chosen, pa.scalar(None, chosen.type))


def tokenise(values: pa.Array | ParsedNumbers, linkage_key: bytes, project_key: bytes) -> pa.Array:
    """Both layers in one call: NHS numbers in, a project's tokens out.

    A column of ten-digit strings takes a fused path: each cache-sized slice is checked, encrypted
    twice and spelled before the next is touched, and the internal pseudonyms are never stored.
    Any value that is not a valid number sends the whole column down the general path (same result).
    """
    if not isinstance(values, ParsedNumbers):
        column = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        digits = _fixed_ten(column) if pa.types.is_string(column.type) else None
        fast = _tokenise_valid_digits(digits, linkage_key, project_key) if digits is not None else None
        if fast is not None:
            return fast
        values = parse_numbers(column)
    return project_tokens(internal_pseudonyms(values, linkage_key), project_key)


def _tokenise_valid_digits(
    digits: np.ndarray,
    linkage_key: bytes,
    project_key: bytes,
    *,
    checked: bool = False,
    pseudonyms_out: np.ndarray | None = None,
) -> pa.Array | None:
    """Tokens for an (n, 10) array of ASCII digits, or None as soon as one row is not a valid number.

    ``checked`` skips the check when the caller already knows every row is valid; ``pseudonyms_out``,
    an (n, 16) array, receives the internal pseudonyms on the way past."""
    n, prefix = len(digits), TOKEN_PREFIX.encode()
    out, buffer = _pool_array(n, len(prefix) + 2 * BLOCK_BYTES)
    out[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    layer_one, layer_two = _Ecb(linkage_key), _Ecb(project_key)
    plain = np.empty((min(n, _SLICE_ROWS), BLOCK_BYTES), dtype=np.uint8)
    plain[:, :6] = _TAG_VALID_NP
    middle = np.empty_like(plain)
    status = np.empty(min(n, _SLICE_ROWS), dtype=np.int8)
    for lo in range(0, n, _SLICE_ROWS):
        m = min(_SLICE_ROWS, n - lo)
        if not checked:
            _status_of_digits(digits[lo : lo + m], status[:m])
            if (status[:m] != Status.VALID).any():
                return None
        plain[:m, 6:] = digits[lo : lo + m]
        layer_one.apply(plain[:m], middle[:m])
        if pseudonyms_out is not None:
            pseudonyms_out[lo : lo + m] = middle[:m]
        layer_two.apply(middle[:m], middle[:m])
        out[lo : lo + m, len(prefix) :] = _spell(middle[:m])
    return _fixed_width_strings(out, None, buffer)


def tokens_and_pseudonyms(parsed: ParsedNumbers, linkage_key: bytes, project_key: bytes) -> tuple[pa.Array, Pseudonyms]:
    """Project tokens plus the internal pseudonyms (which date shifts need), in one pass when every
    row is valid — the usual case once the reject policy has removed the rest."""
    if len(parsed) and (parsed.status == Status.VALID).all():
        blocks = np.empty((len(parsed), BLOCK_BYTES), dtype=np.uint8)
        column = _tokenise_valid_digits(parsed.digits, linkage_key, project_key, checked=True, pseudonyms_out=blocks)
        return column, Pseudonyms(blocks=blocks, status=parsed.status)
    pseudonyms = internal_pseudonyms(parsed, linkage_key)
    return project_tokens(pseudonyms, project_key), pseudonyms


def tokenise_distinct(values: pa.Array, linkage_key: bytes, project_key: bytes) -> pa.Array:
    """Tokenise each distinct value once (a win for event tables with many rows per patient)."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return tokenise(encoded.dictionary, linkage_key, project_key).take(encoded.indices)


# --------------------------------------------------------------------------------------------------
# Governed re-identification (caller side: needs the project key and the linkage key)


@dataclass(frozen=True)
class Reidentified:
    """One token mapped back. ``nhs_number`` is set for ten-digit values; ``pseudonym`` (hex) always,
    so a value that was not ten digits can still be found in the custodian's ingestion index."""

    token: str
    pseudonym: str
    nhs_number: str | None
    check_digit_valid: bool


def token_to_pseudonym(token: str, project_key: bytes) -> bytes:
    """Decrypt one project token back to its internal pseudonym (needs the project key)."""
    if token.startswith(INVALID_TOKEN_PREFIX):
        body = token[len(INVALID_TOKEN_PREFIX) :]
    elif token.startswith(TOKEN_PREFIX):
        body = token[len(TOKEN_PREFIX) :]
    else:
        raise ValueError("not a project token")
    if not _TOKEN_BODY.fullmatch(body):
        raise ValueError("not a project token")
    hex_body = body.encode("ascii").translate(_FROM_LETTERS).decode("ascii")
    cipher = np.frombuffer(bytes.fromhex(hex_body), dtype=np.uint8).reshape(1, BLOCK_BYTES)
    return _ecb(project_key, cipher, decrypt=True).tobytes()


def pseudonym_to_nhs_number(pseudonym: bytes, linkage_key: bytes) -> tuple[str | None, bool]:
    """Decrypt an internal pseudonym; returns (digits, check digit valid), or (None, False) when the
    pseudonym is a keyed hash of a value that was not ten digits."""
    plain = _ecb(linkage_key, np.frombuffer(pseudonym, dtype=np.uint8).reshape(1, BLOCK_BYTES), decrypt=True)
    tag, digits = plain[0, :6].tobytes(), plain[0, 6:].tobytes()
    if tag == _TAG_VALID and digits.isdigit():
        return digits.decode(), True
    if tag == _TAG_BAD_CHECK and digits.isdigit():
        return digits.decode(), False
    return None, False


def reidentify(tokens: Iterable[str], project_key: bytes, linkage_key: bytes) -> list[Reidentified]:
    """Map tokens back to NHS numbers. Only the caller holding both keys can; a workspace holds neither.

    Call it only after the governed approval; the caller audits every call.
    """
    results = []
    for token in tokens:
        pseudonym = token_to_pseudonym(token, project_key)
        number, ok = pseudonym_to_nhs_number(pseudonym, linkage_key)
        results.append(Reidentified(token, pseudonym.hex(), number, ok and nhs_number.is_valid(number)))
    return results
