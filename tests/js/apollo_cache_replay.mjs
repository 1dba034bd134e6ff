// What Apollo Client's normalised cache shows while a subscription replays with
// `after`: a client that saw a setup go live disconnects, the setup changes meanwhile
// (a second line is requested, it is suspended and reactivated), and the client
// resumes. After each replayed update the cached status is recorded; it must be the
// status as of that update, never an older one, and end at the current one.
//
// stdin: {"graphqlUrl": "…/graphql", "apiKey": "…", "sandboxUrl": "…", "metricsToken": "…"}
// stdout (last line): {"ok": true, "live": [...], "resumed": {...}, "current": "ACTIVE"}
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { OperationTypeNode } from "graphql";
import { createClient } from "graphql-ws";
import WebSocket from "ws";

import { runScript } from "./browser.mjs";

// GraphQLWsLink recognises closed sockets by the global WebSocket, as in a browser.
globalThis.WebSocket ??= WebSocket;

const SETUP_UPDATES = gql`
  subscription SetupUpdates($after: String) {
    imessageSetupUpdates(after: $after) {
      eventId
      change
      setup { id status phoneLineCount }
    }
  }
`;
const LINE_UPDATES = gql`
  subscription LineUpdates($after: String) {
    phoneLineUpdates(after: $after) {
      eventId
      setup { id status phoneLineCount }
      phoneLine { id status }
    }
  }
`;
const CREATE = gql`
  mutation Create {
    createImessageSetup(input: { businessName: "Replay Dental", label: "Front desk" }) {
      setup { id status phoneLines { requestId } }
      userErrors { code }
    }
  }
`;
const change = (name) => gql`
  mutation Change($id: ID!) {
    ${name}(input: { setupId: $id }) { userErrors { code } }
  }
`;
const REQUEST_LINE = gql`
  mutation RequestLine($id: ID!) {
    requestImessagePhoneLine(input: { setupId: $id }) { phoneLine { id } userErrors { code } }
  }
`;
const DETAIL = gql`
  query Detail($id: ID!) { imessageSetup(id: $id) { id status phoneLineCount } }
`;
const STATUS = gql`
  fragment ReplayStatus on IMessageSetup { status }
`;

function newClient({ graphqlUrl, apiKey }) {
  const headers = { Authorization: `Bearer ${apiKey}` };
  const socket = createClient({
    url: graphqlUrl.replace(/^http/, "ws"),
    webSocketImpl: WebSocket,
    connectionParams: headers,
    retryAttempts: 0,
  });
  const client = new ApolloClient({
    link: ApolloLink.split(
      ({ operationType }) => operationType === OperationTypeNode.SUBSCRIPTION,
      new GraphQLWsLink(socket),
      new HttpLink({ uri: graphqlUrl, headers }),
    ),
    cache: new InMemoryCache(),
  });
  return { client, socket };
}

function cachedStatus(client, id) {
  return client.cache.readFragment({
    id: client.cache.identify({ __typename: "IMessageSetup", id }),
    fragment: STATUS,
  })?.status;
}

async function subscribers({ graphqlUrl, metricsToken }) {
  const response = await fetch(new URL("/metrics", graphqlUrl), {
    headers: { Authorization: `Bearer ${metricsToken}` },
  });
  const match = (await response.text()).match(/^blueline_subscribers (\S+)$/m);
  return Number(match?.[1]);
}

async function until(check, what) {
  const deadline = Date.now() + 20000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Subscribe to `query` and record, after every update, the update and the cached
 * status of setup `id()`, until `count` updates arrived. Resolves with the records and
 * an `unsubscribe`.
 */
function record(client, query, variables, count, id) {
  const seen = [];
  let subscription;
  const done = new Promise((resolve, reject) => {
    subscription = client.subscribe({ query, variables }).subscribe({
      next(result) {
        if (result.error) return reject(result.error);
        const update = Object.values(result.data)[0];
        seen.push({ update, cached: cachedStatus(client, id() ?? update.setup.id) });
        if (seen.length === count) resolve(seen);
      },
      error: reject,
    });
  });
  return { done, unsubscribe: () => subscription.unsubscribe() };
}

async function mutate(client, mutation, variables) {
  const { data } = await client.mutate({ mutation, variables });
  const payload = Object.values(data)[0];
  if (payload.userErrors.length) throw new Error(JSON.stringify(payload.userErrors));
  return payload;
}

runScript(async (args, partial) => {
  const { client, socket } = newClient(args);
  try {
    const baseline = await subscribers(args);
    let setupId;
    // Online: the client watches the setup being created and going live.
    const live = record(client, SETUP_UPDATES, {}, 3, () => setupId);
    await until(async () => (await subscribers(args)) > baseline, "the subscription");
    const { setup } = await mutate(client, CREATE);
    setupId = setup.id;
    const placed = await fetch(
      `${args.sandboxUrl}/sandbox/line-requests/${setup.phoneLines[0].requestId}/assign`,
      { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" },
    );
    if (placed.status !== 200) throw new Error(`assign answered ${placed.status}`);
    partial.live = await live.done;
    live.unsubscribe();
    const lastSeen = partial.live.at(-1).update.eventId;

    // Offline: a second line (pending) while the setup is live, a suspension, a
    // reactivation.
    await mutate(client, REQUEST_LINE, { id: setupId });
    await mutate(client, change("suspendImessageSetup"), { id: setupId });
    await mutate(client, change("reactivateImessageSetup"), { id: setupId });

    partial.resumed = {};
    for (const [name, query, count] of [
      ["imessageSetupUpdates", SETUP_UPDATES, 3],
      ["phoneLineUpdates", LINE_UPDATES, 1],
    ]) {
      const resumed = record(client, query, { after: lastSeen }, count, () => setupId);
      partial.resumed[name] = await resumed.done;
      resumed.unsubscribe();
    }
    partial.cachedAtEnd = cachedStatus(client, setupId);
    const { data } = await client.query({
      query: DETAIL,
      variables: { id: setupId },
      fetchPolicy: "network-only",
    });
    return { ...partial, current: data.imessageSetup.status };
  } finally {
    client.stop();
    await socket.dispose();
  }
});
