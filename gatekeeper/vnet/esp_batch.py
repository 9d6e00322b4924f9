"""ESP for many packets at once, on preallocated buffers: the wire format of `softudc.wire.esp`
(RFC 4303/4106, one AES-GCM call per packet), without its per-packet copies.

Sending: a super-frame's segments come from `offload.segment_rows` as rows with room behind each
one; `add_trailers` writes the ESP trailer (padding, pad length, next header) into that room, and
`seal_rows` encrypts every row straight into its place in one output buffer, headers written in
bulk, ready for one UDP_SEGMENT send. Receiving: `open_into` verifies and decrypts one packet into
a caller's buffer (`decrypt_into`), so the packets of a batch land back to back for coalescing.

Every packet keeps its own sequence number, nonce, AAD and tag: each underlay datagram still
verifies on its own, and a packet sealed here opens with `esp.open_` and the other way round.

Where the C library is built (`esp_native`, OpenSSL EVP), `esp_sa` hands it whole bursts and
`open_into` one packet; the numpy/`cryptography` code here is the fallback without it.
"""

from __future__ import annotations

import struct

import numpy as np
from cryptography.exceptions import InvalidTag

from gatekeeper.vnet.esp_native import native_key
from gatekeeper.vnet.offload import Segments
from softudc.wire.errors import WireError
from softudc.wire.esp import HEADER_LEN, ICV_LEN, IV_LEN, NEXT_HEADER_ETHERIP, AuthError, EspKey, padded_len

OVERHEAD = HEADER_LEN + IV_LEN + ICV_LEN  # around the padded payload
BODY = HEADER_LEN + IV_LEN  # where the ciphertext starts
_AAD = struct.Struct("!III")
_HDR = struct.Struct("!II")
PADS = [bytes(range(1, pad + 1)) for pad in range(256)]
TRAILERS = [np.frombuffer(PADS[pad] + bytes((pad, NEXT_HEADER_ETHERIP)), dtype=np.uint8) for pad in range(4)]
# One row of per-packet fields, big-endian: the ESP header with its IV, the GCM nonce, the AAD.
_FIELDS = np.dtype([("spi", ">u4"), ("lo", ">u4"), ("iv", ">u8")])
_NONCE = np.dtype([("salt", "S4"), ("iv", ">u8")])
_AADS = np.dtype([("spi", ">u4"), ("hi", ">u4"), ("lo", ">u4")])
TRAILER_ROOM = 5  # at most 3 bytes of padding, pad length, next header


def add_trailers(seg: Segments) -> tuple[int, int]:
    """Write the ESP trailer behind every segment (rows need `TRAILER_ROOM` bytes of room);
    returns the padded lengths (every row but the last, the last)."""
    plen, plen_last = padded_len(seg.stride), padded_len(seg.last)
    if seg.rows.shape[1] < max(plen, plen_last):
        raise ValueError(f"rows of {seg.rows.shape[1]} bytes have no room for a {plen}-byte ESP payload")
    if seg.count > 1:
        seg.rows[:seg.count - 1, seg.stride:plen] = TRAILERS[plen - seg.stride - 2]
    seg.rows[seg.count - 1, seg.last:plen_last] = TRAILERS[plen_last - seg.last - 2]
    return plen, plen_last


def seal_rows(key: EspKey, spi: int, seq0: int, rows: np.ndarray, lengths: tuple[int, int], out: np.ndarray) -> int:
    """Seal row k of `rows` (a padded payload of lengths[0] bytes, lengths[1] for the last row)
    with sequence number seq0 + k into row k of `out` (as many rows, each at least
    OVERHEAD + lengths[0] wide); returns the bytes used, the last packet possibly shorter."""
    count = len(rows)
    plen, plen_last = lengths
    width, ostride = int(rows.shape[1]), int(out.shape[1])
    seqs = np.arange(seq0, seq0 + count, dtype=np.uint64)
    fields = np.empty(count, dtype=_FIELDS)
    fields["spi"], fields["lo"], fields["iv"] = spi, seqs & 0xFFFFFFFF, seqs
    out[:, :BODY] = fields.view(np.uint8).reshape(count, BODY)
    nonce = np.empty(count, dtype=_NONCE)
    nonce["salt"], nonce["iv"] = key.salt, seqs
    aad = np.empty(count, dtype=_AADS)
    aad["spi"], aad["hi"], aad["lo"] = spi, seqs >> 32, seqs & 0xFFFFFFFF
    nonces, aads = nonce.tobytes(), aad.tobytes()
    src, dst = rows.reshape(-1).data, out.reshape(-1).data
    if key.level != "conf":
        _tag_rows(key, src, dst, nonces, aads, count, width, ostride, lengths)
    else:
        encrypt = key.aead.encrypt_into
        for k in range(count - 1):
            p, o, i = k * width, k * ostride + BODY, 12 * k
            encrypt(nonces[i:i + 12], src[p:p + plen], aads[i:i + 12], dst[o:o + plen + ICV_LEN])
        last = count - 1
        p, o, i = last * width, last * ostride + BODY, 12 * last
        encrypt(nonces[i:i + 12], src[p:p + plen_last], aads[i:i + 12], dst[o:o + plen_last + ICV_LEN])
    return (count - 1) * ostride + OVERHEAD + plen_last


def _tag_rows(key: EspKey, src: memoryview, dst: memoryview, nonces: bytes, aads: bytes, count: int, width: int,
              ostride: int, lengths: tuple[int, int]) -> None:
    """`auth` (GMAC): every payload travels in clear; its tag covers the AAD, the IV and it."""
    for k in range(count):
        n = lengths[0] if k < count - 1 else lengths[1]
        p, o, i = k * width, k * ostride + BODY, 12 * k
        dst[o:o + n] = src[p:p + n]
        aad = aads[i:i + 12] + nonces[i + 4:i + 12] + bytes(src[p:p + n])
        dst[o + n:o + n + ICV_LEN] = key.aead.encrypt(nonces[i:i + 12], b"", aad)


def open_into(key: EspKey, buf: memoryview, seq: int, out: memoryview) -> int:
    """Verify (and for `conf` decrypt) one ESP packet whose 64-bit sequence number the replay
    window inferred, into out[:len(buf) - OVERHEAD]; returns the payload's length (EtherIP +
    frame, the trailer checked and left behind it). Raises AuthError or WireError as
    `esp.open_` does; on AuthError `out` holds garbage (never to be used)."""
    nk = native_key(key)
    if nk is not None:
        return nk.open_one(buf, seq, out)
    clen = len(buf) - OVERHEAD
    if clen < 4:
        raise WireError(f"esp: {len(buf)} bytes is shorter than the smallest ESP packet")
    if clen % 4:
        raise WireError("esp: payload not aligned to 4 bytes")
    spi, seq_low = _HDR.unpack_from(buf)
    if seq_low != seq & 0xFFFFFFFF:
        raise WireError("esp: sequence number does not match the one inferred")
    iv = bytes(buf[HEADER_LEN:BODY])
    aad = _AAD.pack(spi, seq >> 32, seq_low)
    try:
        if key.level == "conf":
            key.aead.decrypt_into(key.salt + iv, buf[BODY:], aad, out[:clen])
        else:
            body = bytes(buf[BODY:BODY + clen])
            key.aead.decrypt(key.salt + iv, bytes(buf[BODY + clen:]), aad + iv + body)
            out[:clen] = body
    except InvalidTag:
        raise AuthError("esp: ICV does not verify (wrong key, tampered or replayed under an old key)") from None
    return _trailer(out, 0, clen)


def headers(batch: memoryview, stride: int, count: int) -> np.ndarray:
    """(count, 4) big-endian words of every packet's first 16 bytes: SPI, sequence, IV."""
    raw = np.lib.stride_tricks.as_strided(np.frombuffer(batch, dtype=np.uint8), shape=(count, BODY),
                                          strides=(stride, 1), writeable=False)
    return np.ascontiguousarray(raw).view(">u4")


def consecutive(lows: np.ndarray) -> bool:
    """Whether 32-bit sequence numbers go up by one from the first (wrapping past 2^32)."""
    steps = (lows.astype(np.int64) - int(lows[0])) & 0xFFFFFFFF
    return bool((steps == np.arange(len(lows))).all())


def open_rows(key: EspKey, batch: memoryview, stride: int, count: int, heads: np.ndarray, seq0: int,
              out: memoryview) -> list[int]:
    """Open packets 0, 1, ... of a batch (packet k under sequence number seq0 + k) into `out`
    back to back, up to the first that does not verify or is malformed; returns the payload
    lengths of those opened. `auth` packets go through `open_into` one by one."""
    seqs = np.arange(seq0, seq0 + count, dtype=np.uint64)
    nonce = np.empty((count, 3), dtype=">u4")
    nonce[:, 0] = int.from_bytes(key.salt, "big")
    nonce[:, 1:] = heads[:, 2:]
    aad = np.empty(count, dtype=_AADS)
    aad["spi"], aad["hi"], aad["lo"] = heads[:, 0], seqs >> 32, heads[:, 1]
    nonces, aads = nonce.tobytes(), aad.tobytes()
    lengths: list[int] = []
    if key.level != "conf" or (stride - OVERHEAD) % 4:
        return _open_each(key, batch, stride, count, seq0, out)
    decrypt, clen, w = key.aead.decrypt_into, stride - OVERHEAD, 0
    try:
        for k in range(count - 1):
            o, i = k * stride, 12 * k
            decrypt(nonces[i:i + 12], batch[o + BODY:o + stride], aads[i:i + 12], out[w:w + clen])
            pad = out[w + clen - 2]
            if out[w + clen - 1] != NEXT_HEADER_ETHERIP or pad + 2 > clen or out[w + clen - 2 - pad:w + clen - 2] \
                    != PADS[pad]:
                return lengths
            lengths.append(clen - 2 - pad)
            w += clen - 2 - pad
        o = (count - 1) * stride
        lengths.append(open_into(key, batch[o:], seq0 + count - 1, out[w:]))
    except (InvalidTag, WireError):
        pass
    return lengths


def _open_each(key: EspKey, batch: memoryview, stride: int, count: int, seq0: int, out: memoryview) -> list[int]:
    """`open_rows` one `open_into` at a time (auth, or packets no ESP sender makes)."""
    lengths: list[int] = []
    w = 0
    for k in range(count):
        try:
            n = open_into(key, batch[k * stride:(k + 1) * stride], seq0 + k, out[w:])
        except (InvalidTag, WireError):
            break
        lengths.append(n)
        w += n
    return lengths


def _trailer(out: memoryview, w: int, clen: int) -> int:
    """The payload length of a decrypted packet at out[w:w + clen], its trailer checked."""
    pad, next_header = out[w + clen - 2], out[w + clen - 1]
    if next_header != NEXT_HEADER_ETHERIP:
        raise WireError(f"esp: next header {next_header}, expected {NEXT_HEADER_ETHERIP} (EtherIP)")
    if pad + 2 > clen or out[w + clen - 2 - pad:w + clen - 2] != PADS[pad]:
        raise WireError("esp: bad padding")
    return clen - 2 - pad
