// Runs the JavaScript of README.md's frontend guide as an app would: pytest writes each
// snippet to the file its first line names, under `projectDir`; this imports them and
// uses what they export against a running Blueline, reporting what each did.
//
// stdin: {"projectDir": "/tmp/…", "graphqlUrl": "http://127.0.0.1:P/graphql", "apiKey": "…",
//         "sandboxUrl": "http://127.0.0.1:P/_sandbox-provider"}
// stdout (last line): {"ok": true, "list": {…}, "invalid": {…}, "live": […], …}
import path from "node:path";
import { pathToFileURL } from "node:url";

import { gql } from "@apollo/client";
import WebSocket from "ws";

import { runScript } from "./browser.mjs";

// Browsers have a WebSocket; Node 20 has none without a flag.
globalThis.WebSocket ??= WebSocket;

const REQUEST_IDS = gql`
  query RequestIds($id: ID!) { imessageSetup(id: $id) { phoneLines { requestId } } }
`;

async function until(check, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

runScript(async (args, partial) => {
  const load = (file) => import(pathToFileURL(path.join(args.projectDir, file)).href);
  const { createBluelineClient } = await load("src/blueline.js");
  const { createBluelineHttpClient } = await load("src/blueline-http.js");
  const { listSetups, createSetup } = await load("src/setups.js");
  const { watchLines } = await load("src/lines.js");

  const subscribers = async () => {
    const metrics = await (await fetch(new URL("/metrics", args.graphqlUrl))).text();
    return Number(metrics.match(/^blueline_subscribers (\S+)$/m)?.[1]);
  };
  const baseline = await subscribers();
  const client = createBluelineClient({ url: args.graphqlUrl, apiKey: args.apiKey });
  const http = createBluelineHttpClient({ url: args.graphqlUrl, apiKey: args.apiKey });
  const input = (name) => ({ businessName: name, label: "Front desk" });

  async function place(setupId) {
    const { data } = await client.query({
      query: REQUEST_IDS,
      variables: { id: setupId },
      fetchPolicy: "network-only",
    });
    const requestId = data.imessageSetup.phoneLines[0].requestId;
    const placed = await fetch(`${args.sandboxUrl}/sandbox/line-requests/${requestId}/assign`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    if (placed.status !== 200) throw new Error(`assign answered ${placed.status}`);
  }

  /** watchLines until `done(updates)`; what it saw and called back. */
  async function watch(on, options, act, done) {
    const seen = { updates: [], refetched: 0, stopped: null };
    const watcher = watchLines(on, {
      onUpdate: (update) => seen.updates.push(update),
      onRefetch: () => (seen.refetched += 1),
      onStop: (error) => (seen.stopped = String(error?.message ?? error)),
      retryMs: 50,
      ...options,
    });
    try {
      await act(seen);
      await until(() => done(seen), "the watcher");
    } finally {
      watcher.stop();
    }
    await until(async () => (await subscribers()) === baseline, "the watcher to leave");
    return { ...seen, lastEventId: watcher.lastEventId() };
  }
  const live = () => until(async () => (await subscribers()) > baseline, "a live subscription");
  const assignedFor = (id) => (seen) =>
    seen.updates.some((u) => u.setup.id === id && u.phoneLine.status === "ASSIGNED");

  partial.list = await listSetups(client);
  partial.invalid = await createSetup(client, input(" "));

  // Over the WebSocket: a new setup's line goes live.
  let first;
  partial.live = await watch(
    client,
    {},
    async () => {
      await live();
      first = (await createSetup(client, input("Readme Dental"))).setup;
      await place(first.id);
    },
    (seen) => assignedFor(first.id)(seen),
  );
  partial.first = first;

  // Offline meanwhile: another setup; resuming with `after` replays it first.
  const second = (await createSetup(client, input("Readme Offline"))).setup;
  partial.second = second;
  partial.resumed = await watch(
    client,
    { after: partial.live.lastEventId },
    async () => {},
    (seen) => seen.updates.some((u) => u.setup.id === second.id),
  );

  // An `after` the log does not have: refetch, then follow from now.
  let third;
  partial.tooOld = await watch(
    client,
    { after: "evt_0000000009999" },
    async (seen) => {
      await until(() => seen.refetched > 0, "the refetch");
      await live();
      third = (await createSetup(client, input("Readme Fresh"))).setup;
    },
    (seen) => seen.updates.some((u) => u.setup.id === third.id),
  );

  // Over multipart HTTP, the same watcher.
  let fourth;
  partial.overHttp = await watch(
    http,
    {},
    async () => {
      await live();
      fourth = (await createSetup(client, input("Readme Multipart"))).setup;
      await place(fourth.id);
    },
    (seen) => assignedFor(fourth.id)(seen),
  );
  partial.fourth = fourth;

  // A wrong key stops the watcher on either transport.
  for (const [name, make] of [
    ["refusedWs", createBluelineClient],
    ["refusedHttp", createBluelineHttpClient],
  ]) {
    const wrong = make({ url: args.graphqlUrl, apiKey: "bl_live_not-a-key" });
    partial[name] = await watch(wrong, {}, async () => {}, (seen) => seen.stopped !== null);
    wrong.stop();
  }

  client.stop();
  http.stop();
  return { ...partial, baseline };
});
