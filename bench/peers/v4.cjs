// PostGraphile v4 as a library behind a bare node:http server, with the options its docs
// give for production (no GraphiQL, no query log, no schema watching), so the figures
// are the library's and not a development setup's.
"use strict";

const http = require("node:http");
const { postgraphile } = require("postgraphile4");

const env = process.env;
// A pool config rather than a pg.Pool: PostGraphile's own copy of pg builds the pool.
const poolConfig = { connectionString: env.PEER_DSN, max: Number(env.PEER_POOL_MAX || 10) };

const middleware = postgraphile(poolConfig, env.PEER_SCHEMA || "public", {
  graphqlRoute: "/graphql",
  graphiql: false,
  watchPg: false,
  retryOnInitFail: false,
  dynamicJson: true,
  setofFunctionsContainNulls: false,
  ignoreRBAC: false,
  legacyRelations: "omit",
  disableQueryLog: true,
  enableQueryBatching: false,
  extendedErrors: ["errcode"],
});

const version = require("postgraphile4/package.json").version;
const server = http.createServer(middleware);
server.listen(Number(env.PEER_PORT), env.PEER_HOST || "127.0.0.1", () => {
  console.log(`postgraphile ${version} on ${process.version} listening`);
});

function stop() {
  server.close();
  server.closeAllConnections();
  middleware.release().finally(() => process.exit(0));
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
