/**
 * A real `hearth serve` for the tests: its own home and project in a short temporary folder (a
 * Unix socket's path has at most 107 bytes), the fake driver, started and stopped by pid (never
 * by name). `HEARTH_BIN` names the `hearth` executable (default: `hearth` on PATH).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** The bound of any one wait in the tests (seconds). */
export const BOUND = 30;

/** Tiers for the tests: `slowish` takes 2 s, `glacial` a minute (to be cancelled or found busy). */
export const SETTINGS = `
[tiers.slowish.driver_flags.fake]
delay = 2
[tiers.glacial.driver_flags.fake]
delay = 60
[timeouts]
cancel_grace = 5
drain_grace = 10
`;

/** The daemons this process started and that still run: stopped when it exits, however it ends. */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGTERM");
});
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(signal, () => {
    for (const child of running) child.kill("SIGTERM");
    process.exit(128 + (signal === "SIGINT" ? 2 : signal === "SIGTERM" ? 15 : 1));
  });
}

export class Daemon {
  readonly folder: string;
  readonly home: string;
  readonly project: string;
  readonly socket: string;
  process: ChildProcess | undefined;
  stderr = "";
  /** More arguments for `hearth serve` (e.g. `--listen`). */
  args: string[] = [];

  constructor(settings = SETTINGS) {
    this.folder = mkdtempSync(join(tmpdir(), "hs-"));
    this.home = join(this.folder, "home");
    this.project = join(this.folder, "project");
    mkdirSync(join(this.project, ".hearth"), { recursive: true });
    mkdirSync(this.home);
    writeFileSync(join(this.project, ".hearth", "hearth.toml"), settings);
    this.socket = join(this.home, "hearth.sock");
  }

  /** Start `hearth serve` on the home and wait until it answers `/v1/health`. */
  async start(): Promise<void> {
    const bin = process.env.HEARTH_BIN || "hearth";
    const env = { ...process.env };
    delete env.HEARTH_HOME;
    delete env.HEARTH_URL;
    if (process.env.HEARTH_BIN) env.PATH = `${dirname(process.env.HEARTH_BIN)}${delimiter}${env.PATH ?? ""}`; // its adapters
    this.stderr = "";
    const child = spawn(bin, ["serve", "--home", this.home, "--project", this.project, ...this.args], {
      env,
      stdio: ["ignore", "ignore", "pipe"], // in the test's process group: a runner that is stopped stops it
    });
    running.add(child);
    child.once("exit", () => running.delete(child));
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (text: string) => {
      this.stderr += text;
    });
    this.process = child;
    const deadline = Date.now() + BOUND * 1000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`hearth serve ended (${child.exitCode}): ${this.stderr}`);
      if (existsSync(this.socket) && (await answers(this.socket))) return;
      await sleep(50);
    }
    throw new Error(`hearth serve did not answer within ${BOUND} s: ${this.stderr}`);
  }

  /** SIGTERM to the daemon's pid, and wait for it to exit (SIGKILL to it past the bound). */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
    const child = this.process;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), BOUND * 1000);
    const code = await exited;
    clearTimeout(timer);
    return code;
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.folder, { recursive: true, force: true });
  }
}

/** Whether an HTTP GET of /v1/health answers on the socket. */
function answers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const connection = net.connect(socket);
    connection.setTimeout(2000);
    let data = "";
    connection.on("connect", () => connection.write("GET /v1/health HTTP/1.1\r\nHost: hearth\r\nConnection: close\r\n\r\n"));
    connection.on("data", (chunk) => (data += chunk.toString()));
    connection.on("end", () => resolve(data.startsWith("HTTP/1.1 200")));
    connection.on("error", () => resolve(false));
    connection.on("timeout", () => {
      connection.destroy();
      resolve(false);
    });
  });
}

/**
 * A Unix-socket proxy in front of the daemon's socket, which the test can cut: every open
 * connection dropped at once (a stream dropped mid-way), or the next answer lost (the request
 * reaches the daemon, its answer never reaches the client).
 */
let proxies = 0;

export class Proxy {
  readonly socket: string;
  private readonly server: net.Server;
  private readonly open = new Set<net.Socket>();
  /** Requests whose answer is to be swallowed (the connection dropped when it starts). */
  loseAnswers = 0;
  /** Connections made through it. */
  connections = 0;

  constructor(target: string, folder: string) {
    this.socket = join(folder, `proxy-${++proxies}.sock`);
    this.server = net.createServer((client) => {
      this.connections += 1;
      const upstream = net.connect(target);
      this.open.add(client);
      this.open.add(upstream);
      const drop = (): void => {
        client.destroy();
        upstream.destroy();
        this.open.delete(client);
        this.open.delete(upstream);
      };
      client.on("data", (chunk) => upstream.write(chunk));
      upstream.on("data", (chunk) => {
        if (this.loseAnswers > 0) {
          this.loseAnswers -= 1;
          drop();
          return;
        }
        client.write(chunk);
      });
      client.on("close", drop);
      upstream.on("close", drop);
      client.on("error", drop);
      upstream.on("error", drop);
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.socket, resolve));
  }

  /** Drop every connection open now. */
  cut(): void {
    for (const socket of this.open) socket.destroy();
    this.open.clear();
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** A TCP port free on the loopback now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
