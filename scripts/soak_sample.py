#!/usr/bin/env python3
"""Samples a router's admin port for scripts/soak.sh, and reports.

  soak_sample.py sample --admin 127.0.0.1:17881 --every 10 --csv soak.csv
  soak_sample.py report --csv soak.csv --png soak.png

`sample` scrapes /metrics every N seconds until killed and appends one CSV
row per scrape: seconds since the first, resident bytes, routed messages
per second and session operations per second since the last scrape, and
the 50th and 99th percentile of the time inside the router of the Routes
handled since the last scrape (from imrouter_route_duration_seconds,
upper bucket bounds). `report` prints a summary, writes a PNG (four
stacked plots, drawn here without any library) and exits 1 when the RSS
keeps growing (the last third's median more than 10% and 8 MiB above the
middle third's).
"""

import argparse
import csv
import struct
import sys
import time
import urllib.request
import zlib


def scrape(admin):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    sums, buckets = {}, {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{", 1)[0]
        value = float(value)
        if name == "imrouter_route_duration_seconds_bucket":
            le = series.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0) + value
        else:
            sums[name] = sums.get(name, 0) + value
    return sums, buckets


def quantile(cumulative_delta, q):
    """The upper bound of the bucket holding the q-quantile."""
    bounds = sorted(cumulative_delta)
    total = cumulative_delta[bounds[-1]] if bounds else 0
    if total <= 0:
        return 0.0
    for bound in bounds:
        if cumulative_delta[bound] >= q * total:
            return bound
    return bounds[-1]


def sample(args):
    fields = ["seconds", "rss_bytes", "routed_per_s", "session_ops_per_s",
              "route_p50_us", "route_p99_us", "connections", "sessions"]
    with open(args.csv, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(fields)
        out.flush()
        start, last = None, None
        while True:
            try:
                sums, buckets = scrape(args.admin)
            except OSError as error:
                print(f"soak_sample: {error}", file=sys.stderr)
                time.sleep(args.every)
                continue
            now = time.monotonic()
            if start is None:
                start = now
            if last is not None:
                then, old_sums, old_buckets = last
                span = max(now - then, 1e-9)
                delta = {b: buckets[b] - old_buckets.get(b, 0) for b in buckets}
                routed = sums.get("imrouter_routes_routed_total", 0) - old_sums.get(
                    "imrouter_routes_routed_total", 0)
                ops = (sums.get("imrouter_session_opens_total", 0)
                       + sums.get("imrouter_session_closes_total", 0)
                       - old_sums.get("imrouter_session_opens_total", 0)
                       - old_sums.get("imrouter_session_closes_total", 0))
                writer.writerow([
                    f"{now - start:.1f}",
                    int(sums.get("imrouter_resident_memory_bytes", 0)),
                    f"{routed / span:.0f}",
                    f"{ops / span:.0f}",
                    f"{quantile(delta, 0.5) * 1e6:.0f}",
                    f"{quantile(delta, 0.99) * 1e6:.0f}",
                    int(sums.get("imrouter_connections_open", 0)),
                    int(sums.get("imrouter_sessions", 0)),
                ])
                out.flush()
            last = (now, sums, buckets)
            time.sleep(args.every)


# ----- A PNG without libraries ------------------------------------------------

WIDTH, PANEL, MARGIN = 900, 170, 30
FONT = {  # 3x5 digits and a few letters, for axis labels
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", " ": "000000000000000",
    "M": "101111111101101", "i": "010000010010010", "B": "110101110101110",
    "s": "011100010001110", "u": "000101101101111", "m": "000111111101101",
    "/": "001001010100100", "k": "100101110101101", "p": "000111101111100",
    "R": "110101110101101", "S": "011100010001110", "x": "000101010101000",
    "o": "000111101101111", "t": "010111010010011", "e": "000111111100111",
    "d": "001001111101111", "n": "000110101101101", "r": "000110101100100",
}


def png(path, rows, width, height):
    raw = b"".join(b"\x00" + bytes(row) for row in rows)
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        out.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        out.write(chunk(b"IEND", b""))


def plot(path, series):
    """series: [(label, [(x, y)], (r, g, b))], one panel each."""
    height = len(series) * PANEL
    image = [[255] * (WIDTH * 3) for _ in range(height)]

    def dot(x, y, color):
        if 0 <= x < WIDTH and 0 <= y < height:
            image[y][3 * x:3 * x + 3] = color

    def text(x, y, string, color=(0, 0, 0)):
        for i, char in enumerate(string):
            glyph = FONT.get(char, FONT[" "])
            for j, bit in enumerate(glyph):
                if bit == "1":
                    for dx in range(2):
                        for dy in range(2):
                            dot(x + i * 8 + (j % 3) * 2 + dx, y + (j // 3) * 2 + dy, color)

    xs = [x for _, points, _ in series for x, _ in points]
    x_max = max(xs) if xs else 1
    for panel, (label, points, color) in enumerate(series):
        top = panel * PANEL + 18
        bottom = (panel + 1) * PANEL - 12
        left, right = MARGIN + 40, WIDTH - MARGIN
        ys = [y for _, y in points] or [0]
        y_max = max(ys) * 1.1 or 1
        for x in range(left, right):
            dot(x, bottom, (0, 0, 0))
        for y in range(top, bottom):
            dot(left, y, (0, 0, 0))
        text(left + 4, top - 14, label, color)
        text(4, top, f"{y_max:.0f}" if y_max >= 10 else f"{y_max:.1f}")
        text(4, bottom - 10, "0")
        last = None
        for x_value, y_value in points:
            x = left + int((right - left) * x_value / x_max)
            y = bottom - int((bottom - top) * y_value / y_max)
            if last:
                steps = max(abs(x - last[0]), abs(y - last[1]), 1)
                for s in range(steps + 1):
                    dot(last[0] + (x - last[0]) * s // steps,
                        last[1] + (y - last[1]) * s // steps, color)
            last = (x, y)
        text(right - 60, bottom + 3, f"{x_max:.0f} s")
    png(path, image, WIDTH, height)


def report(args):
    with open(args.csv) as source:
        rows = list(csv.DictReader(source))
    if len(rows) < 6:
        print(f"soak_sample: only {len(rows)} samples", file=sys.stderr)
        return 1
    col = lambda name: [float(row[name]) for row in rows]
    t, rss = col("seconds"), col("rss_bytes")
    median = lambda values: sorted(values)[len(values) // 2]
    third = len(rows) // 3
    middle, last = median(rss[third:2 * third]), median(rss[2 * third:])
    growth = last - middle
    routed, p99 = col("routed_per_s"), col("route_p99_us")
    print(f"samples {len(rows)} over {t[-1]:.0f} s")
    print(f"RSS: first {rss[0] / 2**20:.1f} MiB, max {max(rss) / 2**20:.1f} MiB, "
          f"median of the middle third {middle / 2**20:.1f} MiB, of the last third "
          f"{last / 2**20:.1f} MiB")
    print(f"routed per second: median {median(routed):,.0f}, min {min(routed):,.0f}, "
          f"max {max(routed):,.0f}")
    print(f"session operations per second: median {median(col('session_ops_per_s')):,.0f}")
    print(f"time in router p99 (per 10 s): median {median(p99):,.0f} us, max {max(p99):,.0f} us; "
          f"p50 median {median(col('route_p50_us')):,.0f} us")
    plot(args.png, [
        ("RSS MiB", [(x, y / 2**20) for x, y in zip(t, rss)], (200, 30, 30)),
        ("routed/s k", [(x, y / 1e3) for x, y in zip(t, routed)], (30, 90, 200)),
        ("session ops/s k", [(x, y / 1e3) for x, y in zip(t, col("session_ops_per_s"))],
         (30, 150, 60)),
        ("p99 us", list(zip(t, p99)), (120, 60, 160)),
    ])
    if growth > 0.10 * middle and growth > 8 * 2**20:
        print(f"soak_sample: RSS grew by {growth / 2**20:.1f} MiB from the middle to the last third",
              file=sys.stderr)
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--admin", required=True)
    s.add_argument("--every", type=float, default=10)
    s.add_argument("--csv", required=True)
    r = sub.add_parser("report")
    r.add_argument("--csv", required=True)
    r.add_argument("--png", required=True)
    args = parser.parse_args()
    if args.command == "sample":
        sample(args)
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
