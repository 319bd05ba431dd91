/**
 * hearth-client against a real `hearth serve` (the fake driver): the verbs, typed errors, event
 * streams that resume after a drop and a restart with nothing lost or repeated, and keyed starts
 * through an outage. Every test is bounded.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  Busy,
  Cancelled,
  Conflict,
  DaemonUnavailable,
  HearthClient,
  HearthError,
  InvalidInput,
  NotFound,
  Unauthorized,
  Forbidden,
  errorFromJson,
  Unavailable,
  type Event,
} from "../src/index.js";
import { BOUND, Daemon, Proxy, freePort } from "./daemon.js";
import { writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { createConsole } from "../examples/console.js";
import http from "node:http";

const T = { timeout: 90_000 };

/** The seqs of every event of `slugs` in the store up to `last` (a fresh stream, read until then). */
async function stored(client: HearthClient, slugs: string[], last: number): Promise<number[]> {
  const seqs: number[] = [];
  for await (const event of client.watch({ signal: AbortSignal.timeout(BOUND * 1000) })) {
    if (event.seq > last) break;
    if (slugs.includes(event.slug)) seqs.push(event.seq);
    if (event.seq === last) break;
  }
  return seqs;
}

/** Strictly increasing: nothing repeated, nothing out of order. */
function increasing(seqs: number[]): void {
  for (let i = 1; i < seqs.length; i += 1) assert.ok(seqs[i]! > seqs[i - 1]!, `seq ${seqs[i]} after ${seqs[i - 1]}`);
}

const final = (event: Event): boolean =>
  event.kind === "state" && ["succeeded", "failed", "cancelled", "interrupted"].includes(event.state ?? "");

describe("hearth-client on a real daemon", () => {
  const daemon = new Daemon();
  let client: HearthClient;

  before(async () => {
    await daemon.start();
    client = new HearthClient({ socket: daemon.socket, reconnect: 60 });
  });

  after(async () => {
    client?.close();
    await daemon.dispose();
  });

  test("provision: the operation at once, then ready; queries; its events end with the final one", T, async () => {
    const health = await client.health();
    assert.equal(health.status, "ok");
    assert.equal((await client.ready()).status, "ready");
    assert.ok((await client.tiers()).some((tier) => tier.name === "slowish"));

    const op = await client.provision({ slug: "alpha", tier: "solo", driver: "fake", key: "req-alpha" });
    assert.equal(op.slug, "alpha");
    assert.equal(op.verb, "provision");
    assert.equal(op.key, "req-alpha");
    const ref = await op.result({ timeout: BOUND });
    assert.equal(ref?.workspace_slug, "alpha");
    const done = await op.wait({ timeout: BOUND });
    assert.equal(done.state, "succeeded");
    assert.equal((await client.workspace("alpha")).state, "ready");
    assert.deepEqual(
      (await client.workspaces()).map((w) => w.slug),
      ["alpha"],
    );
    const again = await client.provision({ slug: "alpha", tier: "solo", driver: "fake", key: "req-alpha" });
    assert.equal(again.id, op.id); // the key makes it one operation
    assert.equal((await client.operation(op.id)).state, "succeeded");
    assert.ok((await client.operations({ slug: "alpha" })).some((o) => o.id === op.id));

    const events: Event[] = [];
    for await (const event of op.events()) events.push(event);
    assert.ok(events.length >= 3, JSON.stringify(events));
    assert.ok(events.every((event) => event.operation === op.id));
    increasing(events.map((event) => event.seq));
    assert.equal(events.at(-1)!.state, "succeeded");
    assert.deepEqual(
      events.filter((event) => event.kind === "state").map((event) => event.state),
      ["queued", "running", "succeeded"],
    );

    // a snapshot's seq is where a stream of what came after it starts; the final event is named
    const snap = await client.snapshot();
    assert.deepEqual(snap.workspaces.map((w) => w.slug), ["alpha"]);
    assert.equal(snap.workspaces[0]!.operation, null);
    assert.ok(snap.seq >= events.at(-1)!.seq, `${snap.seq}`);
    assert.equal((await client.operation(op.id)).finalSeq, events.at(-1)!.seq);

    const teardown = await client.teardown("alpha");
    const later: Event[] = [];
    for await (const event of client.watch({ after: snap.seq })) {
      later.push(event);
      if (event.operation === teardown.id && event.kind === "state" && event.state === "succeeded") break;
    }
    assert.ok(later.length > 0 && later.every((event) => event.seq > snap.seq));
    assert.ok(later.some((event) => event.operation === teardown.id));
    assert.equal(await teardown.result({ timeout: BOUND }), null);
    assert.equal((await client.workspace("alpha")).state, "tier_torn_down");
  });

  test("typed errors: one class per kind, with its status and the body's fields", T, async () => {
    await assert.rejects(client.workspace("nope"), (error: unknown) => {
      assert.ok(error instanceof NotFound && error instanceof InvalidInput && error instanceof HearthError);
      assert.equal(error.kind, "not_found");
      assert.equal(error.status, 404);
      assert.match(error.message, /nope/);
      return true;
    });
    await assert.rejects(client.operation(987654), NotFound);
    await assert.rejects(client.provision({ slug: "Not A Slug", tier: "solo", driver: "fake" }), (error: unknown) => {
      assert.ok(error instanceof InvalidInput && !(error instanceof NotFound));
      assert.equal(error.kind, "invalid_input");
      assert.equal(error.status, 400);
      return true;
    });
    await assert.rejects(client.provision({ slug: "beta", tier: "no-such-tier", driver: "fake" }), InvalidInput);

    // busy: a running provision holds the slug; a teardown asks for something else
    const slow = await client.provision({ slug: "beta", tier: "glacial", driver: "fake" });
    await assert.rejects(client.upgrade("beta", { tier: "solo" }), (error: unknown) => {
      assert.ok(error instanceof Busy, String(error));
      assert.equal(error.status, 409);
      assert.equal(error.operation, slow.id);
      assert.equal(error.data.operation, slow.id);
      return true;
    });
    await assert.rejects(client.upgrade("beta", { tier: "solo" }), (error: unknown) => {
      assert.ok(error instanceof Busy && error.retryable === true, String(error));
      return true;
    });
    const cancelling = await slow.cancel("the test is done with it");
    assert.equal(cancelling.id, slow.id);
    await assert.rejects(slow.result({ timeout: BOUND }), Cancelled);
    // a key reused for another request: a conflict with its reason, not retryable
    const keyed = await client.provision({ slug: "gamma", tier: "solo", driver: "fake", key: "req-gamma" });
    await keyed.result({ timeout: BOUND });
    await assert.rejects(client.provision({ slug: "delta", tier: "solo", driver: "fake", key: "req-gamma" }), (error: unknown) => {
      assert.ok(error instanceof Conflict, String(error));
      assert.equal(error.reason, "key_reused");
      assert.equal(error.retryable, false);
      return true;
    });

    // the kinds the daemon may answer while it drains, and unknown ones
    const draining = errorFromJson({ kind: "unavailable", message: "draining" }, { status: 503, retryAfter: 2 });
    assert.ok(draining instanceof Unavailable && draining.retryAfter === 2 && draining.status === 503);
    const other = errorFromJson({ kind: "something_new", message: "m", extra: 1 });
    assert.ok(other instanceof HearthError && other.kind === "something_new" && other.data.extra === 1);
    assert.deepEqual(other.toJSON(), { kind: "something_new", message: "m", extra: 1 });
  });

  test("labels: set on provision, changed, filtered on lists and on the event stream", T, async () => {
    const op = await client.provision({ slug: "lab", tier: "solo", driver: "fake", labels: { team: "red", env: "dev" } });
    await op.result({ timeout: BOUND });
    assert.deepEqual((await client.workspace("lab")).labels, { env: "dev", team: "red" });
    const before = (await client.snapshot()).seq;
    const changed = await client.label("lab", { env: "prod", team: null });
    assert.deepEqual(changed.labels, { env: "prod" });
    assert.deepEqual((await client.workspaces({ label: ["env=prod"] })).map((w) => w.slug), ["lab"]);
    assert.deepEqual(await client.workspaces({ label: ["env=prod", "team=red"] }), []);
    assert.deepEqual((await client.workspaces({ labels: { env: "prod" } })).map((w) => w.slug), ["lab"]);
    assert.equal(errorFromJson({ kind: "unavailable", message: "draining", retry_after: 3 }).retryAfter, 3);
    for await (const event of client.watch({ after: before, labels: { env: "prod" } })) {
      assert.equal(event.slug, "lab");
      assert.equal(event.kind, "workspace");
      break;
    }
    await assert.rejects(client.label("lab", { "Bad Key": "x" }), InvalidInput);
  });

  test("a client with no daemon there says so at once", T, async () => {
    const nobody = new HearthClient({ socket: `${daemon.folder}/nobody.sock` });
    const started = Date.now();
    await assert.rejects(nobody.health(), DaemonUnavailable);
    await assert.rejects(nobody.provision({ slug: "x", tier: "solo", driver: "fake", key: "k" }), DaemonUnavailable);
    await assert.rejects(async () => {
      for await (const _ of nobody.watch()) break;
    }, DaemonUnavailable);
    assert.ok(Date.now() - started < 5000);
  });

  test("watch resumes a dropped stream: nothing lost, nothing repeated", T, async () => {
    const proxy = new Proxy(daemon.socket, daemon.folder);
    await proxy.listen();
    const through = new HearthClient({ socket: proxy.socket, reconnect: 30 });
    try {
      const seen: number[] = [];
      const abort = new AbortController();
      const slugs = ["gamma-1", "gamma-2", "gamma-3", "gamma-4"];
      const watching = (async () => {
        let finals = 0;
        for await (const event of through.watch({ after: 0, signal: abort.signal })) {
          if (!slugs.includes(event.slug)) continue;
          seen.push(event.seq);
          if (seen.length === 4) proxy.cut(); // drop the stream mid-way
          if (final(event) && ++finals === slugs.length) return;
        }
      })();
      for (const slug of slugs) {
        const op = await client.provision({ slug, tier: "solo", driver: "fake" });
        await op.wait({ timeout: BOUND });
        proxy.cut(); // and again between operations
      }
      await watching;
      assert.ok(proxy.connections >= 2, `the stream was reopened (${proxy.connections} connections)`);
      increasing(seen);
      assert.deepEqual(seen, await stored(client, slugs, seen.at(-1)!));
    } finally {
      through.close();
      await proxy.close();
    }
  });

  test("a start whose answer was lost is asked again with its key: one operation", T, async () => {
    const proxy = new Proxy(daemon.socket, daemon.folder);
    await proxy.listen();
    const through = new HearthClient({ socket: proxy.socket, reconnect: 30 });
    try {
      await through.health(); // a daemon was reached
      proxy.loseAnswers = 1; // the next answer never arrives: the start did happen there
      const op = await through.provision({ slug: "delta", tier: "solo", driver: "fake" });
      await op.result({ timeout: BOUND });
      const ops = await client.operations({ slug: "delta" });
      assert.deepEqual(
        ops.map((o) => o.id),
        [op.id],
      );
    } finally {
      through.close();
      await proxy.close();
    }
  });

  test("watch and an operation's events survive a daemon restart: nothing lost, nothing repeated", T, async () => {
    const op = await client.provision({ slug: "epsilon", tier: "slowish", driver: "fake" });
    const seen: Event[] = [];
    const watched: Event[] = [];
    const following = (async () => {
      for await (const event of op.events()) seen.push(event);
    })();
    const abort = new AbortController();
    const watching = (async () => {
      for await (const event of client.watch({ slug: "epsilon", signal: abort.signal })) watched.push(event);
    })();
    await new Promise((resolve) => setTimeout(resolve, 300));
    await daemon.stop("SIGTERM"); // drains: the provision finishes while no stream is open
    await daemon.start();
    await following; // its final event arrived through the new daemon
    assert.equal(seen.at(-1)?.state, "succeeded", JSON.stringify(seen));
    const last = seen.at(-1)!.seq;
    const all = await stored(client, ["epsilon"], last);
    assert.deepEqual(
      seen.map((event) => event.seq),
      all,
    );

    const second = await client.upgrade("epsilon", { tier: "solo" });
    await second.wait({ timeout: BOUND });
    const until = Date.now() + BOUND * 1000;
    while (!watched.some((event) => event.operation === second.id && final(event)) && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    abort.abort();
    await watching;
    const seqs = watched.map((event) => event.seq);
    increasing(seqs);
    assert.deepEqual(seqs, await stored(client, ["epsilon"], seqs.at(-1)!));
  });

  test("a keyed start through a daemon restart: retried until it answers, one operation", T, async () => {
    await client.health();
    await daemon.stop("SIGTERM");
    const starting = client.provision({ slug: "zeta", tier: "solo", driver: "fake", key: "req-zeta" });
    await new Promise((resolve) => setTimeout(resolve, 1000)); // the socket is gone meanwhile
    await daemon.start();
    const op = await starting;
    await op.result({ timeout: BOUND });
    const replay = await client.provision({ slug: "zeta", tier: "solo", driver: "fake", key: "req-zeta" });
    assert.equal(replay.id, op.id);
    assert.deepEqual(
      (await client.operations({ slug: "zeta" })).map((o) => o.id),
      [op.id],
    );
  });

  test("the console example lists, provisions and streams a workspace's events as SSE", T, async () => {
    const server = createConsole(client);
    const socket = `${daemon.folder}/console.sock`;
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    const ask = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const request = http.request({ socketPath: socket, method, path, headers }, (response) => {
          let text = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => {
            text += chunk;
            if (path.startsWith("/events") && /event: state\ndata: [^\n]*"succeeded"/.test(text)) response.destroy();
          });
          response.on("close", () => resolve({ status: response.statusCode ?? 0, text }));
        });
        request.on("error", reject);
        request.end(body === undefined ? undefined : JSON.stringify(body));
      });
    try {
      const started = await ask("POST", "/workspaces", { slug: "theta", tier: "solo", driver: "fake" }, { "Idempotency-Key": "console-1" });
      assert.equal(started.status, 202, started.text);
      const op = JSON.parse(started.text) as { id: number; key: string };
      assert.equal(op.key, "console-1");
      const stream = await ask("GET", "/events?slug=theta");
      assert.match(stream.text, /^id: \d+\nevent: state\ndata: /);
      assert.match(stream.text, /"succeeded"/);
      const listed = JSON.parse((await ask("GET", "/workspaces")).text) as Array<{ slug: string; state: string }>;
      assert.ok(listed.some((w) => w.slug === "theta" && w.state === "ready"), JSON.stringify(listed));
      const missing = await ask("DELETE", "/operations/987654");
      assert.equal(missing.status, 404);
      assert.equal((JSON.parse(missing.text) as { error: { kind: string } }).error.kind, "not_found");
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test("stop and start: the workspace stopped, then ready again; a second stop does nothing", T, async () => {
    await (await client.provision({ slug: "theta", tier: "solo", driver: "fake" })).result({ timeout: BOUND });
    const stop = await client.stop("theta", { key: "req-theta-stop" });
    assert.equal(stop.verb, "stop");
    assert.equal((await stop.result({ timeout: BOUND }))?.last_status, "stopped");
    assert.equal((await client.workspace("theta")).state, "stopped");
    const again = await client.stop("theta");
    assert.equal(again.id, stop.id); // nothing to do: the operation that stopped it answers
    const start = await client.start("theta");
    assert.equal((await start.result({ timeout: BOUND }))?.last_status, "ready");
    assert.equal((await client.workspace("theta")).state, "ready");
  });

  test("touch: activity recorded now, the record answered", T, async () => {
    await (await client.provision({ slug: "iota", tier: "solo", driver: "fake" })).result({ timeout: BOUND });
    const before = await client.workspace("iota");
    const touched = await client.touch("iota");
    assert.equal(touched.slug, "iota");
    assert.ok(touched.last_activity && before.last_activity && touched.last_activity > before.last_activity);
    assert.equal(touched.autostop_at ?? null, null); // solo has no autostop
  });

  test("an operation's events end when a killed daemon's operation is settled on restart", T, async () => {
    const op = await client.provision({ slug: "lambda", tier: "glacial", driver: "fake" });
    const seen: Event[] = [];
    const following = (async () => {
      for await (const event of op.events()) seen.push(event);
    })();
    await new Promise((resolve) => setTimeout(resolve, 500));
    await daemon.stop("SIGKILL"); // no drain: the restart settles what it left
    await daemon.start();
    const started = Date.now();
    await following; // ends with a final event, or once the operation is found finished
    assert.ok(Date.now() - started < 20_000);
    const settled = await client.operation(op.id);
    assert.ok(settled.finished, settled.state);
    increasing(seen.map((event) => event.seq));
  });

  test("a wait past the reconnect bound is DaemonUnavailable", T, async () => {
    const short = new HearthClient({ socket: daemon.socket, reconnect: 1 });
    try {
      const op = await short.provision({ slug: "eta", tier: "glacial", driver: "fake" });
      await daemon.stop("SIGKILL");
      await assert.rejects(op.wait({ timeout: BOUND }), DaemonUnavailable);
    } finally {
      short.close();
      await daemon.start();
    }
  });
});

describe("hearth-client over TCP with a bearer token", () => {
  const daemon = new Daemon();
  const token = randomBytes(24).toString("hex");
  let url: string;

  before(async () => {
    const file = `${daemon.folder}/token`;
    writeFileSync(file, `${token}\n`, { mode: 0o600 });
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    daemon.args = ["--listen", `127.0.0.1:${port}`, "--token-file", file];
    await daemon.start();
  });

  after(async () => {
    await daemon.dispose();
  });

  test("the token opens the API; a wrong one is Unauthorized", T, async () => {
    const client = new HearthClient({ url, token });
    const wrong = new HearthClient({ url, token: "not-the-token-at-all" });
    try {
      assert.equal((await client.health()).status, "ok");
      await assert.rejects(wrong.health(), (error: unknown) => {
        assert.ok(error instanceof Unauthorized && error.status === 401, String(error));
        return true;
      });
      await assert.rejects(async () => {
        for await (const _ of wrong.watch()) break;
      }, Unauthorized);
      const op = await client.provision({ slug: "iota", tier: "solo", driver: "fake" });
      const kinds: string[] = [];
      for await (const event of op.events()) kinds.push(event.kind);
      assert.equal(kinds.at(0), "state");
      assert.ok(kinds.includes("progress"));
      assert.equal((await op.result({ timeout: BOUND }))?.workspace_slug, "iota");
    } finally {
      client.close();
      wrong.close();
    }
  });
});

describe("hearth-client with scoped tokens", () => {
  const daemon = new Daemon();
  const reader = randomBytes(24).toString("hex");
  const operator = randomBytes(24).toString("hex");
  let url: string;

  before(async () => {
    const file = `${daemon.folder}/tokens.toml`;
    const tokens =
      `[tokens.dashboard]\nsecret = "${reader}"\nscopes = ["read"]\n` +
      `[tokens.console]\nsecret = "${operator}"\nscopes = ["read", "operate"]\n`;
    writeFileSync(file, tokens, { mode: 0o600 });
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    daemon.args = ["--listen", `127.0.0.1:${port}`, "--tokens", file];
    await daemon.start();
  });

  after(async () => {
    await daemon.dispose();
  });

  test("a read token reads and is Forbidden a start; the operation names its actor", T, async () => {
    const dashboard = new HearthClient({ url, token: reader });
    const console_ = new HearthClient({ url, token: operator });
    try {
      assert.deepEqual(await dashboard.workspaces(), []);
      await assert.rejects(dashboard.provision({ slug: "kappa", tier: "solo", driver: "fake" }), (error: unknown) => {
        assert.ok(error instanceof Forbidden && error.status === 403, String(error));
        assert.equal(error.scope, "operate");
        return true;
      });
      const op = await console_.provision({ slug: "kappa", tier: "solo", driver: "fake", onBehalfOf: "zoë@example.com" });
      await op.result({ timeout: BOUND });
      const [listed] = await dashboard.operations({ actor: "token:console" });
      assert.equal(listed?.id, op.id);
      assert.equal(listed?.snapshot.actor, "token:console");
      assert.equal(listed?.snapshot.on_behalf_of, "zoë@example.com"); // UTF-8 across the header
      assert.deepEqual(await dashboard.operations({ actor: "token:dashboard" }), []);
      await assert.rejects(console_.forget("kappa"), Forbidden);
    } finally {
      dashboard.close();
      console_.close();
    }
  });
});
