"""The native ESP engine: gatekeeper/vnet/native/esp_burst.c (OpenSSL EVP AES-GCM), loaded with
ctypes from build/native/libesp_burst.so (scripts/build-native.sh, run by `make bootstrap`).

It seals a whole burst and opens a whole GRO batch in one call each: headers, nonces, AADs,
trailers, one AEAD operation per packet (every datagram keeps its own sequence number, nonce and
tag), so the Python around it is per burst, not per packet. Without the library (not built, no
libcrypto) `esp_batch` keeps its Python path; `engine()` says which one runs, and why.
SOFTUDC_ESP_ENGINE=python forces the Python path; SOFTUDC_ESP_NATIVE_LIB names another library.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import Literal

import numpy as np

from gatekeeper.vnet.offload import TCP_MIN_MSS, VNET_HDR_LEN, OffloadError
from softudc.wire.errors import WireError
from softudc.wire.esp import AuthError, EspKey

log = logging.getLogger(__name__)

Engine = Literal["native", "python"]
_OVERHEAD = 32  # ESP header, IV, tag
MAX_BURST = 1024  # packets per open_burst call (a 64 KiB GRO batch of 64-byte datagrams is ~1000)

E_AUTH, E_SHORT, E_ALIGN, E_SEQ, E_NEXT, E_PAD, E_ROOM, E_CRYPTO, E_ARG = range(-1, -10, -1)
E_NOT_TCPV4, E_MSS, E_EMPTY = -20, -21, -22  # a super-frame the segmentation refuses (OffloadError)
_TSO_ERRORS: dict[int, str] = {
    E_NOT_TCPV4: "TCPV4 super-frame without a valid IPv4 and TCP header",
    E_MSS: f"bad super-frame: mss outside {TCP_MIN_MSS}..what an IPv4 length can carry",
    E_EMPTY: "bad super-frame: no payload",
}
_ERRORS: dict[int, str] = {
    E_SHORT: "esp: shorter than the smallest ESP packet (or longer than any)",
    E_ALIGN: "esp: payload not aligned to 4 bytes",
    E_SEQ: "esp: sequence number does not match the one inferred",
    E_NEXT: "esp: next header is not 97 (EtherIP)",
    E_PAD: "esp: bad padding",
    E_ROOM: "esp: output buffer too small for the payload",
    E_CRYPTO: "esp: OpenSSL refused an AES-GCM call",
    E_ARG: "esp: burst lengths that do not fit together",
}


def library_path() -> Path:
    """build/native/libesp_burst.so of this checkout, or $SOFTUDC_ESP_NATIVE_LIB."""
    env = os.environ.get("SOFTUDC_ESP_NATIVE_LIB")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "build" / "native" / "libesp_burst.so"


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("SOFTUDC_ESP_ENGINE", "").lower() == "python":
        return None, "SOFTUDC_ESP_ENGINE=python"
    path = library_path()
    if not path.exists():
        return None, f"{path} not built (run scripts/build-native.sh or `make bootstrap`)"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"{path} does not load ({e}); rebuild it with scripts/build-native.sh"
    vp, sz, u32, u64, lng = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_long
    lib.esp_key_new.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.esp_key_new.restype = vp
    lib.esp_key_free.argtypes = [vp]
    lib.esp_key_free.restype = None
    lib.esp_seal_burst.argtypes = [vp, u32, u64, vp, sz, sz, sz, sz, vp, sz, sz]
    lib.esp_seal_burst.restype = lng
    lib.esp_open_one.argtypes = [vp, vp, sz, u64, vp, sz]
    lib.esp_open_one.restype = lng
    lib.esp_open_burst.argtypes = [vp, u32, u64, vp, sz, sz, vp, sz, vp, sz]
    lib.esp_open_burst.restype = lng
    lib.esp_coalesce.argtypes = [vp, sz, sz, sz, sz, vp, sz, vp, sz]
    lib.esp_coalesce.restype = lng
    lib.esp_tso_count.argtypes = [vp, sz, sz]
    lib.esp_tso_count.restype = lng
    lib.esp_seal_tso.argtypes = [vp, u32, u64, ctypes.c_char_p, sz, vp, sz, sz, sz, sz, vp, sz, sz]
    lib.esp_seal_tso.restype = lng
    # The one-frame calls (microseconds) keep the GIL: handing it to the gatekeeper's other busy
    # thread and back costs more than they do. The same library, called through PyDLL.
    gil = ctypes.PyDLL(str(path))
    gil.esp_open_one.argtypes = lib.esp_open_one.argtypes
    gil.esp_open_one.restype = lng
    gil.esp_seal_frame.argtypes = [vp, u32, u64, vp, sz, ctypes.c_long, sz, vp, sz]
    gil.esp_seal_frame.restype = lng
    gil.esp_tso_count.argtypes = lib.esp_tso_count.argtypes
    gil.esp_tso_count.restype = lng
    gil.esp_coalesce.argtypes = lib.esp_coalesce.argtypes
    gil.esp_coalesce.restype = lng
    global _gil
    _gil = gil
    return lib, str(path)


_gil: ctypes.PyDLL | None = None
_lib, WHY = _load()
log.info("ESP engine: %s (%s)", "native" if _lib is not None else "python", WHY)


def engine() -> Engine:
    """Which engine seals and opens ESP in this process: "native" (the C library) or "python"."""
    return "native" if _lib is not None else "python"


def _ptr(buf: np.ndarray | memoryview | bytes | bytearray) -> int | bytes | None:
    """Something ctypes passes as a pointer to buf's first byte (None for an empty buffer). A
    read-only buffer other than bytes is copied (only where the caller never writes to it)."""
    if isinstance(buf, np.ndarray):
        return int(buf.ctypes.data) if buf.size else None
    if isinstance(buf, bytes):
        return buf if buf else None
    mv = memoryview(buf)
    if not mv.nbytes:
        return None
    if mv.readonly:
        return mv.tobytes()
    return ctypes.addressof(ctypes.c_char.from_buffer(mv))


def _raise(code: int) -> None:
    if code in _TSO_ERRORS:
        raise OffloadError(_TSO_ERRORS[code])
    if code == E_AUTH:
        raise AuthError("esp: ICV does not verify (wrong key, tampered or replayed under an old key)")
    raise WireError(_ERRORS.get(code, f"esp: native error {code}"))


class NativeKey:
    """One SA's key in the C library (key schedule set once; a nonce per packet). Calls are
    serialised by a lock of its own: a C key is not thread-safe."""

    def __init__(self, key: EspKey) -> None:
        assert _lib is not None
        self._lib = _lib
        handle = _lib.esp_key_new(key.key, len(key.key), key.salt, int(key.level == "conf"))
        if not handle:
            raise MemoryError("esp: the native library could not make an AES-GCM context")
        self._handle: int = handle
        self._lock = threading.Lock()
        self._lengths = (ctypes.c_uint32 * MAX_BURST)()
        assert _gil is not None
        self._gil = _gil

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.esp_key_free(handle)
            self._handle = 0

    def seal_rows(self, spi: int, seq0: int, rows: np.ndarray | memoryview | bytes, width: int, count: int,
                  lengths: tuple[int, int], out: np.ndarray | memoryview | bytearray, ostride: int) -> int:
        """Payload k = rows[k * width:][:lengths[0]] (lengths[1] for the last) sealed under seq0 + k
        into out[k * ostride:]; returns the bytes used. Raises WireError on lengths that do not fit."""
        cap = out.nbytes if isinstance(out, (np.ndarray, memoryview)) else len(out)
        with self._lock:
            r: int = self._lib.esp_seal_burst(self._handle, spi, seq0, _ptr(rows), width, count, lengths[0],
                                              lengths[1], _ptr(out), ostride, cap)
        if r < 0:
            _raise(r)
        return r

    def seal_tso(self, spi: int, seq0: int, prefix: bytes, frame: memoryview, mss: int, first: int, count: int,
                 out: np.ndarray, ostride: int) -> int:
        """Segments first .. first + count - 1 of a TCPV4 super-frame (as offload.segment_rows
        with full checksums cuts it), each behind `prefix`, sealed under seq0, seq0 + 1, ... into
        out[k * ostride:]; returns the bytes used. OffloadError for a frame it cannot cut."""
        with self._lock:
            r: int = self._lib.esp_seal_tso(self._handle, spi, seq0, prefix, len(prefix), _ptr(frame), len(frame), mss,
                                            first, count, _ptr(out), ostride, out.nbytes)
        if r < 0:
            _raise(r)
        return r

    def seal_frame(self, spi: int, seq: int, payload: memoryview | bytearray | bytes,
                   csum: tuple[int, int] | None = None) -> bytearray:
        """One packet: `payload` sealed under `seq`. With `csum` = (start, offset), the partial
        checksum of a NEEDS_CSUM frame at payload[start:] is completed first, in place (so
        `payload` must then be writable). WireError on offsets outside the payload."""
        out = bytearray(_OVERHEAD + ((len(payload) + 5) & ~3))
        start, offset = csum if csum is not None else (-1, 0)
        if csum is not None and isinstance(payload, bytes):
            raise WireError("esp: a checksum to complete needs a writable payload")
        with self._lock:
            r: int = self._gil.esp_seal_frame(self._handle, spi, seq, _ptr(payload), len(payload), start, offset,
                                              _ptr(out), len(out))
        if r < 0:
            _raise(r)
        return out

    def open_one(self, buf: memoryview | bytes, seq: int, out: memoryview | bytearray) -> int:
        """`esp_batch.open_into`: the payload's length, or AuthError / WireError."""
        with self._lock:
            r: int = self._gil.esp_open_one(self._handle, _ptr(buf), len(buf), seq, _ptr(out), len(out))
        if r < 0:
            _raise(r)
        return r

    def open_burst(self, spi: int, seq0: int, batch: memoryview, stride: int, out: memoryview) -> list[int]:
        """Payload lengths of packets 0, 1, ... of the batch opened into `out` back to back: the
        prefix whose packets carry `spi` and seq0 + k and verify."""
        with self._lock:
            n: int = self._lib.esp_open_burst(self._handle, spi, seq0, _ptr(batch), len(batch), stride, _ptr(out),
                                              len(out), self._lengths, MAX_BURST)
            if n < 0:
                _raise(n)
            return self._lengths[:n]


def tso_count(frame: memoryview, mss: int) -> int:
    """How many segments a TCPV4 super-frame makes (OffloadError if it cannot be cut)."""
    assert _gil is not None
    r: int = _gil.esp_tso_count(_ptr(frame), len(frame), mss)
    if r < 0:
        _raise(r)
    return r


_rx = threading.local()  # per receive thread: where merged frames are built, and the run table


def coalesce(batch: memoryview, stride: int, count: int, prefix_len: int) -> list[tuple[int, int, memoryview | None]]:
    """`offload.coalesce` + `offload.merge` in one call: (first datagram, datagrams, merged
    `virtio hdr + super-frame`, or None for a datagram to deliver alone) per run. The merged
    frames live in a buffer of the calling thread, valid until its next call."""
    assert _gil is not None
    need = len(batch) + VNET_HDR_LEN * count
    out: bytearray | None = getattr(_rx, "out", None)
    if out is None or len(out) < need or len(_rx.items) < 4 * count:
        out = _rx.out = bytearray(max(need, 1 << 18))
        _rx.items = (ctypes.c_uint32 * (4 * max(count, 4096)))()
        _rx.view = memoryview(out)
    items = _rx.items
    n: int = _gil.esp_coalesce(_ptr(batch), len(batch), stride, count, prefix_len, _ptr(out), len(out), items,
                               len(items) // 4)
    if n < 0:
        _raise(n)
    view: memoryview = _rx.view
    flat = items[:4 * n]
    return [(flat[4 * r], flat[4 * r + 1], view[flat[4 * r + 2]:flat[4 * r + 2] + flat[4 * r + 3]]
             if flat[4 * r + 1] > 1 else None) for r in range(n)]


def native_key(key: EspKey) -> NativeKey | None:
    """The key's NativeKey (made once, kept on the key), or None on the Python engine."""
    if _lib is None:
        return None
    nk: NativeKey | None = key.__dict__.get("_native")
    if nk is None:
        nk = NativeKey(key)
        object.__setattr__(key, "_native", nk)
    return nk
