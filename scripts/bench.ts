/** `deno task bench NAME`: runs one benchmark; each prints ratios against a reference of the same run and writes JSON. */
const benches: Record<string, (args: string[]) => Promise<unknown>> = {
  vmm: async () => (await import("./bench/vmm.ts")).benchVmm(),
  transport: async () => (await import("./bench/transport.ts")).benchTransport(),
  checkpoint: async () => (await import("./bench/checkpoint.ts")).benchCheckpoint(),
  paging: async (args) => (await import("./bench/paging.ts")).benchPaging(args),
  dcres: async (args) => (await import("./bench/dcres.ts")).benchDcres(args),
  durable: async () => (await import("./bench/durable.ts")).benchDurable(),
  coord: async (args) => (await import("./bench/coord.ts")).benchCoord(args),
};

const name = Deno.args[0];
if (!name || !(name in benches)) {
  console.error(`usage: deno task bench <${Object.keys(benches).join("|")}>`);
  Deno.exit(2);
}
const result = await benches[name](Deno.args.slice(1));
Deno.mkdirSync("bench-results", { recursive: true });
const path = `bench-results/${name}.json`;
Deno.writeTextFileSync(path, JSON.stringify(result, null, 2) + "\n");
console.log(`wrote ${path}`);
Deno.exit(0);
