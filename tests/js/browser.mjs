// Shared by the scripts pytest runs through tests/support/node.py: how to start the
// system Chromium, keep a page off the internet, and hand one JSON result back.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// Everything else resolves to nothing, so even a request the routes below never see
// (one the browser makes for itself) cannot leave the machine.
const OFFLINE_RESOLVER =
  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]";

const LOCAL_HOSTS = new Set(["127.0.0.1", "localhost", "[::1]"]);

export function isLocal(url) {
  const parsed = url instanceof URL ? url : new URL(url);
  if (parsed.protocol === "data:" || parsed.protocol === "blob:") return true;
  return LOCAL_HOSTS.has(parsed.hostname);
}

/**
 * Start Chromium with a fresh profile and open one page.
 *
 * With `blockExternal`, every HTTP(S) request and WebSocket to a host other than
 * 127.0.0.1/localhost is aborted and its URL kept in `blocked`. Console errors and
 * uncaught page errors are kept in `consoleErrors`. Call `close()` when done.
 */
export async function launch({ blockExternal = true, viewport = { width: 1280, height: 900 } } = {}) {
  const userDataDir = await mkdtemp(path.join(tmpdir(), "blueline-chromium-"));
  const args = blockExternal ? [...CHROMIUM_FLAGS, OFFLINE_RESOLVER] : [...CHROMIUM_FLAGS];
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args,
      viewport,
    });
  } catch (error) {
    await rm(userDataDir, { recursive: true, force: true });
    throw error;
  }

  const blocked = [];
  const consoleErrors = [];
  if (blockExternal) {
    await context.route(
      (url) => !isLocal(url),
      (route) => {
        blocked.push(route.request().url());
        return route.abort("blockedbyclient");
      },
    );
    await context.routeWebSocket(
      (url) => !isLocal(url),
      (ws) => {
        blocked.push(ws.url());
        return ws.close();
      },
    );
  }

  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    const { url, lineNumber } = message.location();
    consoleErrors.push(url ? `${message.text()} (${url}:${lineNumber})` : message.text());
  });
  page.on("pageerror", (error) => consoleErrors.push(`uncaught: ${error.message}`));

  async function close() {
    try {
      await context.close();
    } finally {
      await rm(userDataDir, { recursive: true, force: true });
    }
  }

  return { context, page, blocked, consoleErrors, close };
}

/** The arguments pytest sent: one JSON object on stdin. */
export async function readArgs() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString("utf8").trim();
  return text ? JSON.parse(text) : {};
}

/** Print the one JSON line pytest reads, and exit non-zero unless it says ok. */
export function finish(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = result.ok ? 0 : 1;
}

/**
 * Run `main(args)` and report what it returns (merged into `{ok: true}`), or the error
 * with whatever `main` put into `partial` before failing.
 */
export async function runScript(main) {
  const partial = {};
  try {
    const args = await readArgs();
    finish({ ok: true, ...(await main(args, partial)) });
  } catch (error) {
    finish({ ok: false, error: String(error?.stack ?? error), ...partial });
  }
}
