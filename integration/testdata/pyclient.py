#!/usr/bin/python3
"""pyclient: a minimal, independent ZSND/1 client (see PROTOCOL.md).

Written from PROTOCOL.md alone, on libzmq through Debian's python3-zmq, to
show that the wire protocol is usable outside Go. It fetches one file:

    pyclient.py [--heartbeat-ms N] [--window B] [--max-window B]
                [--timeout S] ENDPOINT NAME OUTDIR
    pyclient.py --self-test

It opens a session (HELLO/WELCOME), grants credit with the recommended
window policy of section 5.3, sends one GET, verifies every CHUNK's
BLAKE3-256 before writing it to OUTDIR/.NAME.part, checks the whole-file
BLAKE3-256 at END and only then renames the file to OUTDIR/NAME.

Exit status:
    0  success; prints "OK <blake3hex> <size>"
    1  any other failure (protocol error, verification failure, BYE from
       the server, lost connection, server ERROR other than 403/404)
    2  usage error, or NAME breaks the rules of section 6
    3  the server answered ERROR 404 or 403; "ERROR <code> <message>" on stderr
    4  nothing received from the server for --timeout seconds

Deliberately minimal: no reconnection or resume (section 8); a failed
verification, ERROR 409 or BYE 408/503 ends the run with status 1 and
leaves no file behind. Python's standard library has no BLAKE3, so a small
pure-Python BLAKE3 is included (verified by --self-test).

--heartbeat-ms N turns on libzmq's own ZMTP heartbeats (ZMQ_HEARTBEAT_IVL;
ZMTP PING commands, which ZSND peers must ignore). ZSND's heartbeat
(section 7) is separate and always on: a ZSND PING after 2 s without
sending anything.
"""

import argparse
import os
import struct
import sys
import time

# ---------------------------------------------------------------------------
# BLAKE3-256, pure Python (hash mode only, 32-byte output).

_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
       0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_MSG_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START = 1
_CHUNK_END = 2
_PARENT = 4
_ROOT = 8
_BLOCK_LEN = 64
_CHUNK_LEN = 1024
_UNPACK_BLOCK = struct.Struct("<16I").unpack_from
_PACK_CV = struct.Struct("<8I").pack


def _generate_compress():
    """Build the compression function with all 7 rounds unrolled on locals.

    compress(cv, m, counter, block_len, flags) -> first 8 output words
    (the chaining value; also the 32-byte root output under ROOT).
    Plain Python function calls per G would make hashing several times
    slower, and the test files are up to a few MiB.
    """
    mask = "0xFFFFFFFF"
    out = ["def compress(cv, m, counter, block_len, flags):"]
    out.append("    " + ", ".join("c%d" % i for i in range(8)) + " = cv")
    out.append("    " + ", ".join("m%d" % i for i in range(16)) + " = m")
    out.append("    " + ", ".join("s%d" % i for i in range(8)) + " = cv")
    out.append("    s8, s9, s10, s11 = %d, %d, %d, %d" % _IV[:4])
    out.append("    s12 = counter & %s" % mask)
    out.append("    s13 = (counter >> 32) & %s" % mask)
    out.append("    s14 = block_len")
    out.append("    s15 = flags")
    g_positions = (
        (0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
        (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14),
    )
    schedule = list(range(16))  # message position -> original word index
    for _ in range(7):
        for gi, (a, b, c, d) in enumerate(g_positions):
            mx = "m%d" % schedule[2 * gi]
            my = "m%d" % schedule[2 * gi + 1]
            a, b, c, d = "s%d" % a, "s%d" % b, "s%d" % c, "s%d" % d
            for x, y in ((mx, (16, 12)), (my, (8, 7))):
                r1, r2 = y
                out.append("    %s = (%s + %s + %s) & %s" % (a, a, b, x, mask))
                out.append("    %s ^= %s" % (d, a))
                out.append("    %s = ((%s >> %d) | (%s << %d)) & %s" % (d, d, r1, d, 32 - r1, mask))
                out.append("    %s = (%s + %s) & %s" % (c, c, d, mask))
                out.append("    %s ^= %s" % (b, c))
                out.append("    %s = ((%s >> %d) | (%s << %d)) & %s" % (b, b, r2, b, 32 - r2, mask))
        schedule = [schedule[p] for p in _MSG_PERMUTATION]
    out.append("    return (" + ", ".join("s%d ^ s%d" % (i, i + 8) for i in range(8)) + ")")
    namespace = {}
    exec("\n".join(out), namespace)  # noqa: S102 - generated from constants above
    return namespace["compress"]


_compress = _generate_compress()


class Blake3:
    """Incremental BLAKE3-256: update(data) any number of times, then digest()."""

    def __init__(self):
        self._stack = []            # chaining values of complete subtrees
        self._chunks = 0            # complete chunks so far (counter of the current one)
        self._cv = _IV              # chaining value inside the current chunk
        self._blocks = 0            # blocks compressed in the current chunk
        self._buf = bytearray()     # up to one block, not yet compressed

    def _push_chunk_cv(self, cv):
        self._chunks += 1
        total = self._chunks
        while total & 1 == 0:
            cv = _compress(_IV, _UNPACK_BLOCK(_PACK_CV(*self._stack.pop()) + _PACK_CV(*cv)),
                           0, _BLOCK_LEN, _PARENT)
            total >>= 1
        self._stack.append(cv)

    def update(self, data):
        data = memoryview(data).cast("B")
        pos, n = 0, len(data)
        while pos < n:
            if self._blocks * _BLOCK_LEN + len(self._buf) == _CHUNK_LEN:
                # The current chunk is full and more input follows: it is
                # not the last chunk, so finish it without ROOT.
                flags = _CHUNK_END | (_CHUNK_START if self._blocks == 0 else 0)
                cv = _compress(self._cv, _UNPACK_BLOCK(bytes(self._buf)), self._chunks, _BLOCK_LEN, flags)
                self._push_chunk_cv(cv)
                self._cv, self._blocks, self._buf = _IV, 0, bytearray()
            if self._blocks == 0 and not self._buf and n - pos > _CHUNK_LEN:
                # Fast path: a whole chunk that is certainly not the last.
                cv, counter = _IV, self._chunks
                for i in range(16):
                    flags = (_CHUNK_START if i == 0 else 0) | (_CHUNK_END if i == 15 else 0)
                    cv = _compress(cv, _UNPACK_BLOCK(data, pos + i * _BLOCK_LEN), counter, _BLOCK_LEN, flags)
                self._push_chunk_cv(cv)
                pos += _CHUNK_LEN
                continue
            if len(self._buf) == _BLOCK_LEN:
                # A full block with more input after it: not the chunk's last.
                flags = _CHUNK_START if self._blocks == 0 else 0
                self._cv = _compress(self._cv, _UNPACK_BLOCK(bytes(self._buf)), self._chunks, _BLOCK_LEN, flags)
                self._blocks += 1
                self._buf = bytearray()
            take = min(_BLOCK_LEN - len(self._buf), n - pos)
            self._buf += data[pos:pos + take]
            pos += take
        return self

    def digest(self):
        # Output node of the current (last) chunk, then fold in the stack.
        block = bytes(self._buf) + bytes(_BLOCK_LEN - len(self._buf))
        node = (self._cv, _UNPACK_BLOCK(block), self._chunks, len(self._buf),
                _CHUNK_END | (_CHUNK_START if self._blocks == 0 else 0))
        for left in reversed(self._stack):
            right = _compress(*node)
            node = (_IV, _UNPACK_BLOCK(_PACK_CV(*left) + _PACK_CV(*right)), 0, _BLOCK_LEN, _PARENT)
        cv, words, counter, block_len, flags = node
        return _PACK_CV(*_compress(cv, words, counter, block_len, flags | _ROOT))

    def hexdigest(self):
        return self.digest().hex()


def blake3(data):
    return Blake3().update(data).digest()


def self_test():
    """Known vectors, incremental == one-shot, and b3sum on random data."""
    import random
    import shutil
    import subprocess
    import tempfile

    failures = 0

    def check(what, got, want):
        nonlocal failures
        status = "ok" if got == want else "FAIL"
        if got != want:
            failures += 1
        print("%-4s %s: %s" % (status, what, got if got == want else "%s, want %s" % (got, want)))

    check('BLAKE3("")', blake3(b"").hex(),
          "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
    check('BLAKE3("hello, world\\n")', blake3(b"hello, world\n").hex(),
          "623a5460d841b6d1c13d080e85500e0043fd4ba4a8ba9c1aa9b4f6e0d212276c")

    rng = random.Random(1)
    sizes = (0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 3072, 4096, 5 * 1024 + 7,
             65536, 1000000)
    data = {n: bytes(rng.getrandbits(8) for _ in range(n)) if n < 70000 else os.urandom(n)
            for n in sizes}
    for n in (0, 1, 64, 1024, 1025, 4096, 5 * 1024 + 7, 65536):
        whole = blake3(data[n]).hex()
        for step in (1, 7, 64, 1000, 1024, 1025):
            if step > n and step != 1:
                continue
            h = Blake3()
            for i in range(0, n, step):
                h.update(data[n][i:i + step])
            check("incremental size %d step %d" % (n, step), h.hexdigest(), whole)

    b3sum = shutil.which("b3sum")
    if b3sum is None:
        print("skip b3sum cross-check: b3sum not installed")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                path = os.path.join(tmp, "f%d" % n)
                with open(path, "wb") as f:
                    f.write(data[n])
                out = subprocess.run([b3sum, "--no-names", path], check=True,
                                     capture_output=True, text=True).stdout.strip()
                check("size %d vs b3sum" % n, blake3(data[n]).hex(), out)
    print("self-test %s" % ("FAILED (%d)" % failures if failures else "passed"))
    return 1 if failures else 0


# ---------------------------------------------------------------------------
# ZSND/1 messages (PROTOCOL.md sections 3 and 3.2).

SIGNATURE = b"ZSND"
VERSION = 1
HELLO, GET, CREDIT, CANCEL = 0x01, 0x02, 0x03, 0x04
WELCOME, FILE, CHUNK, END = 0x10, 0x11, 0x12, 0x13
PING, PONG, BYE, ERROR = 0x20, 0x21, 0x22, 0x23
SERVER_COMMANDS = {WELCOME, FILE, CHUNK, END, PING, PONG, BYE, ERROR}
CLIENT_COMMANDS = {HELLO, GET, CREDIT, CANCEL}
MAX_HEADER = 8192
MIN_CHUNK = 4096
MAX_CHUNK = 4194304
ZERO_TAG = bytes(16)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_REFUSED, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class Malformed(Exception):
    """A message breaks section 3: answered with ERROR 400 (or 501/505)."""

    def __init__(self, message, code=400):
        super().__init__(message)
        self.code = code


class Header:
    """Reads the fields of one header frame; end() rejects leftovers."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def _take(self, n):
        if self.pos + n > len(self.data):
            raise Malformed("header too short")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self._take(1)[0]

    def u16(self):
        return struct.unpack(">H", self._take(2))[0]

    def u32(self):
        return struct.unpack(">I", self._take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self._take(8))[0]

    def i64(self):
        return struct.unpack(">q", self._take(8))[0]

    def raw(self, n):
        return bytes(self._take(n))

    def string(self, limit):
        n = self.u16()
        if n > limit:
            raise Malformed("string of %d octets, limit %d" % (n, limit))
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("string is not UTF-8")

    def end(self):
        if self.pos != len(self.data):
            raise Malformed("header has %d octets too many" % (len(self.data) - self.pos))


def enc_string(s):
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def check_name(name):
    """Section 6; returns an error string or None."""
    b = name.encode("utf-8", "surrogatepass")
    if not name or len(b) > 4096:
        return "empty or longer than 4096 octets"
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8"
    if name.startswith("/"):
        return "absolute"
    for comp in name.split("/"):
        if comp == "":
            return "empty component"
        if comp in (".", ".."):
            return "component %r" % comp
        if len(comp.encode("utf-8")) > 255:
            return "component longer than 255 octets"
    for ch in name:
        if ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7F:
            return "control character or backslash"
    return None


class Done(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


class Client:
    def __init__(self, args):
        import zmq
        self.zmq = zmq
        self.args = args
        self.version = VERSION          # HELLO always goes out at version 1
        self.chunk_size = None
        self.open = False
        self.last_send = 0.0
        self.rtt = None                 # seconds, from our PING/PONG
        self.ctx = zmq.Context()
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 2000)
        # Section 2: frame limit of the chunk size plus 8 KiB; the chunk size
        # is not known before WELCOME, so use the largest we offer.
        s.setsockopt(zmq.MAXMSGSIZE, MAX_CHUNK + 8192)
        if args.heartbeat_ms:
            # libzmq sends a ZMTP PING every HEARTBEAT_IVL and drops the
            # connection if nothing at all arrives within HEARTBEAT_TIMEOUT
            # of one. zsend (go-zeromq, ZMTP 3.0) ignores ZMTP PINGs and never
            # answers PONG, so only ZSND traffic can satisfy that timeout: it
            # must exceed the server's ZSND heartbeat (2 s), or an idle moment
            # would cost the connection.
            s.setsockopt(zmq.HEARTBEAT_IVL, args.heartbeat_ms)
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(10 * args.heartbeat_ms, 5000))
        if args.curve_serverkey:
            # CURVE (RFC 26): pin the server's key; use the given client
            # pair, or a fresh one (zmq.curve_keypair()).
            s.curve_serverkey = args.curve_serverkey.encode()
            if args.curve_publickey:
                pub, sec = args.curve_publickey.encode(), args.curve_secretkey.encode()
            else:
                pub, sec = zmq.curve_keypair()
            s.curve_publickey = pub
            s.curve_secretkey = sec
        self.sock = s
        self.monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.poller = zmq.Poller()
        self.poller.register(s, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        s.connect(args.endpoint)

    def close(self):
        try:
            self.sock.disable_monitor()
        except Exception:
            pass
        self.monitor.close(linger=0)
        self.sock.close()
        self.ctx.term()

    # -- sending ----------------------------------------------------------

    def send(self, command, header):
        self.sock.send_multipart([SIGNATURE + bytes((self.version, command)), header])
        self.last_send = time.monotonic()

    def send_error(self, request, code, message):
        self.send(ERROR, struct.pack(">IH", request, code) + enc_string(message[:1024]))

    def send_bye(self, reason):
        self.send(BYE, struct.pack(">HI", 200, 0) + enc_string(reason))

    def send_ping(self):
        self.send(PING, struct.pack(">Q", time.monotonic_ns()))

    # -- receiving --------------------------------------------------------

    def recv(self):
        """Next ZSND message from the server as (command, Header, data).

        Sends a ZSND PING whenever we have been silent for our heartbeat;
        raises Done(EXIT_TIMEOUT) after --timeout seconds of silence from the
        server, and Done(EXIT_FAIL) when libzmq reports the connection lost.
        """
        zmq = self.zmq
        heartbeat = self.args.zsnd_heartbeat_ms / 1000.0
        deadline = time.monotonic() + self.args.timeout
        while True:
            now = time.monotonic()
            if self.open and now - self.last_send >= heartbeat:
                self.send_ping()
                now = time.monotonic()
            if now >= deadline:
                die("timeout: nothing from the server for %gs" % self.args.timeout)
                raise Done(EXIT_TIMEOUT)
            wait = deadline - now
            if self.open:
                wait = min(wait, max(0.0, self.last_send + heartbeat - now))
            events = dict(self.poller.poll(int(wait * 1000) + 1))
            # Messages first: whatever arrived before a disconnect counts.
            if self.sock in events or self.sock.poll(0, zmq.POLLIN):
                return self.decode(self.sock.recv_multipart())
            if self.monitor in events:
                self.monitor.recv_multipart()
                # libzmq would reconnect on its own, but the server would see a
                # new routing id with no session; this client does not resume.
                self.open = False
                die("connection lost")
                raise Done(EXIT_FAIL)

    def decode(self, frames):
        if len(frames) not in (2, 3):
            raise Malformed("message of %d frames" % len(frames))
        cmd = frames[0]
        if len(cmd) != 6 or cmd[:4] != SIGNATURE:
            raise Malformed("bad command frame %s" % cmd[:16].hex())
        version, command = cmd[4], cmd[5]
        if command not in SERVER_COMMANDS:
            if command in CLIENT_COMMANDS:
                raise Malformed("command 0x%02x not sent by servers" % command)
            raise Malformed("unknown command 0x%02x" % command, 501)
        # Before WELCOME the session's version is not known yet; a WELCOME is
        # checked in handshake(), an ERROR (e.g. 505) is accepted at any version.
        if self.open and version != self.version:
            raise Malformed("message at version %d in a version %d session" % (version, self.version), 505)
        if len(frames[1]) > MAX_HEADER:
            raise Malformed("header of %d octets" % len(frames[1]))
        want_frames = 3 if command == CHUNK else 2
        if len(frames) != want_frames:
            raise Malformed("command 0x%02x with %d frames" % (command, len(frames)))
        data = frames[2] if command == CHUNK else None
        return command, version, Header(frames[1]), data

    # -- the session ------------------------------------------------------

    def handshake(self):
        peer = "pyclient"
        self.send(HELLO, struct.pack(">BBII", VERSION, VERSION, MAX_CHUNK, self.args.zsnd_heartbeat_ms)
                  + enc_string(peer))
        while True:
            command, version, h, _ = self.recv()
            if command == ERROR:
                self.server_error(h)
            if command == PING:      # not expected before WELCOME; harmless
                continue
            if command != WELCOME:
                raise Malformed("expected WELCOME, got command 0x%02x" % command)
            chosen = h.u8()
            chunk = h.u32()
            hb = h.u32()
            max_requests = h.u32()
            h.string(1024)
            h.end()
            if chosen != VERSION or version != VERSION:
                # We offered [1, 1] only.
                raise Malformed("WELCOME chose version %d (frame %d), we offered 1..1" % (chosen, version), 505)
            if not MIN_CHUNK <= chunk <= MAX_CHUNK:
                raise Malformed("chunk size %d out of range" % chunk)
            if max_requests < 1:
                raise Malformed("max-requests 0")
            self.version, self.chunk_size, self.open = chosen, chunk, True
            self.server_heartbeat_ms = hb
            return

    def server_error(self, h):
        request = h.u32()
        code = h.u16()
        message = h.string(1024)
        h.end()
        print("ERROR %d %s" % (code, message), file=sys.stderr)
        if request == 0:
            self.open = False  # the server dropped the session
        raise Done(EXIT_REFUSED if code in (403, 404) else EXIT_FAIL)

    def fetch(self, name, outdir):
        args = self.args
        request = 1
        window = max(args.window, self.chunk_size)
        max_window = max(args.max_window, window)
        limit = window                  # CREDIT.limit is absolute (5.3)
        grant_at = 0                    # consumed octets at the last grant
        grant_time = time.monotonic()
        received = 0                    # chunk data octets since WELCOME
        consumed = 0                    # ... of which written (or discarded)
        self.send(CREDIT, struct.pack(">Q", limit))
        self.send_ping()                # first round-trip measurement
        self.send(GET, struct.pack(">IQ", request, 0) + ZERO_TAG + enc_string(name))

        dest = os.path.join(outdir, *name.split("/"))
        part = os.path.join(os.path.dirname(dest), "." + os.path.basename(dest) + ".part")
        fd = None
        meta = None
        offset = 0
        hasher = Blake3()
        try:
            while True:
                command, _, h, data = self.recv()
                if command == PING:
                    token = h.u64()
                    h.end()
                    self.send(PONG, struct.pack(">Q", token))
                    continue
                if command == PONG:
                    token = h.u64()
                    h.end()
                    sent = token / 1e9
                    now = time.monotonic()
                    if 0 <= now - sent < 3600:
                        self.rtt = now - sent
                    continue
                if command == BYE:
                    code = h.u16()
                    retry = h.u32()
                    reason = h.string(1024)
                    h.end()
                    self.open = False
                    die("server said BYE %d (retry after %d ms): %s" % (code, retry, reason))
                    raise Done(EXIT_FAIL)
                if command == ERROR:
                    self.server_error(h)
                if command == WELCOME:
                    raise Malformed("WELCOME in an open session")
                req = h.u32()
                if req != request:
                    raise Malformed("message for unknown request %d" % req)
                if command == FILE:
                    if meta is not None:
                        raise Malformed("second FILE for request %d" % req)
                    size = h.u64()
                    mode = h.u32()
                    mtime_ns = h.i64()
                    foffset = h.u64()
                    tag = h.raw(16)
                    fname = h.string(4096)
                    h.end()
                    if mode & ~0o7777 or size > 1 << 62 or foffset > size:
                        raise Malformed("FILE fields out of range")
                    if fname != name:
                        raise Malformed("FILE names %r, we asked for %r" % (fname, name))
                    if foffset != 0:
                        # We hold nothing, so the only acceptable offset is 0 (section 8).
                        raise Malformed("FILE at offset %d, we hold 0 octets" % foffset)
                    meta = (size, mode, mtime_ns, tag)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    continue
                if meta is None:
                    raise Malformed("command 0x%02x before FILE" % command)
                size = meta[0]
                if command == CHUNK:
                    coff = h.u64()
                    length = h.u32()
                    digest = h.raw(32)
                    h.end()
                    if length != len(data) or not 1 <= length <= self.chunk_size:
                        raise Malformed("CHUNK length %d, data %d, chunk size %d"
                                        % (length, len(data), self.chunk_size))
                    received += length
                    if received > limit:
                        raise Malformed("%d octets of chunk data beyond the credit limit %d" % (received, limit))
                    if coff != offset or coff + length > size:
                        raise Malformed("CHUNK at %d+%d, expected offset %d of %d" % (coff, length, offset, size))
                    if length != self.chunk_size and coff + length != size:
                        raise Malformed("short CHUNK (%d octets) before the end of the file" % length)
                    if blake3(data) != digest:
                        self.send(CANCEL, struct.pack(">I", request))
                        die("verification failed: CHUNK at offset %d: BLAKE3 mismatch" % coff)
                        raise Done(EXIT_FAIL)
                    _write_all(fd, data)
                    hasher.update(data)
                    offset += length
                    consumed += length
                    # Section 5.3: when half the window has been consumed,
                    # grant consumed + window; double the window (up to the
                    # budget) if that half took under 4 round trips.
                    if consumed - grant_at >= window // 2:
                        now = time.monotonic()
                        if self.rtt is not None and now - grant_time < 4 * self.rtt:
                            window = min(2 * window, max_window)
                        limit = max(limit, consumed + window)
                        grant_at, grant_time = consumed, now
                        self.send(CREDIT, struct.pack(">Q", limit))
                    continue
                if command == END:
                    esize = h.u64()
                    digest = h.raw(32)
                    h.end()
                    if esize != size or offset != size:
                        raise Malformed("END size %d, FILE size %d, received %d" % (esize, size, offset))
                    got = hasher.digest()
                    if got != digest:
                        die("verification failed: whole-file BLAKE3 %s, END says %s" % (got.hex(), digest.hex()))
                        raise Done(EXIT_FAIL)
                    os.fsync(fd)
                    os.close(fd)
                    fd = None
                    _, mode, mtime_ns, _ = meta
                    os.chmod(part, mode)
                    os.utime(part, ns=(mtime_ns, mtime_ns))
                    os.rename(part, dest)
                    dfd = os.open(os.path.dirname(dest), os.O_RDONLY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
                    print("OK %s %d" % (got.hex(), size))
                    sys.stdout.flush()
                    return
        finally:
            if fd is not None:
                os.close(fd)
            # No resume in this client: never leave partial data behind.
            try:
                os.unlink(part)
            except FileNotFoundError:
                pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def die(msg):
    print("pyclient: " + msg, file=sys.stderr)


def main(argv):
    p = argparse.ArgumentParser(description="minimal independent ZSND/1 client (PROTOCOL.md)")
    p.add_argument("--self-test", action="store_true", help="check the BLAKE3 implementation and exit")
    p.add_argument("--heartbeat-ms", type=int, default=0,
                   help="libzmq ZMTP heartbeat interval (ZMQ_HEARTBEAT_IVL); 0 = off")
    p.add_argument("--window", type=int, default=8 << 20, help="initial credit window in octets")
    p.add_argument("--max-window", type=int, default=32 << 20, help="credit window budget in octets")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds of server silence before giving up")
    p.add_argument("--curve-serverkey", default="", help="CURVE: the server's public key (Z85); turns CURVE on")
    p.add_argument("--curve-publickey", default="", help="CURVE: this client's public key (Z85)")
    p.add_argument("--curve-secretkey", default="", help="CURVE: this client's secret key (Z85)")
    p.add_argument("endpoint", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("outdir", nargs="?")
    args = p.parse_args(argv)
    if args.self_test:
        return self_test()
    if not (args.endpoint and args.name and args.outdir):
        p.print_usage(sys.stderr)
        return EXIT_USAGE
    if args.heartbeat_ms < 0 or args.window <= 0 or args.timeout <= 0:
        die("--heartbeat-ms, --window and --timeout must be positive")
        return EXIT_USAGE
    args.zsnd_heartbeat_ms = 2000
    bad = check_name(args.name)
    if bad:
        die("invalid name %r: %s" % (args.name, bad))
        return EXIT_USAGE
    if not os.path.isdir(args.outdir):
        die("output directory %s does not exist" % args.outdir)
        return EXIT_USAGE

    client = Client(args)
    status = EXIT_OK
    try:
        client.handshake()
        client.fetch(args.name, args.outdir)
    except Done as d:
        status = d.status
    except Malformed as m:
        die("protocol error: %s" % m)
        try:
            client.send_error(0, m.code, str(m))  # the server drops the session
        except Exception:
            pass
        client.open = False
        status = EXIT_FAIL
    except KeyboardInterrupt:
        status = EXIT_FAIL
    finally:
        if client.open:
            # Section 9: all requests done (or abandoned): BYE 200 and close.
            client.send_bye("done" if status == EXIT_OK else "giving up")
        client.close()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
