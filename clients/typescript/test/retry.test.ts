/**
 * What a draining daemon answers (503 `unavailable` with `Retry-After`) against a stand-in server
 * on a Unix socket: a start is asked again after the pause it names, with the same key, and
 * given up within `reconnect`.
 */
import assert from "node:assert/strict";
import http from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { HearthClient, Unavailable } from "../src/index.js";

const OPERATION = {
  id: 7,
  slug: "kappa",
  generation: 1,
  verb: "provision",
  state: "queued",
  created_at: "2026-01-01T00:00:00Z",
  key: "k",
  log: [],
  reuse: false,
  outcome: "running",
  ended_at: null,
};

describe("a daemon that drains", () => {
  const folder = mkdtempSync(join(tmpdir(), "hc-"));
  const socket = join(folder, "stand-in.sock");
  /** How many 503s to answer before the operation; the keys and times of the requests. */
  let refusals = 0;
  const seen: Array<{ key: string | undefined; at: number }> = [];
  const server = http.createServer((request, response) => {
    request.resume();
    const key = request.headers["idempotency-key"];
    seen.push({ key: typeof key === "string" ? key : undefined, at: Date.now() });
    if (refusals > 0) {
      refusals -= 1;
      response.writeHead(503, { "Content-Type": "application/json", "Retry-After": "1" });
      response.end(JSON.stringify({ error: { kind: "unavailable", message: "the daemon is draining" } }));
      return;
    }
    response.writeHead(202, { "Content-Type": "application/json", Location: "/v1/operations/7" });
    response.end(JSON.stringify(OPERATION));
  });

  before(() => new Promise<void>((resolve) => server.listen(socket, resolve)));
  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(folder, { recursive: true, force: true });
  });

  test("a start is asked again after Retry-After, under the same key", { timeout: 30_000 }, async () => {
    const client = new HearthClient({ socket });
    seen.length = 0;
    refusals = 2;
    const op = await client.provision({ slug: "kappa", tier: "solo", driver: "fake" });
    assert.equal(op.id, 7);
    assert.equal(seen.length, 3);
    assert.ok(seen[0]!.key?.startsWith("ts-"));
    assert.ok(seen.every((request) => request.key === seen[0]!.key));
    assert.ok(seen[1]!.at - seen[0]!.at >= 900, "the pause Retry-After names");
    seen.length = 0;
    refusals = 1;
    await client.provision({ slug: "kappa", tier: "solo", driver: "fake", key: null }); // nothing started: safe
    assert.deepEqual(
      seen.map((request) => request.key),
      [undefined, undefined],
    );
    client.close();
  });

  test("past reconnect it is Unavailable, with the pause the daemon asked for", { timeout: 30_000 }, async () => {
    const client = new HearthClient({ socket, reconnect: 1.5 });
    refusals = 100;
    const started = Date.now();
    await assert.rejects(client.provision({ slug: "kappa", tier: "solo", driver: "fake" }), (error: unknown) => {
      assert.ok(error instanceof Unavailable, String(error));
      assert.equal(error.status, 503);
      assert.equal(error.retryAfter, 1);
      return true;
    });
    assert.ok(Date.now() - started < 5000);
    refusals = 0;
    client.close();
  });
});
