// A frontend on another origin, in Chromium: bundles apollo_page.mjs into `pageDir`
// (which pytest serves from two origins of its own), then on the app's origin lists
// setups, and for each transport (WebSocket, then multipart HTTP) subscribes, creates
// a setup, has the sandbox place its number and waits for the line to go live. On the
// stranger's origin it tries the same and reports how each attempt failed.
//
// stdin: {"pageDir": "/tmp/…", "appUrl": "http://127.0.0.1:A", "strangerUrl": "http://127.0.0.1:S",
//         "graphqlUrl": "http://127.0.0.1:P/graphql", "apiKey": "…", "sandboxUrl": "http://…",
//         "metricsToken": "…", "timeoutMs": 30000}
// stdout (last line): {"ok": true, "allowed": {…}, "stranger": {…}, "consoleErrors": […]}
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

import { launch, runScript } from "./browser.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Blueline test app</title>
<link rel="icon" href="data:,"></head>
<body><script type="module" src="/app.js"></script></body></html>
`;

async function buildPage(dir) {
  await build({
    entryPoints: [path.join(HERE, "apollo_page.mjs")],
    absWorkingDir: HERE,
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    outfile: path.join(dir, "app.js"),
    define: { "process.env.NODE_ENV": '"production"' },
    logLevel: "warning",
  });
  await writeFile(path.join(dir, "index.html"), PAGE);
}

function metricsUrl(graphqlUrl) {
  return new URL("/metrics", graphqlUrl).href;
}

/** The server's count of registered subscription streams (its metrics). */
async function subscribers(args) {
  const response = await fetch(metricsUrl(args.graphqlUrl), {
    headers: { Authorization: `Bearer ${args.metricsToken}` },
  });
  const text = await response.text();
  const match = text.match(/^blueline_subscribers (\S+)$/m);
  if (!match) throw new Error(`no blueline_subscribers in /metrics (${response.status})`);
  return Number(match[1]);
}

async function until(check, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function place(args, requestId) {
  const response = await fetch(`${args.sandboxUrl}/sandbox/line-requests/${requestId}/assign`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: "{}",
  });
  if (response.status !== 200) throw new Error(`assign answered ${response.status}`);
  return (await response.json()).phone_number;
}

async function open(page, url, args) {
  const response = await page.goto(`${url}/index.html`, { waitUntil: "load" });
  if (!response || response.status() !== 200) throw new Error(`${url} answered ${response?.status()}`);
  await page.waitForFunction(() => Boolean(window.blueline));
  await page.evaluate((config) => window.blueline.start(config), {
    url: args.graphqlUrl,
    apiKey: args.apiKey,
    // A refused socket is reported at once instead of after graphql-ws's retries.
    retryAttempts: 0,
  });
}

runScript(async (args, partial) => {
  const timeout = args.timeoutMs ?? 30000;
  await buildPage(args.pageDir);
  const baseline = await subscribers(args);

  const browser = await launch({ blockExternal: true });
  partial.consoleErrors = browser.consoleErrors;
  partial.blocked = browser.blocked;
  const allowed = (partial.allowed = {});
  const stranger = (partial.stranger = { consoleErrors: [] });
  try {
    const { page } = browser;
    page.setDefaultTimeout(timeout);
    await open(page, args.appUrl, args);
    allowed.before = await page.evaluate(() => window.blueline.listSetups());

    for (const mode of ["ws", "http"]) {
      await until(async () => (await subscribers(args)) === baseline, "no subscribers", timeout);
      await page.evaluate((m) => window.blueline.subscribe(m), mode);
      await until(async () => (await subscribers(args)) > baseline, `a ${mode} subscriber`, timeout);
      const created = await page.evaluate((name) => window.blueline.createSetup(name), `Over ${mode}`);
      const number = await place(args, created.requestId);
      await page.waitForFunction(
        ([m, id]) => {
          const { events, errors } = window.blueline.updates[m];
          return errors.length > 0 || events.some((e) => e.setup.id === id && e.phoneLine.status === "ASSIGNED");
        },
        [mode, created.id],
      );
      allowed[mode] = {
        created,
        number,
        ...(await page.evaluate(
          ([m, id]) => ({ ...window.blueline.updates[m], cached: window.blueline.cachedStatus(m, id) }),
          [mode, created.id],
        )),
      };
      await page.evaluate((m) => window.blueline.unsubscribe(m), mode);
    }
    allowed.after = await page.evaluate(() => window.blueline.listSetups());
    // The server notices a stream the page closed when it next writes to it: wait, so
    // the stranger's count below starts from the baseline.
    await until(async () => (await subscribers(args)) === baseline, "no subscribers", timeout);

    const other = await browser.context.newPage();
    other.setDefaultTimeout(timeout);
    other.on("console", (message) => {
      if (message.type() === "error") stranger.consoleErrors.push(message.text());
    });
    await open(other, args.strangerUrl, args);
    stranger.list = await other.evaluate(() => window.blueline.listSetups());
    for (const mode of ["ws", "http"]) {
      await other.evaluate((m) => window.blueline.subscribe(m), mode);
      await other.waitForFunction((m) => window.blueline.updates[m].errors.length > 0, mode);
      stranger[mode] = await other.evaluate((m) => window.blueline.updates[m], mode);
    }
    // Console messages arrive on their own schedule: give the expected ones a moment.
    await until(
      () =>
        stranger.consoleErrors.filter((e) => e.includes("blocked by CORS policy")).length >= 2 &&
        stranger.consoleErrors.some((e) => e.includes("WebSocket handshake")),
      "the browser's reports of the refusals",
      5000,
    ).catch(() => {});
    // A stream the allowed page ended may still be counted until the server next
    // writes to it; a stream the stranger held would stay.
    await until(async () => (await subscribers(args)) === baseline, "no subscribers", 5000).catch(
      () => {},
    );
    stranger.subscribers = await subscribers(args);
    return { ...partial, baseline };
  } finally {
    await browser.close();
  }
});
