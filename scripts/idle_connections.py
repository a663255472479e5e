#!/usr/bin/env python3
"""Resident memory a server spends per idle connection.

imrouter mode (default): opens --count TCP connections to the router, each
sending a Hello (protocol_version 3, node_name idle-<i>, incarnation 1,
shard -1 by default), waits until every connection got its whole Welcome,
waits --settle seconds, and reports the router's VmRSS before and after.

nats mode (--nats): each connection sends `CONNECT {"verbose":false}\\r\\nPING\\r\\n`
and is ready once PONG has been read.

Standard library only. The Hello flatbuffer is laid out by hand (see
hello_frame); frames the router sends are decoded with a minimal flatbuffers
reader (enough for Envelope, Welcome and Error).

While waiting (for Welcomes, then --settle), every connection keeps being
read and whatever arrives is discarded and counted (a real node reads its
stream: with 1,000 nodes the router sends each node a NodeEvent for every
node that joins after it). --no-drain stops reading a connection once its
Welcome (or PONG) is in, so that later frames stay in the kernel's socket
buffers or the server's output buffers.

Usage:
  idle_connections.py --router 127.0.0.1:17890 --count 1000 --pid PID [--json out.json]
  idle_connections.py --nats --router 127.0.0.1:14299 --count 1000 --pid PID
"""

import argparse
import collections
import json
import resource
import selectors
import socket
import struct
import sys
import time

# Body union of schema/imrouter.fbs, in declaration order (NONE = 0).
BODY_NAMES = [
    "NONE", "Hello", "Welcome", "SessionOpen", "SessionClose", "Route", "Deliver",
    "Status", "Kick", "Ping", "Pong", "Error", "Goodbye", "Locate", "Located",
    "Broadcast", "NodeEvent", "Fanout", "Subscribe", "Unsubscribe", "Publish",
    "SessionSync", "SessionSyncAck", "Ack",
]
BODY_HELLO, BODY_WELCOME, BODY_ERROR = 1, 2, 11


def hello_frame(node_name, incarnation=1, protocol_version=3, shard=-1):
    """One frame: u32 LE length (the flatbuffers size prefix), then a
    flatbuffer with file identifier IMR1 whose root Envelope has body Hello.

    Laid out the way a builder would, every scalar aligned relative to the
    start of the frame (the router verifies the frame as a size-prefixed
    buffer). Positions are frame positions; the flatbuffer starts at 4.

      0  u32 size prefix (frame length - 4)
      4  u32 root offset (to the Envelope table, relative to position 4)
      8  "IMR1"
     12  Envelope vtable: size 8, table size 12, body_type at +4, body at +8
     20  Envelope table: soffset 8 (to 12), u8 body_type=Hello, u32 body offset
     32  Hello vtable (10 or 12 bytes), padding to 48
     48  Hello table: soffset, u32 node_name offset (+4), u64 incarnation (+8),
         u16 protocol_version (+16), i16 shard (+18, only when not -1)
     68  string node_name: u32 length, bytes, NUL, padding to 8
    """
    name = node_name.encode()
    string = struct.pack("<I", len(name)) + name + b"\0"
    string += b"\0" * (-len(string) % 8)
    frame = bytearray(68 + len(string))
    struct.pack_into("<I", frame, 4, 20 - 4)
    frame[8:12] = b"IMR1"
    struct.pack_into("<HHHH", frame, 12, 8, 12, 4, 8)
    struct.pack_into("<iB3xI", frame, 20, 20 - 12, BODY_HELLO, 48 - 28)
    if shard == -1:  # the default: not written, as a builder does
        struct.pack_into("<HHHHH", frame, 32, 10, 20, 16, 4, 8)
    else:
        struct.pack_into("<HHHHHHH", frame, 32, 14, 20, 16, 4, 8, 0, 18)
    struct.pack_into("<iIQH", frame, 48, 48 - 32, 68 - 52, incarnation, protocol_version)
    if shard != -1:
        struct.pack_into("<h", frame, 66, shard)
    frame[68:] = string
    struct.pack_into("<I", frame, 0, len(frame) - 4)
    return bytes(frame)


class Table:
    """A flatbuffers table inside `buf` (a flatbuffer without size prefix)."""

    def __init__(self, buf, pos):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, index):
        entry = 4 + 2 * index
        if entry + 2 > self.vsize:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + entry)[0]
        return self.pos + offset if offset else None

    def scalar(self, index, fmt, default=0):
        at = self._field(index)
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def _indirect(self, index):
        at = self._field(index)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, index):
        at = self._indirect(index)
        return None if at is None else Table(self.buf, at)

    def string(self, index):
        at = self._indirect(index)
        if at is None:
            return None
        length = struct.unpack_from("<I", self.buf, at)[0]
        return bytes(self.buf[at + 4:at + 4 + length]).decode(errors="replace")

    def vector_len(self, index):
        at = self._indirect(index)
        return 0 if at is None else struct.unpack_from("<I", self.buf, at)[0]


def envelope(frame):
    """(body type, body Table) of one frame (length prefix included)."""
    buf = memoryview(frame)[4:]
    if bytes(buf[4:8]) != b"IMR1":
        raise ValueError("frame without the IMR1 identifier")
    root = Table(buf, struct.unpack_from("<I", buf, 0)[0])
    return root.scalar(0, "B"), root.table(1)


def welcome_fields(body):
    return {
        "protocol_version": body.scalar(0, "H"),
        "router_id": body.scalar(1, "Q"),
        "shard_count": body.scalar(2, "H"),
        "slot_count": body.scalar(3, "H"),
        "shard": body.scalar(4, "H"),
        "heartbeat_ms": body.scalar(5, "I"),
        "max_frame_bytes": body.scalar(6, "I"),
        "nodes": body.vector_len(7),
        "senior": body.string(8),
    }


def self_test():
    """The hand-made Hello decodes to what was put in."""
    for shard in (-1, 3):
        frame = hello_frame("idle-42", incarnation=7, shard=shard)
        assert struct.unpack_from("<I", frame)[0] == len(frame) - 4
        kind, body = envelope(frame)
        assert kind == BODY_HELLO
        assert body.scalar(0, "H") == 3
        assert body.string(1) == "idle-42"
        assert body.scalar(2, "Q") == 7
        assert body.scalar(4, "h", default=-1) == shard


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmData", "Threads"):
                fields[key] = int(value.split()[0])
    return fields


def smaps_rollup(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1])
    except OSError:
        pass
    return fields


def socket_memory(pid):
    """Kernel socket memory is not in RSS; /proc/net/sockstat shows it."""
    try:
        with open("/proc/net/sockstat") as sockstat:
            return sockstat.read()
    except OSError:
        return ""


def copy_smaps(pid, path):
    with open(f"/proc/{pid}/smaps") as smaps, open(path, "w") as out:
        out.write(smaps.read())


class Conn:
    __slots__ = ("sock", "index", "buf", "ready", "frames", "bytes_after", "welcome", "welcome_bytes", "draining")

    def __init__(self, sock, index):
        self.sock, self.index = sock, index
        self.buf = bytearray()
        self.ready = False
        self.frames = collections.Counter()
        self.bytes_after = 0
        self.welcome = None
        self.welcome_bytes = 0
        self.draining = True


class Failure(Exception):
    pass


def handle_imrouter(conn, data):
    conn.buf += data
    while len(conn.buf) >= 4:
        length = struct.unpack_from("<I", conn.buf)[0]
        if len(conn.buf) < 4 + length:
            break
        frame = bytes(conn.buf[:4 + length])
        del conn.buf[:4 + length]
        kind, body = envelope(frame)
        name = BODY_NAMES[kind] if kind < len(BODY_NAMES) else f"type{kind}"
        conn.frames[name] += 1
        if kind == BODY_ERROR:
            code, text = body.scalar(0, "H"), body.string(1)
            raise Failure(f"connection {conn.index}: Error code {code}: {text}")
        if not conn.ready:
            if kind != BODY_WELCOME:
                raise Failure(f"connection {conn.index}: first frame is {name}, not Welcome")
            conn.welcome = welcome_fields(body)
            conn.welcome_bytes = len(frame)
            conn.ready = True
        else:
            conn.bytes_after += len(frame)


def handle_nats(conn, data):
    if conn.ready:
        conn.bytes_after += len(data)
        conn.buf += data
        conn.frames["PING"] = conn.buf.count(b"PING\r\n")
        return
    conn.buf += data
    if b"-ERR" in conn.buf:
        raise Failure(f"connection {conn.index}: {bytes(conn.buf)!r}")
    if b"PONG\r\n" in conn.buf:
        conn.ready = True
        conn.frames["INFO"] = conn.buf.count(b"INFO ")
        conn.frames["PONG"] = 1
        conn.buf = bytearray(conn.buf[conn.buf.index(b"PONG\r\n") + 6:])


def pump(selector, handler, timeout, drain):
    """Reads whatever is ready, once. Returns the connections closed by the peer."""
    closed = []
    for key, _ in selector.select(timeout):
        conn = key.data
        try:
            data = conn.sock.recv(1 << 16)
        except BlockingIOError:
            continue
        except OSError as error:
            raise Failure(f"connection {conn.index}: {error}") from error
        if not data:
            closed.append(conn)
            selector.unregister(conn.sock)
            continue
        was_ready = conn.ready
        handler(conn, data)
        if conn.ready and not was_ready and not drain:
            selector.unregister(conn.sock)
            conn.draining = False
    return closed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", required=True, help="HOST:PORT of the server")
    parser.add_argument("--count", type=int, required=True, help="connections to open")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--nats", action="store_true", help="the server is a nats-server")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait after the last Welcome/PONG")
    parser.add_argument("--no-drain", action="store_true",
                        help="stop reading a connection once its Welcome/PONG is in")
    parser.add_argument("--name-prefix", default="idle-", help="node names are PREFIX0..PREFIX(N-1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every Welcome/PONG")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--connect-interval", type=float, default=0.0,
                        help="seconds between two connections (default: as fast as possible)")
    parser.add_argument("--pre-churn", type=int, default=0,
                        help="before the first RSS reading: open this many plain TCP connections at once "
                             "(no Hello), wait 1 s, close them and wait 2 s (a reconnect storm's allocations)")
    parser.add_argument("--smaps-dir", help="copy /proc/PID/smaps here before (smaps.before) and after (smaps.after)")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="after the measurement, keep the connections open (and read) this many seconds")
    args = parser.parse_args()
    self_test()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.count + 1024), hard))

    host, port = args.router.rsplit(":", 1)
    address = (host, int(port))
    handler = handle_nats if args.nats else handle_imrouter
    drain = not args.no_drain
    target = "nats-server" if args.nats else "imrouter"

    if args.pre_churn:
        churn = [socket.create_connection(address, timeout=10) for _ in range(args.pre_churn)]
        time.sleep(1)
        for sock in churn:
            sock.close()
        time.sleep(2)

    status_before = proc_status(args.pid)
    rollup_before = smaps_rollup(args.pid)
    sockstat_before = socket_memory(args.pid)
    before = status_before["VmRSS"]
    if args.smaps_dir:
        copy_smaps(args.pid, f"{args.smaps_dir}/smaps.before")

    selector = selectors.DefaultSelector()
    conns = []
    started = time.monotonic()
    try:
        for i in range(args.count):
            sock = socket.create_connection(address, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if args.nats:
                sock.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
            else:
                sock.sendall(hello_frame(f"{args.name_prefix}{i}", incarnation=1, protocol_version=3))
            sock.setblocking(False)
            conn = Conn(sock, i)
            conns.append(conn)
            selector.register(sock, selectors.EVENT_READ, conn)
            if args.connect_interval:
                pump(selector, handler, args.connect_interval, drain)
            elif i % 32 == 31:
                closed = pump(selector, handler, 0, drain)
                if closed:
                    raise Failure(f"connection {closed[0].index} closed by the server")
        deadline = time.monotonic() + args.timeout
        while not all(c.ready for c in conns):
            if time.monotonic() > deadline:
                missing = sum(not c.ready for c in conns)
                raise Failure(f"{missing} connections without Welcome/PONG after {args.timeout} s")
            closed = pump(selector, handler, 0.2, drain)
            if closed:
                raise Failure(f"connection {closed[0].index} closed by the server")
        all_ready = time.monotonic()
        settle_end = all_ready + args.settle
        while (now := time.monotonic()) < settle_end:
            if drain:
                closed = pump(selector, handler, settle_end - now, drain)
                if closed:
                    raise Failure(f"connection {closed[0].index} closed by the server")
            else:
                time.sleep(settle_end - now)

        status_after = proc_status(args.pid)
        rollup_after = smaps_rollup(args.pid)
        sockstat_after = socket_memory(args.pid)
        after = status_after["VmRSS"]
        if args.smaps_dir:
            copy_smaps(args.pid, f"{args.smaps_dir}/smaps.after")
        if args.hold:
            print(f"  holding the connections {args.hold:g} s (RSS now {after:,} KB)", flush=True)
            hold_end = time.monotonic() + args.hold
            while (now := time.monotonic()) < hold_end:
                pump(selector, handler, hold_end - now, drain)
    finally:
        for conn in conns:
            try:
                conn.sock.close()
            except OSError:
                pass
        selector.close()

    frames = collections.Counter()
    for conn in conns:
        frames.update(conn.frames)
    per_conn = (after - before) / args.count
    result = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target,
        "router": args.router,
        "pid": args.pid,
        "count": args.count,
        "drain": drain,
        "settle_s": args.settle,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_per_connection_kb": round(per_conn, 2),
        "seconds_to_all_ready": round(all_ready - started, 3),
        "frames_received": dict(frames),
        "welcome_bytes_total": sum(c.welcome_bytes for c in conns),
        "welcome_bytes_max": max(c.welcome_bytes for c in conns),
        "connect_interval_s": args.connect_interval,
        "pre_churn": args.pre_churn,
        "bytes_received_after_handshake": sum(c.bytes_after for c in conns),
        "status_before": status_before,
        "status_after": status_after,
        "smaps_rollup_before_kb": rollup_before,
        "smaps_rollup_after_kb": rollup_after,
        "sockstat_before": sockstat_before,
        "sockstat_after": sockstat_after,
    }
    if not args.nats:
        shards = collections.Counter(c.welcome["shard"] for c in conns)
        result["welcome_first"] = conns[0].welcome
        result["welcome_last"] = conns[-1].welcome
        result["connections_per_shard"] = {str(k): v for k, v in sorted(shards.items())}

    print(f"{target} at {args.router} (pid {args.pid}): {args.count} idle connections, "
          f"{'draining' if drain else 'not reading'} after the handshake, {args.settle:g} s settle")
    if not args.nats:
        w = conns[-1].welcome
        print(f"  every connection got a Welcome (protocol {w['protocol_version']}, "
              f"{w['shard_count']} shards, heartbeat {w['heartbeat_ms']} ms, last one listed {w['nodes']} nodes); "
              f"connections per shard {result['connections_per_shard']}")
    else:
        print("  every connection got its PONG")
    if not args.nats:
        print(f"  Welcome frames: {result['welcome_bytes_total']:,} bytes in all, largest {result['welcome_bytes_max']:,}")
    print(f"  frames received after the handshake: {dict(frames)}; "
          f"{result['bytes_received_after_handshake']:,} bytes")
    print(f"  RSS before: {before:,} KB")
    print(f"  RSS after:  {after:,} KB")
    print(f"  per connection: {per_conn:,.2f} KB  ((after - before) / {args.count})")
    for key in ("RssAnon", "RssFile"):
        if key in status_before and key in status_after:
            print(f"  {key}: {status_before[key]:,} -> {status_after[key]:,} KB")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as failure:
        print(f"idle_connections.py: {failure}", file=sys.stderr)
        sys.exit(2)
