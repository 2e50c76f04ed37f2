#!/usr/bin/env python3
"""A ZSND version 4 barrier follower, written from PROTOCOL.md alone
(sections 4, 13.3, 14 and 17), on libzmq (pyzmq): an outside check of
SWITCHAT.

    pybarrier.py ENDPOINT TREE NODE

It offers versions 1..4, subscribes to TREE (LIST with SUBSCRIBE), checks
that the TREE it gets has BARRIER set, REPORTs the announced version
`staged` (it stages nothing: the server cannot tell), waits for SWITCHAT
naming that version, waits as section 17.2 says (min(max(at-ns - now, 0),
in-ms), timed with a monotonic clock), then REPORTs it `switched`.

On success it prints one line:
"switchat seq S at-ns A in-ms I wait-ns W switched-ns N", where N is the
wall clock when its wait ended.
Exit status: 0 on success, 1 on any failure (the reason on stderr).
"""

import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyclient import enc_string  # noqa: E402
from pytree import END, ERROR, TREE, Fail, Session  # noqa: E402

LIST, REPORT, SWITCH, SWITCHAT = 0x05, 0x08, 0x15, 0x18
SUBSCRIBE, BARRIER = 0x01, 0x01
STAGED, SWITCHED = 2, 3
MAX_IN_MS = 10000


def report(s, request, state, seq, version, node, tree):
    # report = request:u32 state:u8 seq:u64 sync-ms:u32 version:hash
    #          node:string tree:string error:string hook
    # hook   = hook-name:string hook-exit:i32 hook-ms:u32 hook-output:string
    hdr = struct.pack(">IBQI", request, state, seq, 0) + version + enc_string(node) + enc_string(tree) + enc_string("")
    hdr += enc_string("") + struct.pack(">iI", 0, 0) + enc_string("")
    s.send(REPORT, hdr)
    cmd, _, h, _ = s.recv()
    if cmd == ERROR:
        req, code, msg = s.error(h)
        raise Fail("REPORT refused: ERROR %d: %s" % (code, msg))
    if cmd != END or h.u32() != request:
        raise Fail("REPORT %d: expected END, got 0x%02x" % (request, cmd))


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, tree, node = sys.argv[1:]
    s = Session(endpoint, 4)
    try:
        if s.version != 4:
            raise Fail("server chose version %d" % s.version)
        s.send(LIST, struct.pack(">IB", 1, SUBSCRIBE) + enc_string(tree))
        seq = version = None
        while True:
            cmd, _, h, _ = s.recv()
            if cmd == ERROR:
                req, code, msg = s.error(h)
                raise Fail("LIST: ERROR %d: %s" % (code, msg))
            if cmd == TREE:
                # tree = request:u32 flags:u8 seq:u64 entries:u64 bytes:u64
                #        manifest-size:u64 version:hash name:string
                req, flags, seq = h.u32(), h.u8(), h.u64()
                h.u64(), h.u64(), h.u64()
                version, name = h.raw(32), h.string(255)
                h.end()
                if req != 1 or name != tree:
                    raise Fail("TREE %r for request %d" % (name, req))
                if not flags & BARRIER:
                    raise Fail("TREE without BARRIER: the server does not coordinate switches")
            elif cmd == END:
                if h.u32() != 1 or seq is None:
                    raise Fail("LIST ended without a TREE")
                break
            else:
                raise Fail("unexpected 0x%02x in answer to LIST" % cmd)
        report(s, 2, STAGED, seq, version, node, tree)
        while True:
            cmd, _, h, _ = s.recv()
            if cmd == SWITCH:
                raise Fail("SWITCH in a version 4 session (section 17.1: SWITCHAT only)")
            if cmd == SWITCHAT:
                break
            if cmd != TREE:  # a newer version announced meanwhile: ignore
                raise Fail("unexpected 0x%02x while staged" % cmd)
        now_ns, mono = time.time_ns(), time.monotonic_ns()
        # switchat = request:u32 seq:u64 at-ns:i64 in-ms:u32 version:hash tree:string
        req, sseq, at_ns, in_ms = h.u32(), h.u64(), h.i64(), h.u32()
        sversion, stree = h.raw(32), h.string(255)
        h.end()
        if req != 1 or sseq != seq or sversion != version or stree != tree:
            raise Fail("SWITCHAT for request %d, seq %d, tree %r: not what was staged" % (req, sseq, stree))
        if in_ms > MAX_IN_MS:
            raise Fail("in-ms %d over %d" % (in_ms, MAX_IN_MS))
        wait = min(max(at_ns - now_ns, 0), in_ms * 1000000)
        while time.monotonic_ns() < mono + wait:
            time.sleep(max(0, mono + wait - time.monotonic_ns()) / 1e9)
        switched = time.time_ns()
        report(s, 3, SWITCHED, seq, version, node, tree)
        print("switchat seq %d at-ns %d in-ms %d wait-ns %d switched-ns %d" % (sseq, at_ns, in_ms, wait, switched))
        return 0
    except Fail as e:
        print("pybarrier: %s" % e, file=sys.stderr)
        return 1
    finally:
        s.close()


if __name__ == "__main__":
    sys.exit(main())
