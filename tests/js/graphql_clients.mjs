// How the JS clients frontends use see Blueline's authentication: Apollo Client's
// HttpLink with a missing or bad key, graphql-ws with the key in each place clients put
// it in connection_init, and refused sockets of both WebSocket protocols.
//
// stdin: {"graphqlUrl": "http://127.0.0.1:P/graphql", "apiKey": "…"}
// stdout (last line): {"ok": true, "http": {…}, "ws": {…}, "refused": {…}, "legacy": {…}}
import { ApolloClient, HttpLink, InMemoryCache, ServerError, gql } from "@apollo/client";
import { createClient } from "graphql-ws";
import WebSocket from "ws";

import { runScript } from "./browser.mjs";

const COUNT = "query Count { imessageSetups { totalCount } }";

function wsUrl(graphqlUrl) {
  return graphqlUrl.replace(/^http/, "ws");
}

async function apolloWith(graphqlUrl, headers) {
  const client = new ApolloClient({
    link: new HttpLink({ uri: graphqlUrl, headers }),
    cache: new InMemoryCache(),
  });
  try {
    const result = await client.query({ query: gql(COUNT), fetchPolicy: "network-only" });
    return { data: result.data };
  } catch (error) {
    return {
      isServerError: ServerError.is(error),
      name: error.name,
      statusCode: error.statusCode,
      body: error.bodyText === undefined ? undefined : JSON.parse(error.bodyText),
    };
  } finally {
    client.stop();
  }
}

/** One query over graphql-ws with `connectionParams`; the data, or how the socket closed. */
async function overGraphqlWs(graphqlUrl, connectionParams) {
  let closed;
  const client = createClient({
    url: wsUrl(graphqlUrl),
    webSocketImpl: WebSocket,
    connectionParams,
    retryAttempts: 0,
    on: { closed: (event) => (closed ??= { code: event.code, reason: event.reason }) },
  });
  try {
    for await (const result of client.iterate({ query: COUNT })) {
      return { result };
    }
    return { result: null };
  } catch (error) {
    return { closed: closed ?? { error: String(error?.message ?? error) } };
  } finally {
    await client.dispose();
  }
}

/** The legacy protocol with a wrong key: how the server closes the socket. */
function legacyRefusal(graphqlUrl) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(wsUrl(graphqlUrl), "graphql-ws");
    socket.on("open", () => {
      socket.send(
        JSON.stringify({ type: "connection_init", payload: { Authorization: "Bearer bl_live_nope" } }),
      );
    });
    socket.on("close", (code, reason) =>
      resolve({ protocol: socket.protocol, code, reason: reason.toString() }),
    );
    socket.on("error", reject);
  });
}

runScript(async ({ graphqlUrl, apiKey }) => {
  const bearer = `Bearer ${apiKey}`;
  return {
    http: {
      missing: await apolloWith(graphqlUrl, {}),
      bad: await apolloWith(graphqlUrl, { Authorization: "Bearer bl_live_nope" }),
      good: await apolloWith(graphqlUrl, { Authorization: bearer }),
    },
    ws: {
      Authorization: await overGraphqlWs(graphqlUrl, { Authorization: bearer }),
      authorization: await overGraphqlWs(graphqlUrl, { authorization: bearer }),
      headers: await overGraphqlWs(graphqlUrl, { headers: { Authorization: bearer } }),
    },
    refused: {
      bad: await overGraphqlWs(graphqlUrl, { Authorization: "Bearer bl_live_nope" }),
      missing: await overGraphqlWs(graphqlUrl, {}),
      // A key without the scheme, as people sometimes paste it.
      bare: await overGraphqlWs(graphqlUrl, { Authorization: apiKey }),
    },
    legacy: await legacyRefusal(graphqlUrl),
  };
});
