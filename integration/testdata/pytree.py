#!/usr/bin/env python3
"""A ZSND version 3 tree client, written from PROTOCOL.md alone (sections
3, 4, 5.3, 13 and 16), on libzmq (pyzmq). It is an outside check of the
protocol text: what it needs from the server it reads from the document,
not from the Go code.

    pytree.py ENDPOINT TREE OUTDIR

It offers versions 1..3, asks for the tree's latest version (LIST), its
manifest (MGET; checked against the version id, decoded and validated),
then for every regular file of at most one chunk with BGET (at most 1000
indexes each) and for larger ones with VGET, checks everything section
16.4 and 13.4 say a client checks, and writes the files to OUTDIR/PATH.
It then checks two refusals of section 16: a BGET naming a directory gets
ERROR 400 for that request and the session goes on; a BGET in a version 2
session gets ERROR 501 and the session is dropped.

On success it prints one line: "files N packs P bgets B vgets V".
Exit status: 0 on success, 1 on any failure (the reason on stderr).
"""

import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyclient import Header, Malformed, blake3, enc_string  # noqa: E402

SIGNATURE = b"ZSND"
HELLO, GET, CREDIT, CANCEL, LIST, MGET, VGET, BGET = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0C
WELCOME, FILE, CHUNK, END, TREE, PACK = 0x10, 0x11, 0x12, 0x13, 0x14, 0x17
PING, PONG, BYE, ERROR = 0x20, 0x21, 0x22, 0x23
MAX_CHUNK = 1 << 20
MAX_BATCH, MAX_PACK_FILES = 1000, 256
MAX_ENTRIES = 1 << 20
TIMEOUT = 20.0


class Fail(Exception):
    pass


class Session:
    def __init__(self, endpoint, max_version):
        import zmq
        self.zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(endpoint)
        self.version = 1  # HELLO goes out at version 1 (section 4)
        self.open = False  # before WELCOME, its version is not known
        self.send(HELLO, struct.pack(">BBII", 1, max_version, MAX_CHUNK, 0) + enc_string("pytree"))
        cmd, ver, h, _ = self.recv()
        if cmd != WELCOME:
            raise Fail("expected WELCOME, got 0x%02x" % cmd)
        chosen, chunk = h.u8(), h.u32()
        h.u32()  # heartbeat
        self.max_requests = max(1, h.u32())
        h.string(1024)
        h.end()
        if chosen != max_version or ver != chosen:
            raise Fail("WELCOME chose %d (frame %d), we offered 1..%d" % (chosen, ver, max_version))
        self.version, self.chunk, self.open = chosen, chunk, True
        self.limit = 0          # CREDIT.limit, absolute (5.3)
        self.received = 0       # chunk data octets since WELCOME
        self.grant(8 * chunk)

    def close(self):
        self.sock.close()
        self.ctx.term()

    def send(self, command, header):
        self.sock.send_multipart([SIGNATURE + bytes((self.version, command)), header])

    def grant(self, window):
        self.limit = self.received + window
        self.send(CREDIT, struct.pack(">Q", self.limit))

    def recv(self):
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fail("timeout: nothing from the server for %gs" % TIMEOUT)
            if not self.sock.poll(int(left * 1000) + 1):
                continue
            frames = self.sock.recv_multipart()
            if len(frames) not in (2, 3) or len(frames[0]) != 6 or frames[0][:4] != SIGNATURE:
                raise Fail("malformed message")
            ver, cmd = frames[0][4], frames[0][5]
            if self.open and cmd != ERROR and ver != self.version:
                raise Fail("command 0x%02x at version %d in a version %d session" % (cmd, ver, self.version))
            h = Header(frames[1])
            data = frames[2] if len(frames) == 3 else None
            if cmd == PING:
                token = h.u64()
                self.send(PONG, struct.pack(">Q", token))
                continue
            if cmd == PONG:
                continue
            if data is not None:
                self.received += len(data)
                if self.received > self.limit:
                    raise Fail("data beyond the credit granted")
                # Consumed at once: keep the window open (5.3).
                if self.limit - self.received < 4 * self.chunk:
                    self.grant(8 * self.chunk)
            return cmd, ver, h, data

    def error(self, h):
        req, code, msg = h.u32(), h.u16(), h.string(1024)
        h.end()
        return req, code, msg


def fetch_whole(s, command, request, tag, name):
    """MGET or VGET (13.3): FILE, CHUNK*, END; returns (file fields, bytes, END hash)."""
    s.send(command, struct.pack(">IQ", request, 0) + tag + enc_string(name))
    meta, parts, offset = None, [], 0
    while True:
        cmd, _, h, data = s.recv()
        if cmd == ERROR:
            req, code, msg = s.error(h)
            raise Fail("ERROR %d for %s (request %d): %s" % (code, name, req, msg))
        if h.u32() != request:
            raise Fail("reply for another request")
        if cmd == FILE:
            size, mode, mtime, off = h.u64(), h.u32(), h.i64(), h.u64()
            ftag, fname = h.raw(16), h.string(4096)
            h.end()
            if off != 0 or ftag != tag and tag != bytes(16) or fname != name:
                raise Fail("FILE does not answer %s" % name)
            meta = (size, mode, mtime, ftag)
        elif cmd == CHUNK:
            coff, length, hsh = h.u64(), h.u32(), h.raw(32)
            h.end()
            if meta is None or coff != offset or length != len(data) or blake3(data) != hsh:
                raise Fail("bad CHUNK for %s" % name)
            parts.append(data)
            offset += length
        elif cmd == END:
            size, hsh = h.u64(), h.raw(32)
            h.end()
            body = b"".join(parts)
            if meta is None or size != meta[0] or len(body) != size or blake3(body) != hsh:
                raise Fail("END does not match what arrived for %s" % name)
            return meta, body, hsh
        else:
            raise Fail("unexpected command 0x%02x" % cmd)


def decode_manifest(b):
    """Section 13.5, with its limits enforced before allocating."""
    h = Header(b)
    if h.raw(8) != b"ZSNDMAN1":
        raise Fail("manifest magic")
    count = h.u64()
    if count > MAX_ENTRIES or count * 57 > len(b):
        raise Fail("manifest count %d beyond the limits" % count)
    entries, last = [], None
    dirs = set()
    for i in range(count):
        typ, mode, mtime, size = h.u8(), h.u32(), h.i64(), h.u64()
        hsh = h.raw(32)
        path_b = h._take(struct.unpack(">H", h._take(2))[0])
        target = h._take(struct.unpack(">H", h._take(2))[0])
        path = bytes(path_b).decode("utf-8")
        if typ not in (1, 2, 3) or mode & ~0o7777:
            raise Fail("entry %d: type %d mode %o" % (i, typ, mode))
        if i == 0:
            if typ != 2 or path != "":
                raise Fail("the first entry is not the root")
        else:
            if last is not None and path_b <= last:
                raise Fail("entries not sorted at %r" % path)
            parent = path.rpartition("/")[0]
            if parent not in dirs:
                raise Fail("%r has no directory entry for its parent" % path)
            parts = path.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise Fail("bad path %r" % path)
        if typ != 1 and (size != 0 or hsh != bytes(32)):
            raise Fail("%r: size or hash on a non-file" % path)
        if (typ == 3) != (len(target) > 0):
            raise Fail("%r: target" % path)
        if typ == 2:
            dirs.add(path)
        last = path_b if i > 0 else b""
        entries.append((typ, mode, mtime, size, hsh, path))
    h.end()
    return entries


def write_file(outdir, path, body, mode):
    dest = os.path.join(outdir, *path.split("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(body)
    os.chmod(dest, mode)


def run(endpoint, tree, outdir):
    s = Session(endpoint, 3)
    stats = {"files": 0, "packs": 0, "bgets": 0, "vgets": 0}
    try:
        # LIST (13.3): the tree's latest version.
        s.send(LIST, struct.pack(">IB", 1, 0) + enc_string(tree))
        version = None
        while True:
            cmd, _, h, _ = s.recv()
            if cmd == ERROR:
                raise Fail("LIST: ERROR %d %s" % s.error(h)[1:])
            if cmd == TREE:
                h.u32(), h.u8(), h.u64(), h.u64(), h.u64(), h.u64()
                version = h.raw(32)
                h.string(4096)
                h.end()
            elif cmd == END:
                break
        if version is None:
            raise Fail("LIST named no version")
        tag = version[:16]
        _, man, end_hash = fetch_whole(s, MGET, 2, tag, tree)
        if end_hash != version or blake3(man) != version:
            raise Fail("the manifest is not the version LIST named")
        entries = decode_manifest(man)

        small = [i for i, e in enumerate(entries) if e[0] == 1 and e[3] <= s.chunk]
        large = [i for i, e in enumerate(entries) if e[0] == 1 and e[3] > s.chunk]
        request = 10
        for start in range(0, len(small), MAX_BATCH):
            batch = small[start:start + MAX_BATCH]
            request += 1
            s.send(BGET, struct.pack(">I", request) + tag + enc_string(tree)
                   + struct.pack(">H", len(batch)) + b"".join(struct.pack(">I", i) for i in batch))
            stats["bgets"] += 1
            nxt = 0
            while nxt < len(batch):
                cmd, _, h, data = s.recv()
                if cmd == ERROR:
                    raise Fail("BGET: ERROR %d %s" % s.error(h)[1:])
                if cmd != PACK:
                    raise Fail("expected PACK, got 0x%02x" % cmd)
                if h.u32() != request:
                    raise Fail("PACK for another request")
                count = h.u16()
                if not 1 <= count <= MAX_PACK_FILES or count > len(batch) - nxt:
                    raise Fail("PACK of %d files" % count)
                files = [(h.u32(), h.u32(), h.u32(), h.i64()) for _ in range(count)]
                h.end()
                total = sum(f[1] for f in files)
                if (data is None) != (total == 0) or (data is not None and len(data) != total):
                    raise Fail("PACK data frame does not match its sizes")
                stats["packs"] += 1
                off = 0
                for index, size, mode, mtime in files:
                    if index != batch[nxt]:
                        raise Fail("PACK carries index %d, %d was next" % (index, batch[nxt]))
                    typ, emode, emtime, esize, ehash, path = entries[index]
                    body = data[off:off + size] if size else b""
                    off += size
                    if size != esize or blake3(body) != ehash or mode != emode or mtime != emtime:
                        raise Fail("%s: PACK's file is not the manifest's" % path)
                    write_file(outdir, path, body, mode)
                    stats["files"] += 1
                    nxt += 1
        for index in large:
            request += 1
            path = entries[index][5]
            (size, mode, mtime, _), body, end_hash = fetch_whole(s, VGET, request, tag, tree + "/" + path)
            if end_hash != entries[index][4] or size != entries[index][3]:
                raise Fail("%s: VGET's file is not the manifest's" % path)
            write_file(outdir, path, body, mode)
            stats["files"] += 1
            stats["vgets"] += 1

        # 16.3: an index that is not a regular file (the root, 0): ERROR
        # 400 for the request; the session goes on (a PING is answered).
        request += 1
        s.send(BGET, struct.pack(">I", request) + tag + enc_string(tree) + struct.pack(">HI", 1, 0))
        cmd, _, h, _ = s.recv()
        if cmd != ERROR:
            raise Fail("BGET of a directory: got 0x%02x, want ERROR" % cmd)
        req, code, msg = s.error(h)
        if req != request or code != 400:
            raise Fail("BGET of a directory: ERROR %d for request %d: %s" % (code, req, msg))
        s.send(PING, struct.pack(">Q", 7))
        deadline = time.monotonic() + TIMEOUT
        while True:
            if time.monotonic() > deadline or not s.sock.poll(int(TIMEOUT * 1000)):
                raise Fail("no PONG after ERROR 400")
            frames = s.sock.recv_multipart()
            if frames[0][5] == PONG:
                break
            if frames[0][5] == ERROR:
                raise Fail("the session did not go on after ERROR 400")
        s.send(BYE, struct.pack(">HI", 200, 0) + enc_string("done"))
    finally:
        s.close()

    # 16.1: BGET in a version 2 session is an unknown command: ERROR 501
    # (request 0), session dropped.
    s2 = Session(endpoint, 2)
    try:
        s2.send(BGET, struct.pack(">I", 1) + tag + enc_string(tree) + struct.pack(">HI", 1, 1))
        cmd, _, h, _ = s2.recv()
        if cmd != ERROR:
            raise Fail("BGET at version 2: got 0x%02x, want ERROR 501" % cmd)
        req, code, msg = s2.error(h)
        if req != 0 or code != 501:
            raise Fail("BGET at version 2: ERROR %d for request %d: %s" % (code, req, msg))
    finally:
        s2.close()
    print("files %d packs %d bgets %d vgets %d" % (stats["files"], stats["packs"], stats["bgets"], stats["vgets"]))


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        run(*argv)
    except (Fail, Malformed) as e:
        print("pytree: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
