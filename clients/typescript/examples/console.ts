/**
 * A tiny console backend on hearth-client: list workspaces, start a provision (the browser's
 * `Idempotency-Key` passed on), cancel an operation, and stream events to a browser as
 * Server-Sent Events that an `EventSource` resumes with `Last-Event-ID`.
 *
 *   HEARTH_URL=unix:///path/to/hearth.sock node dist/examples/console.js 8000
 */
import http from "node:http";
import { HearthClient, HearthError } from "../src/index.js";

/** The HTTP status of each error kind the console passes on (else 500). */
const STATUS: Record<string, number> = { invalid_input: 400, not_found: 404, busy: 409, conflict: 409 };

export function createConsole(hearth: HearthClient): http.Server {
  return http.createServer((request, response) => {
    handle(hearth, request, response).catch((error: unknown) => {
      const known = error instanceof HearthError;
      const status = known ? (STATUS[error.kind] ?? error.status ?? 500) : 500;
      const body = known ? error.toJSON() : { kind: "error", message: String(error) };
      if (!response.headersSent) response.writeHead(status, { "Content-Type": "application/json" });
      response.end(JSON.stringify({ error: body }));
    });
  });
}

async function handle(hearth: HearthClient, request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
  const url = new URL(request.url ?? "/", "http://console");
  const send = (status: number, body: unknown): void => {
    response.writeHead(status, { "Content-Type": "application/json" });
    response.end(JSON.stringify(body));
  };
  if (request.method === "GET" && url.pathname === "/workspaces") {
    return send(200, await hearth.workspaces());
  }
  if (request.method === "POST" && url.pathname === "/workspaces") {
    let text = "";
    for await (const chunk of request) text += chunk;
    const { slug, tier, driver } = JSON.parse(text) as { slug: string; tier: string; driver: string };
    const key = request.headers["idempotency-key"];
    const op = await hearth.provision({ slug, tier, driver, ...(typeof key === "string" ? { key } : {}) });
    return send(202, op);
  }
  const cancel = /^\/operations\/(\d+)$/.exec(url.pathname);
  if (request.method === "DELETE" && cancel) {
    return send(202, await (await hearth.operation(Number(cancel[1]))).cancel("cancelled from the console"));
  }
  if (request.method === "GET" && url.pathname === "/events") {
    const after = Number(request.headers["last-event-id"] ?? url.searchParams.get("after") ?? 0);
    const abort = new AbortController();
    response.once("close", () => abort.abort()); // the browser left: stop following
    const slug = url.searchParams.get("slug") ?? undefined;
    response.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    try {
      for await (const event of hearth.watch({ after, slug, signal: abort.signal })) {
        response.write(`id: ${event.seq}\nevent: ${event.kind}\ndata: ${JSON.stringify(event)}\n\n`);
      }
    } catch (error) {
      const body = error instanceof HearthError ? error.toJSON() : { kind: "error", message: String(error) };
      response.write(`event: error\ndata: ${JSON.stringify(body)}\n\n`); // the browser reconnects
    }
    return void response.end();
  }
  send(404, { error: { kind: "not_found", message: `no route ${request.method} ${url.pathname}` } });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const hearth = new HearthClient(); // HEARTH_URL (and HEARTH_TOKEN), else the home's socket
  createConsole(hearth).listen(Number(process.argv[2] ?? 8000), () => console.log("console listening"));
}
