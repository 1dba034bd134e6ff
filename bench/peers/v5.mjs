// PostGraphile v5 (the amber preset) as a library behind a bare node:http server, in
// production mode: development mode adds checks that make planning much more expensive.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { postgraphile } from "postgraphile";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { makePgService } from "postgraphile/adaptors/pg";
import { grafserv } from "postgraphile/grafserv/node";

const env = process.env;
const host = env.PEER_HOST || "127.0.0.1";
const port = Number(env.PEER_PORT);
// The package's exports leave out package.json.
const version = JSON.parse(
  readFileSync(new URL("node_modules/postgraphile/package.json", import.meta.url), "utf8"),
).version;

const preset = {
  extends: [PostGraphileAmberPreset],
  pgServices: [
    makePgService({
      connectionString: env.PEER_DSN,
      schemas: [env.PEER_SCHEMA || "public"],
      poolConfig: { max: Number(env.PEER_POOL_MAX || 10) },
    }),
  ],
  grafserv: { host, port, graphqlPath: "/graphql", graphiql: false, watch: false, websockets: false },
  grafast: { explain: false },
};

const pgl = postgraphile(preset);
const serv = pgl.createServ(grafserv);
const server = createServer();
server.on("error", (err) => {
  console.error(err);
  process.exit(1);
});
await serv.addTo(server);
server.listen(port, host, () => {
  console.log(`postgraphile ${version} on ${process.version} listening`);
});

async function stop() {
  server.close();
  server.closeAllConnections();
  try {
    await pgl.release();
  } finally {
    process.exit(0);
  }
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
