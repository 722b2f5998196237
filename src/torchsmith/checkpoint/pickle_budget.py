"""How much memory a pickle would take to unpickle, found before unpickling it.

A few bytes of pickle can ask for a lot: ``EMPTY_DICT APPEND`` makes a 64-byte dict from 2 bytes,
``LONG_BINPUT 2**31`` makes CPython's unpickler grow its memo table to gigabytes in one opcode.
:func:`unpickled_bytes` reads the opcodes (nothing is built, no code runs), keeps the size of every
object on a model of the unpickler's stack and memo, and stops as soon as the estimate passes the
budget. Only the opcodes that plain data of protocols 2-5 needs are accepted (containers, numbers,
strings, classes built with ``NEWOBJ`` / ``REDUCE`` / ``BUILD``); memo slots must be filled in
order, as every pickler writes them.

    >>> import pickle
    >>> unpickled_bytes(pickle.dumps({"a": [1, 2, 3]}), budget=10_000, where="'x.pkl'") < 10_000
    True
    >>> unpickled_bytes(b"\\x80\\x04]" + b"}a" * 1000 + b".", budget=10_000, where="'bomb.pkl'")
    Traceback (most recent call last):
    ...
    torchsmith.errors.CorruptCheckpointError: 'bomb.pkl' would take more than 10,000 bytes to unpickle (at byte 251 of 2,004). ...
"""

from __future__ import annotations

import struct

from ..errors import CorruptCheckpointError

__all__ = ["unpickled_bytes"]

# what each opcode makes (CPython 3.11, 64-bit), before what is put into it: opcode -> (bytes, argument bytes)
_MADE = {
    ord("}"): (64, 0), ord("]"): (56, 0), ord(")"): (0, 0), ord("N"): (0, 0), 0x88: (0, 0), 0x89: (0, 0),  # {} [] () None True False
    ord("J"): (32, 4), ord("K"): (32, 1), ord("M"): (32, 2), ord("G"): (24, 8),  # BININT, BININT1, BININT2, BINFLOAT
}
# strings, bytes and long ints: opcode -> (bytes besides the data, struct format of the data's length, text?)
_SIZED = {
    0x8C: (80, "<B", True), ord("X"): (80, "<I", True), 0x8D: (80, "<Q", True),  # SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
    ord("C"): (40, "<B", False), ord("B"): (40, "<I", False), 0x8A: (40, "<B", False),  # SHORT_BINBYTES, BINBYTES, LONG1
}
_TUPLES = {0x85: 1, 0x86: 2, 0x87: 3}
_SLOT = 8  # a reference on the stack, in a list or a tuple
_PAIR = 104  # a key and value in a dict, with the table's slack after it grows
_MEMO = 16  # a memo slot (the table doubles as it grows)
_U1, _U4 = struct.Struct("<B"), struct.Struct("<I")
MEMOIZE, BINPUT, LONG_BINPUT, BINGET, LONG_BINGET, MARK = 0x94, ord("q"), ord("r"), ord("h"), ord("j"), ord("(")
APPEND, SETITEM, BUILD, APPENDS, SETITEMS, TUPLE = ord("a"), ord("s"), ord("b"), ord("e"), ord("u"), ord("t")
NEWOBJ, REDUCE, STACK_GLOBAL, GLOBAL, PROTO, FRAME, STOP = 0x81, ord("R"), 0x93, ord("c"), 0x80, 0x95, ord(".")


class _Refused(Exception):
    pass


def unpickled_bytes(data: bytes, *, budget: int, where: str) -> int:
    """An estimate, from above for what plain data is made of, of the bytes unpickling ``data``
    allocates; raises as soon as it passes ``budget``.

    Raises:
        CorruptCheckpointError: over the budget, an opcode plain data does not use (sets, persistent
            ids, extension codes, out-of-band buffers, protocol 0 text forms), memo slots out of order,
            or not a complete pickle.
    """
    stack: list[int] = []  # sizes of the objects on the unpickler's stack
    marks: list[int] = [0]  # where each open mark is on the stack (a floor at 0)
    memo: list[int] = []
    total = pos = start = 0
    end = len(data)
    try:
        while True:
            if pos >= end:
                raise _Refused("ends before the pickle's STOP: it is truncated")
            start, op = pos, data[pos]
            pos += 1
            grown = _SLOT
            if op == MEMOIZE or op == BINPUT or op == LONG_BINPUT:
                if op != MEMOIZE:
                    width = 1 if op == BINPUT else 4
                    index = (_U1 if width == 1 else _U4).unpack_from(data, pos)[0] if pos + width <= end else -1
                    pos += width
                    if index != len(memo):
                        raise _Refused(f"stores memo slot {index:,} where the next is {len(memo):,} (a memo table that size is a pickle bomb)")
                if len(stack) <= marks[-1]:
                    raise _Refused("memoizes nothing")
                memo.append(stack[-1])
                grown = _MEMO
            elif op == BINGET or op == LONG_BINGET:  # the same object again: its size counts for what copies it
                width = 1 if op == BINGET else 4
                index = (_U1 if width == 1 else _U4).unpack_from(data, pos)[0] if pos + width <= end else end
                pos += width
                if index >= len(memo):
                    raise _Refused(f"reads memo slot {index:,}, which was never stored")
                stack.append(memo[index])
            elif op in _MADE:
                made, width = _MADE[op]
                pos += width
                grown += made
                stack.append(grown)
            elif op in _TUPLES or op == TUPLE:
                if op == TUPLE:
                    if len(marks) < 2:
                        raise _Refused("closes a mark it never opened")
                    at = marks.pop()
                else:
                    at = len(stack) - _TUPLES[op]
                    if at < marks[-1]:
                        raise _Refused("takes more values than it pushed")
                grown += 40 + _SLOT * (len(stack) - at)
                del stack[at:]
                stack.append(grown)
            elif op == MARK:
                marks.append(len(stack))
            elif op == APPEND or op == SETITEM or op == BUILD:
                at = len(stack) - (2 if op == SETITEM else 1)
                if at - 1 < marks[-1]:
                    raise _Refused("fills a container it never made")
                grown = _SLOT if op == APPEND else _PAIR if op == SETITEM else stack[-1]  # BUILD: the state, copied
                del stack[at:]
                stack[-1] += grown
            elif op == APPENDS or op == SETITEMS:
                if len(marks) < 2:
                    raise _Refused("closes a mark it never opened")
                at = marks.pop()
                if at - 1 < marks[-1]:
                    raise _Refused("fills a container it never made")
                count = len(stack) - at
                grown = _SLOT * count if op == APPENDS else _PAIR * (count // 2)
                del stack[at:]
                stack[-1] += grown
            elif op == NEWOBJ or op == REDUCE or op == STACK_GLOBAL:  # an instance (REDUCE may copy its arguments), a class
                at = len(stack) - 2
                if at < marks[-1]:
                    raise _Refused("takes more values than it pushed")
                if op != STACK_GLOBAL:
                    grown += 72 + stack[-1] + stack[-2]
                del stack[at:]
                stack.append(grown)
            elif op in _SIZED:
                made, fmt, text = _SIZED[op]
                width = struct.calcsize(fmt)
                n = struct.unpack_from(fmt, data, pos)[0] if pos + width <= end else end
                pos += width + n
                if pos > end:
                    raise _Refused("ends in the middle of a string: it is truncated")
                ascii_only = not text or data[pos - n : pos].isascii()
                grown += made + (n if ascii_only else 4 * n)  # a string takes up to 4 bytes a character
                stack.append(grown)
            elif op == GLOBAL:  # "module\nname\n"
                for _ in range(2):
                    newline = data.find(b"\n", pos, min(end, pos + 256))
                    if newline < 0:
                        raise _Refused("names a global without ending its name")
                    pos = newline + 1
                stack.append(grown)
            elif op == PROTO or op == FRAME:
                pos += 1 if op == PROTO else 8
                grown = 0
            elif op == STOP:
                if pos > end:
                    raise _Refused("ends in the middle of an opcode: it is truncated")
                return total
            else:
                raise _Refused(f"uses the pickle opcode {bytes([op])!r}, which plain data does not need")
            total += grown
            if total > budget:
                raise _Refused(f"would take more than {budget:,} bytes to unpickle")
    except _Refused as e:
        raise CorruptCheckpointError(f"{where} {e} (at byte {start:,} of {end:,}). The file is damaged or hostile.") from None
