/**
 * `dcres agent --config FILE`: the file is checked whole (every key's type and bound, no unknown
 * key) before anything starts, each bad value refused in one line naming the file and the key, and
 * the flags, held to the same rules, override it. No agent is started.
 */
import fc from "fast-check";
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "./helpers/assert.ts";
import {
  AGENT_FILE_KEYS,
  agentConfigOf,
  type AgentFile,
  loadAgentFile,
  parseAgentFile,
} from "../src/cli/agent_config.ts";
import { UsageError } from "../src/cli/units.ts";

const FILE = "/etc/dcres/agent.json";
const parse = (c: unknown) => parseAgentFile(JSON.stringify(c), FILE);

/** `fn` throws one UsageError line that names the file (or flag) and includes `includes`. */
function refused(fn: () => unknown, includes: string, names = `--config ${FILE}`) {
  const e = assertThrows(fn, UsageError, includes);
  assert(!e.message.includes("\n"), `not one line: ${e.message}`);
  assert(e.message.startsWith(names), `does not name ${names}: ${e.message}`);
}

/** A file that sets every key, each to a good value. */
const GOOD: Required<AgentFile> = {
  listen: "10.0.0.11:7400",
  dataDir: "/srv/dcres",
  identityDir: "/srv/dcres-identity",
  guestDir: "/srv/guests",
  metricsPort: 9466,
  pageStoreBytes: 8 * 2 ** 30,
  storeQuotaBytes: 500 * 2 ** 30,
  accel: "emu",
  recheckMs: 30_000,
  checkpointKeep: 5,
  scrubRateBytes: 32 * 2 ** 20,
  scrubEveryMs: 3_600_000,
  peers: ["10.0.0.12:7400", "[::1]:7401"],
  zone: "rack1",
  replicas: 3,
  coordinator: "/etc/dcres/coord.json",
};

Deno.test("a file setting every key reads back as given and becomes the agent's config", () => {
  const file = parse(GOOD);
  assertEquals(file, GOOD);
  assertEquals(Object.keys(GOOD).sort(), [...AGENT_FILE_KEYS].sort(), "GOOD sets every key");
  const { coordinator: _, ...cfg } = GOOD;
  assertEquals(agentConfigOf({ config: FILE }, file), cfg);
});

Deno.test("an empty file object gives the documented defaults", () => {
  const cfg = agentConfigOf({}, parse({}));
  assertEquals([cfg.listen, cfg.dataDir, cfg.identityDir, cfg.guestDir], [
    "127.0.0.1:7400",
    "/var/lib/dcres",
    "/etc/dcres/identity",
    "/var/lib/dcres/guests",
  ]);
  assertEquals([cfg.metricsPort, cfg.storeQuotaBytes, cfg.scrubRateBytes, cfg.peers], [
    undefined,
    undefined,
    undefined,
    undefined,
  ]);
});

Deno.test("the listen address may take port 0 (any free port), as --listen does", () => {
  assertEquals(parse({ listen: "127.0.0.1:0" }).listen, "127.0.0.1:0");
  assertEquals(agentConfigOf({ listen: "127.0.0.1:0" }, {}).listen, "127.0.0.1:0");
});

Deno.test("scrubRateBytes 0 is accepted: no background scrub, as --scrub-rate off", () => {
  assertEquals(parse({ scrubRateBytes: 0 }).scrubRateBytes, 0);
  assertEquals(agentConfigOf({ scrubRate: "off" }, {}).scrubRateBytes, 0);
});

Deno.test("a peers list written as one comma-separated string is still accepted", () => {
  assertEquals(parse({ peers: "h2:7400,h3:7400" }).peers, ["h2:7400", "h3:7400"]);
});

Deno.test("every flag given overrides the file's value", () => {
  const cfg = agentConfigOf({
    config: FILE,
    listen: "10.0.0.21:7500",
    dataDir: "/data",
    identity: "/id",
    guestDir: "/guests",
    metricsPort: "9999",
    pageStore: "1G",
    accel: "kvm",
    peers: "10.0.0.22:7500",
    zone: "rack2",
    replicas: "1",
    scrubRate: "64M/s",
    scrubEvery: "2h",
  }, parse(GOOD));
  assertEquals(cfg, {
    listen: "10.0.0.21:7500",
    dataDir: "/data",
    identityDir: "/id",
    guestDir: "/guests",
    metricsPort: 9999,
    pageStoreBytes: 2 ** 30,
    accel: "kvm",
    peers: ["10.0.0.22:7500"],
    zone: "rack2",
    replicas: 1,
    scrubRateBytes: 64 * 2 ** 20,
    scrubEveryMs: 7_200_000,
    // No flag sets these: the file's stay.
    recheckMs: 30_000,
    storeQuotaBytes: 500 * 2 ** 30,
    checkpointKeep: 5,
  });
});

Deno.test("a file that is not JSON is refused, in one line however its text breaks", () => {
  refused(() => parseAgentFile("{\n  listen: 1\n}", FILE), "not JSON");
  refused(() => parseAgentFile("xx\nyy", FILE), "not JSON");
  refused(() => parseAgentFile("", FILE), "not JSON");
});

Deno.test("a file whose top level is not an object is refused", () => {
  for (const [v, got] of [[[], "a list"], [null, "null"], [7, "7"], ["x", '"x"']] as const) {
    refused(
      () => parse(v),
      `must be a JSON object of settings, e.g. {"listen": "10.0.0.11:7400"} (got ${got})`,
    );
  }
});

Deno.test("an unknown key is refused by name, with the keys there are", () => {
  refused(() => parse({ storeQuota: 1 << 30 }), `unknown key storeQuota; known: listen, dataDir,`);
  refused(() => parse({ "bad key\n": 1 }), `unknown key "bad key\\n"`);
  refused(() => parse(JSON.parse('{"__proto__": {"listen": "x"}}')), `unknown key "__proto__"`);
  refused(() => parse({ ...GOOD, listenn: "h:1" }), "unknown key listenn");
});

Deno.test("each key's wrong type or out-of-bound value is refused naming the key", () => {
  const port = "must be a port number from 1 to 65535";
  const bytes = "must be a whole number of bytes, at least 1";
  const cases: [Record<string, unknown>, string][] = [
    [
      { listen: 5 },
      "listen must be an address HOST:PORT to listen on, e.g. 10.0.0.11:7400 (got 5)",
    ],
    [{ listen: "10.0.0.11" }, `listen must be an address HOST:PORT`],
    [{ listen: "10.0.0.11" }, `"10.0.0.11" has no port`],
    [{ listen: "h:65536" }, "outside 0 to 65535"],
    [{ listen: "::1:7400" }, "without brackets"],
    [{ dataDir: 7 }, "dataDir must be an absolute path, e.g. /var/lib/dcres (got 7)"],
    [{ dataDir: "" }, `dataDir must be an absolute path, e.g. /var/lib/dcres (got "")`],
    [{ dataDir: "var/lib/dcres" }, `dataDir must be an absolute path`],
    [{ dataDir: "/a\0b" }, `dataDir must be an absolute path`],
    [{ dataDir: "/" + "a".repeat(4096) }, `dataDir must be an absolute path`],
    [
      { identityDir: ["/etc"] },
      "identityDir must be an absolute path, e.g. /etc/dcres/identity (got a list)",
    ],
    [
      { guestDir: "guests" },
      `guestDir must be an absolute path, e.g. /var/lib/dcres/guests (got "guests")`,
    ],
    [{ metricsPort: "abc" }, `metricsPort ${port} (got "abc")`],
    [{ metricsPort: 0 }, `metricsPort ${port} (got 0)`],
    [{ metricsPort: 65536 }, `metricsPort ${port} (got 65536)`],
    [{ metricsPort: 80.5 }, `metricsPort ${port} (got 80.5)`],
    [{ pageStoreBytes: 0 }, `pageStoreBytes ${bytes} (got 0)`],
    [{ pageStoreBytes: "1G" }, `pageStoreBytes ${bytes} (got "1G")`],
    [{ storeQuotaBytes: -1 }, `storeQuotaBytes ${bytes} (got -1)`],
    [{ storeQuotaBytes: 2 ** 53 }, `storeQuotaBytes ${bytes} (got 9007199254740992)`],
    [{ storeQuotaBytes: null }, `storeQuotaBytes ${bytes} (got null)`],
    [{ accel: "qemu" }, `accel must be auto, kvm or emu, got "qemu"`],
    [{ accel: true }, `accel must be one of auto, kvm, emu (got true)`],
    [
      { recheckMs: 0 },
      "recheckMs must be a whole number of milliseconds from 1000 to 3600000 (got 0)",
    ],
    [{ recheckMs: 86_400_000 }, "recheckMs must be a whole number of milliseconds"],
    [{ recheckMs: "60s" }, "recheckMs must be a whole number of milliseconds"],
    [{ scrubEveryMs: 0 }, "scrubEveryMs must be a whole number of milliseconds from 1000"],
    [{ scrubEveryMs: 2 ** 31 }, "scrubEveryMs must be a whole number of milliseconds"],
    [{ scrubRateBytes: -1 }, "scrubRateBytes must be a whole number of bytes per second"],
    [{ scrubRateBytes: 1.5 }, "scrubRateBytes must be a whole number of bytes per second"],
    [{ scrubRateBytes: "32M" }, "scrubRateBytes must be a whole number of bytes per second"],
    [{ checkpointKeep: 0 }, "checkpointKeep 0: give a whole number of generations from 1 to"],
    [{ checkpointKeep: "5" }, 'checkpointKeep "5": give a whole number of generations'],
    [{ peers: ["h2:7400", "h3"] }, `peers: peer "h3" has no port`],
    [{ peers: 5 }, "peers: give the other agents as HOST:PORT"],
    [{ zone: "rack/1" }, `zone "rack/1" is not a zone`],
    [{ zone: 1 }, "zone"],
    [{ replicas: 0 }, "replicas 0: give a whole number of copies from 1 to"],
    [{ replicas: "two" }, 'replicas "two": give a whole number of copies'],
    [{ coordinator: "" }, "coordinator must be the path of a coordinator's config file"],
    [{ coordinator: 3 }, "coordinator must be the path of a coordinator's config file"],
  ];
  for (const [c, msg] of cases) refused(() => parse({ ...GOOD, ...c }), msg);
});

Deno.test("a flag is held to its key's rule: it takes nothing the file refuses", () => {
  const flagRefused = (f: Record<string, string>, msg: string, flag: string) =>
    refused(() => agentConfigOf(f, {}), msg, flag);
  flagRefused(
    { metricsPort: "abc" },
    `--metrics-port must be a port number from 1 to 65535 (got "abc")`,
    "--metrics-port",
  );
  flagRefused({ metricsPort: "0" }, "(got 0)", "--metrics-port");
  flagRefused({ metricsPort: "70000" }, "(got 70000)", "--metrics-port");
  flagRefused({ listen: "10.0.0.11" }, "--listen must be an address HOST:PORT", "--listen");
  flagRefused(
    { dataDir: "data" },
    `--data-dir must be an absolute path, e.g. /var/lib/dcres (got "data")`,
    "--data-dir",
  );
  flagRefused({ dataDir: "" }, "--data-dir must be an absolute path", "--data-dir");
  flagRefused({ identity: "id" }, "--identity must be an absolute path", "--identity");
  flagRefused({ guestDir: "g" }, "--guest-dir must be an absolute path", "--guest-dir");
  flagRefused({ pageStore: "big" }, "--page-store big: not a size", "--page-store");
  flagRefused(
    { pageStore: "99999999999T" },
    "--page-store 99999999999T must be a whole number of bytes",
    "--page-store",
  );
  flagRefused({ scrubRate: "fast" }, "--scrub-rate fast: not a size", "--scrub-rate");
  flagRefused(
    { scrubEvery: "500ms" },
    "--scrub-every 500ms must be a whole number of milliseconds from 1000",
    "--scrub-every",
  );
  flagRefused({ scrubEvery: "1500.5ms" }, "--scrub-every 1500.5ms", "--scrub-every");
  flagRefused({ scrubEvery: "30d" }, "--scrub-every 30d: not a duration", "--scrub-every");
  flagRefused(
    { scrubEvery: "600h" },
    "--scrub-every 600h must be a whole number of milliseconds",
    "--scrub-every",
  );
  flagRefused({ accel: "qemu" }, `--accel must be auto, kvm or emu, got "qemu"`, "--accel");
  flagRefused({ peers: "h2" }, `--peers: peer "h2" has no port`, "--peers");
  flagRefused({ zone: "rack/1" }, `--zone "rack/1" is not a zone`, "--zone");
  flagRefused({ replicas: "0" }, `--replicas "0": give a whole number of copies`, "--replicas");
});

Deno.test("a config file that cannot be read is refused naming it", () => {
  const missing = join(Deno.makeTempDirSync(), "agent.json");
  refused(() => loadAgentFile(missing), "No such file", `--config ${missing}`);
});

Deno.test("every example agent config the repository ships passes the check", () => {
  const root = new URL("..", import.meta.url).pathname;
  const examples: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const path = join(dir, e.name);
      if (e.isDirectory) walk(path);
      else if (/^agent.*\.json(\.example)?$/.test(e.name)) examples.push(path);
    }
  };
  walk(join(root, "contrib"));
  walk(join(root, "docs"));
  assert(examples.length >= 1, "contrib/systemd/agent.json.example is there");
  for (const path of examples) {
    const file: AgentFile = loadAgentFile(path);
    assert(Object.keys(file).length > 0, path);
    agentConfigOf({ config: path }, file);
  }
});

Deno.test("any text, or any values under the known keys, is either a config or one UsageError line", () => {
  const outcome = (text: string) => {
    try {
      parseAgentFile(text, FILE);
    } catch (e) {
      assert(e instanceof UsageError, `${(e as Error).name}: ${(e as Error).message}`);
      assert(!e.message.includes("\n"), e.message);
    }
  };
  fc.assert(fc.property(fc.string(), outcome), { numRuns: 500 });
  fc.assert(fc.property(fc.json(), outcome), { numRuns: 500 });
  const known = fc.dictionary(fc.constantFrom(...AGENT_FILE_KEYS), fc.jsonValue());
  fc.assert(fc.property(known, (c) => outcome(JSON.stringify(c))), { numRuns: 2000 });
});
