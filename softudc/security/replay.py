"""Anti-replay window with 64-bit extended sequence numbers (RFC 4303 §3.4.3 and Appendix A2).

Only the low 32 bits travel; the receiver infers the high 32 from the top of its window. A
sequence number is checked before the (costly) ICV verification and recorded only after it
verified, so forged packets cannot move the window.

    T  = highest sequence number verified so far
    W  = window size (bits); numbers in (T - W, T] are tracked in a bitmap
    seen(T - i) = bit i of `bitmap`
"""

from __future__ import annotations

from dataclasses import dataclass

MASK32 = 0xFFFFFFFF


@dataclass
class ReplayWindow:
    size: int = 1024
    top: int = 0  # T; 0 means nothing received yet (sequence numbers start at 1)
    bitmap: int = 0

    def infer(self, seq_low: int) -> int:
        """The full 64-bit number for the low 32 bits on the wire (RFC 4303 A2.2)."""
        th, tl = self.top >> 32, self.top & MASK32
        bl = (tl - self.size + 1) & MASK32
        if tl >= self.size - 1:
            # Case A: the window lies within one 2^32 subspace. A number below it is taken to
            # be from the next subspace; if it is really an old one, the ICV (whose AAD holds
            # the high bits) fails and the window does not move.
            seqh = th if seq_low >= bl else th + 1
        else:
            seqh = th - 1 if seq_low >= bl else th  # Case B: the window spans two subspaces
        return (max(seqh, 0) << 32) | seq_low

    def check(self, seq: int) -> str | None:
        """None if `seq` may be accepted, else why not ('replay' or 'too_old')."""
        if seq == 0:
            return "too_old"  # sequence numbers start at 1
        if seq > self.top:
            return None
        offset = self.top - seq
        if offset >= self.size:
            return "too_old"
        if self.bitmap >> offset & 1:
            return "replay"
        return None

    def update(self, seq: int) -> None:
        """Record a verified `seq`."""
        if seq > self.top:
            shift = seq - self.top
            self.bitmap = 1 if shift >= self.size else ((self.bitmap << shift) | 1) & ((1 << self.size) - 1)
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)
