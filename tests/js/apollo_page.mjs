// The page of a small frontend, bundled by apollo_browser.mjs and served from an origin
// of its own: Apollo Client 4 with an HttpLink and a GraphQLWsLink split on the
// operation type (one client), and an HttpLink alone (the other client, whose
// subscriptions go over multipart HTTP). The driver calls window.blueline.
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { OperationTypeNode } from "graphql";
import { createClient } from "graphql-ws";

const SETUPS = gql`
  query Setups {
    imessageSetups(first: 20) {
      totalCount
      edges { node { id businessName status } }
    }
  }
`;

const CREATE = gql`
  mutation Create($name: String!) {
    createImessageSetup(input: { businessName: $name, label: "Front desk" }) {
      setup { id status phoneLines { id status requestId } }
      userErrors { code message }
    }
  }
`;

const LINES = gql`
  subscription Lines {
    phoneLineUpdates {
      eventId
      setup { id status }
      phoneLine { id status phoneNumber }
    }
  }
`;

const STATUS = gql`
  fragment SetupStatus on IMessageSetup { status }
`;

function describe(error) {
  return {
    name: error?.name ?? typeof error,
    message: String(error?.message ?? error),
    statusCode: error?.statusCode,
  };
}

const clients = {};
const subscriptions = {};
const updates = {};

window.blueline = {
  updates,

  start({ url, apiKey, retryAttempts }) {
    const headers = { Authorization: `Bearer ${apiKey}` };
    const http = new HttpLink({ uri: url, headers });
    const ws = new GraphQLWsLink(
      createClient({
        url: url.replace(/^http/, "ws"),
        connectionParams: headers,
        retryAttempts,
      }),
    );
    clients.ws = new ApolloClient({
      link: ApolloLink.split(
        ({ operationType }) => operationType === OperationTypeNode.SUBSCRIPTION,
        ws,
        http,
      ),
      cache: new InMemoryCache(),
    });
    clients.http = new ApolloClient({ link: http, cache: new InMemoryCache() });
  },

  async listSetups() {
    try {
      const { data } = await clients.ws.query({ query: SETUPS, fetchPolicy: "network-only" });
      return { ok: true, data };
    } catch (error) {
      return { ok: false, error: describe(error) };
    }
  },

  async createSetup(name) {
    const { data } = await clients.ws.mutate({ mutation: CREATE, variables: { name } });
    const { setup, userErrors } = data.createImessageSetup;
    if (userErrors.length) throw new Error(JSON.stringify(userErrors));
    return { id: setup.id, status: setup.status, requestId: setup.phoneLines[0].requestId };
  },

  subscribe(mode) {
    const record = (updates[mode] = { events: [], errors: [] });
    subscriptions[mode] = clients[mode].subscribe({ query: LINES }).subscribe({
      next(result) {
        if (result.error) record.errors.push(describe(result.error));
        else record.events.push(result.data.phoneLineUpdates);
      },
      error(error) {
        record.errors.push(describe(error));
      },
    });
  },

  unsubscribe(mode) {
    subscriptions[mode]?.unsubscribe();
  },

  cachedStatus(mode, id) {
    const cache = clients[mode].cache;
    const found = cache.readFragment({
      id: cache.identify({ __typename: "IMessageSetup", id }),
      fragment: STATUS,
    });
    return found?.status ?? null;
  },
};
