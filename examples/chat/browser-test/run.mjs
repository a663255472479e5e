// The chat example in a real browser: Debian's Chromium, driven by
// playwright-core (never a downloaded browser). Starts the routers and
// two chat nodes itself, on 127.0.0.1, and stops them at the end.
//
//   node run.mjs single    one router, two chat nodes
//   node run.mjs cluster   etcd and three routers (one killed mid-conversation)
//
// Environment: IMROUTER (the router binary), CHAT (the chat binary),
// ETCD (default /usr/bin/etcd), SHOTS (where screenshots go).
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const mode = process.argv[2] || "single";
const IMROUTER = process.env.IMROUTER || "target/debug/imrouter";
const CHAT = process.env.CHAT || "target/debug/imrouter-chat";
const ETCD = process.env.ETCD || "/usr/bin/etcd";
const SHOTS = process.env.SHOTS || "examples/chat/browser-test/screenshots";
mkdirSync(SHOTS, { recursive: true });
const tmp = mkdtempSync(path.join(os.tmpdir(), "imrouter-chat-"));
const children = [];

function start(cmd, args, name) {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  child.stderr.on("data", (d) => { if (process.env.VERBOSE) process.stderr.write(`[${name}] ${d}`); });
  children.push(child);
  return child;
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function listening(port, what) {
  for (let i = 0; i < 300; i++) {
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.on("connect", () => { socket.destroy(); resolve(true); });
      socket.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not listen on ${port}`);
}

function stopAll() {
  for (const child of children) {
    try { child.kill("SIGKILL"); } catch {}
  }
}
process.on("exit", stopAll);

async function check(condition, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out: ${what}`);
}

async function main() {
  // Routers.
  const routers = [];
  if (mode === "cluster") {
    const [client, peer] = [await freePort(), await freePort()];
    const etcdUrl = `http://127.0.0.1:${client}`;
    start(ETCD, ["--data-dir", path.join(tmp, "etcd"), "--listen-client-urls", etcdUrl,
      "--advertise-client-urls", etcdUrl, "--listen-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-advertise-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-cluster", `default=http://127.0.0.1:${peer}`], "etcd");
    await listening(client, "etcd");
    for (const name of ["r1", "r2", "r3"]) {
      const port = await freePort();
      const child = start(IMROUTER, ["serve", "--listen", `127.0.0.1:${port}`, "--admin-listen", "127.0.0.1:0", "--shards", "1",
        "--etcd", etcdUrl, "--cluster", "chat", "--advertise", `127.0.0.1:${port}`, "--name", name,
        "--lease-ttl-ms", "2000", "--rebalance-batch-slots", "8192", "--rebalance-interval-ms", "100"], name);
      await listening(port, name);
      routers.push({ port, child });
    }
  } else {
    const port = await freePort();
    const child = start(IMROUTER, ["serve", "--listen", `127.0.0.1:${port}`, "--admin-listen", "127.0.0.1:0", "--shards", "2"], "router");
    await listening(port, "router");
    routers.push({ port, child });
  }
  const seeds = routers.map((r) => `127.0.0.1:${r.port}`).join(",");
  // Two chat nodes.
  const nodes = [];
  for (const name of ["chat-a", "chat-b"]) {
    const port = await freePort();
    start(CHAT, ["--listen", `127.0.0.1:${port}`, "--router", seeds, "--name", `${name}-${mode}`,
      "--db", path.join(tmp, `${name}.sqlite`)], name);
    await listening(port, name);
    nodes.push(`http://127.0.0.1:${port}/`);
  }
  if (mode === "cluster") await new Promise((r) => setTimeout(r, 2000)); // the three share the slots

  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-background-networking"],
  });
  const signIn = async (url, user) => {
    const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
    await page.goto(url);
    await page.fill("#user", user);
    await page.click("#signin");
    await page.waitForSelector("#whoami:has-text('signed in as')");
    return page;
  };
  const online = (page, user) => page.locator(`#online li[data-user="${user}"]`).count().then((n) => n > 0);
  const send = async (page, to, text) => {
    await page.fill("#to", to);
    await page.fill("#text", text);
    await page.click("#send");
  };
  const texts = (page) => page.locator("#messages li .text").allTextContents();
  const badge = (page, text, to) =>
    page.locator(`#messages li:has(.text:text-is("${text}")) .state[data-to="${to}"]`).getAttribute("data-state");

  const alice = await signIn(nodes[0], "alice");
  let bob = await signIn(nodes[1], "bob");
  await check(() => online(alice, "bob"), "alice sees bob online");
  await check(() => online(bob, "alice"), "bob sees alice online");

  // One to one, across nodes.
  await send(alice, "bob", "hello bob");
  await check(async () => (await texts(bob)).includes("hello bob"), "bob receives hello");
  await check(async () => (await badge(alice, "hello bob", "bob")) === "delivered", "delivered state");
  await send(bob, "alice", "hi alice!");
  await check(async () => (await texts(alice)).includes("hi alice!"), "alice receives the answer");
  await alice.screenshot({ path: path.join(SHOTS, `${mode}-1-alice.png`) });
  await bob.screenshot({ path: path.join(SHOTS, `${mode}-1-bob.png`) });

  // bob goes offline; messages wait for him on alice's node.
  await bob.close();
  await check(async () => !(await online(alice, "bob")), "alice sees bob leave");
  await send(alice, "bob", "are you there?");
  await check(async () => (await badge(alice, "are you there?", "bob")) === "offline", "offline state");
  await send(alice, "bob,carol", "group: lunch at noon");
  await check(async () => (await badge(alice, "group: lunch at noon", "carol")) === "offline", "group offline state");
  await alice.screenshot({ path: path.join(SHOTS, `${mode}-2-alice-offline.png`) });

  // bob comes back: the kept messages arrive, and alice sees them delivered.
  bob = await signIn(nodes[1], "bob");
  await check(async () => (await texts(bob)).includes("are you there?"), "bob receives the kept message");
  await check(async () => (await texts(bob)).includes("group: lunch at noon"), "bob receives the group message");
  await check(async () => (await badge(alice, "are you there?", "bob")) === "delivered", "kept message delivered");
  await check(async () => (await badge(alice, "group: lunch at noon", "bob")) === "delivered", "group delivered to bob");

  if (mode === "cluster") {
    // The router that owns bob's slot is killed mid-conversation:
    // nothing is lost.
    const owner = await (await fetch(nodes[0] + "owner?user=bob")).json();
    const victim = routers.find((r) => owner.router === `127.0.0.1:${r.port}`);
    if (!victim) throw new Error(`no router owns bob: ${JSON.stringify(owner)}`);
    const sent = [];
    for (let i = 1; i <= 10; i++) {
      const text = `cluster message ${i}`;
      await send(alice, "bob", text);
      sent.push(text);
      if (i === 4) victim.child.kill("SIGKILL");
      await new Promise((r) => setTimeout(r, 150));
    }
    await check(async () => {
      const got = await texts(bob);
      return sent.every((t) => got.includes(t));
    }, "bob receives every message across the kill", 30000);
    const got = await texts(bob);
    for (const text of sent) {
      const n = got.filter((t) => t === text).length;
      if (n !== 1) throw new Error(`"${text}" shown ${n} times`);
    }
    await check(async () => (await badge(alice, "cluster message 10", "bob")) === "delivered", "delivered after the kill", 30000);
  }
  await alice.screenshot({ path: path.join(SHOTS, `${mode}-3-alice.png`) });
  await bob.screenshot({ path: path.join(SHOTS, `${mode}-3-bob.png`) });
  await browser.close();
  console.log(`browser test (${mode}): OK; screenshots in ${SHOTS}`);
}

main().then(() => { stopAll(); process.exit(0); }, (error) => {
  console.error(`browser test (${mode}): FAILED: ${error.message}`);
  stopAll();
  process.exit(1);
});
