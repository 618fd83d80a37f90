// Drives node-consul (npm `consul`) against a berth agent for the discovery tests; one JSON line per answer.
//   node node_consul_client.js PORT TOKEN|- '{"calls": [["catalog.service.list", {...}], ...]}'
//   node node_consul_client.js PORT TOKEN|- '{"watch": ["catalog.service.list", {...}], "changes": N}'
//   node node_consul_client.js PORT TOKEN|- '{"until_file": PATH, "calls": [...]}'   (repeat until PATH exists)
const events = require("events");
const fs = require("fs");
const path = require("path");
const Consul = require(path.join(__dirname, "node_modules", "consul"));

const [port, token, spec] = process.argv.slice(2);
const opts = { host: "127.0.0.1", port: Number(port) };
if (token !== "-") opts.defaults = { token };
const consul = new Consul(opts);
const job = JSON.parse(spec);

function method(name) {
  let obj = consul;
  const parts = name.split(".");
  for (const part of parts.slice(0, -1)) obj = obj[part];
  return obj[parts[parts.length - 1]].bind(obj);
}

function out(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function call(name, args) {
  try {
    const ctx = new events.EventEmitter();  // papi listens on it for "cancel"; it asks for the response too
    ctx.includeResponse = true;
    const [res, data] = await method(name)({ ...args, ctx });
    out({ index: res.headers["x-consul-index"] || null, data: data === undefined ? null : data });
  } catch (err) {
    out({ error: String(err.message), status: err.response ? err.response.statusCode : null });
  }
}

async function main() {
  if (job.watch) {
    const [name, args] = job.watch;
    let changes = 0;
    const watch = consul.watch({ method: method(name), options: args, maxAttempts: 3 });
    watch.on("change", (data, res) => {
      out({ index: res.headers["x-consul-index"], data });
      if (++changes >= job.changes) watch.end();
    });
    watch.on("error", (err) => out({ error: String(err.message) }));
    return;
  }
  do {
    for (const [name, args] of job.calls) await call(name, args);
  } while (job.until_file && !fs.existsSync(job.until_file));
}

main();
