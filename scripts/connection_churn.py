#!/usr/bin/env python3
"""Node connections served one after another: each sends Hello and Goodbye
and reads until the router closes; the router's RSS is printed five times
along the way. A router that keeps anything per connection served grows.

  scripts/connection_churn.py 127.0.0.1:7800 ROUTER_PID 100000 names
  scripts/connection_churn.py 127.0.0.1:7800 ROUTER_PID 100000 incarnations

`names`: a new node name per connection; `incarnations`: one name, a new
incarnation per connection (a node restarting in a loop). Standard library
only; the Hello is laid out by scripts/idle_connections.py, the Goodbye
(no reason) here.
"""
import os, socket, struct, sys, time, importlib.util
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("idle", os.path.join(here, "idle_connections.py"))
idle = importlib.util.module_from_spec(spec); spec.loader.exec_module(idle)

def goodbye_frame():
    """Envelope { body_type: Goodbye, body: Goodbye {} }, size-prefixed:
    vtable of the Envelope at 12, the Envelope at 20, an empty vtable at
    32 and the empty Goodbye table at 36."""
    f = bytearray(40)
    struct.pack_into("<I", f, 0, 36)
    struct.pack_into("<I", f, 4, 20 - 4)
    f[8:12] = b"IMR1"
    struct.pack_into("<HHHH", f, 12, 8, 12, 4, 8)
    struct.pack_into("<iB3xI", f, 20, 20 - 12, 12, 36 - 28)
    struct.pack_into("<HH", f, 32, 4, 4)
    struct.pack_into("<i", f, 36, 36 - 32)
    return bytes(f)

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

addr, pid, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
host, port = addr.rsplit(":", 1)
bye = goodbye_frame()
start = time.time()
print(f"start RSS {rss(pid)} KB", flush=True)
for i in range(count):
    name = f"churn-{i}" if mode == "names" else "churn"
    incarnation = 1 if mode == "names" else i + 1
    s = socket.create_connection((host, int(port)))
    s.sendall(idle.hello_frame(name, incarnation=incarnation) + bye)
    while s.recv(65536):
        pass
    s.close()
    if (i + 1) % (count // 5) == 0:
        print(f"{i+1} connections: RSS {rss(pid)} KB ({time.time()-start:.0f} s)", flush=True)
