/**
 * Names and paths (issue 14 item 3), against a real agent over QUIC: names and paths that would
 * escape are refused at the boundary in one line and leave nothing on disk outside the data
 * directory; a planted manifest naming an absolute path, `..`, a symlink or a FIFO is refused (fast,
 * and without reporting the target's size); `ckpt.put` over a committed generation is refused and the
 * checkpoint still verifies.
 */
import { assert, assertEquals, assertRejects } from "./helpers/assert.ts";
import { TestCluster } from "./helpers/cluster.ts";
import { RpcClient } from "../src/net/quic.ts";
import { loadIdentity } from "../src/net/identity.ts";
import { RpcError } from "../src/rpc/errors.ts";
import { encodeManifest, readManifest } from "../src/ckpt/manifest.ts";
import type { CheckpointPlan } from "../src/agent/ckpt_files.ts";

/** Every entry under `dir`, recursively, as paths relative to it. */
function tree(dir: string, pre = ""): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    out.push(`${pre}${e.name}`);
    if (e.isDirectory) out.push(...tree(`${dir}/${e.name}`, `${pre}${e.name}/`));
  }
  return out.sort();
}

/** `p` must reject with a one-line RpcError matching `what`, within `ms`. */
async function refused(p: () => Promise<unknown>, what: RegExp, ms = 5_000): Promise<RpcError> {
  const t0 = performance.now();
  const e = await assertRejects(p, RpcError);
  const took = performance.now() - t0;
  assert(took < ms, `refused after ${took.toFixed(0)} ms: ${e.message}`);
  assertEquals(e.message.split("\n").length, 1, e.message);
  assert(what.test(e.message), e.message);
  return e as RpcError;
}

async function* bytes(b: Uint8Array) {
  yield b;
}

Deno.test("names and paths: escapes refused at the boundary, planted manifests refused, committed generations immutable", async () => {
  const c = new TestCluster(7483);
  const [addr] = await c.up(1);
  const root = c.env.DCRES_CLUSTER_DIR;
  const data = `${root}/node1/data`;
  const outside = Deno.makeTempDirSync({ prefix: "dcres-outside-" });
  const op = await RpcClient.connect(addr, loadIdentity(`${c.env.XDG_CONFIG_HOME}/dcres/client`));
  const agent = await RpcClient.connect(addr, loadIdentity(`${root}/node1/identity`));
  try {
    const before = tree(root).filter((p) => !p.startsWith("node1/data/"));
    // A VM name, a store name or a checkpoint path that climbs out: one line, bad-request.
    const spec = { name: "../../escape", guest: "memstamp", memSize: 64 << 20, vcpus: 1 };
    const e = await refused(() => op.call("vm.start", { spec }), /name "\.\.\/\.\.\/escape"/);
    assertEquals(e.code, "bad-request");
    await refused(() => op.call("vm.stop", { name: `../../../${outside}/x` }), /not a vm/);
    await refused(() => op.call("vm.exec", { name: "a/b", cmd: "true" }), /not a vm/);
    await refused(() => op.call("checkpoint", { name: "v", dir: `${outside}/cron.d` }), /dir/);
    await refused(
      () => op.call("checkpoint", { name: "v", dir: "../../x" }),
      /dir "\.\.\/\.\.\/x"/,
    );
    await refused(() => op.call("restore", { path: outside }), /not accepted over the network/);
    await refused(() => op.call("ckpt.verify", { path: "../../node1" }), /path/);
    await refused(() => op.call("ckpt.ls", { path: "/etc" }), /path "\/etc"/);
    await refused(
      () =>
        op.call("ckpt.put", { store: "..", file: "g000001/x.frag", bytes: 4 }, {
          upload: bytes(new Uint8Array(4)),
        }),
      /store "\.\."/,
    );
    await refused(
      () =>
        op.call("ckpt.put", { store: "v", file: "../../../x", bytes: 4 }, {
          upload: bytes(new Uint8Array(4)),
        }),
      /file "\.\.\/\.\.\/\.\.\/x"/,
    );
    await refused(() => op.call("ckpt.get", { store: "v", file: "/etc/shadow" }), /file/);
    await refused(() => agent.call("pages.open", { vm: "../x", pages: 1 }), /vm "\.\.\/x"/);
    await refused(
      () =>
        op.call("vm.start", {
          spec: {
            name: "lx",
            guest: "linux",
            memSize: 256 << 20,
            vcpus: 1,
            linux: { kernel: "/etc/shadow", cmdline: "" },
          },
        }),
      /kernel "\/etc\/shadow" leads outside/,
    );
    const long = "a".repeat(5000);
    const el = await refused(() => op.call("vm.stop", { name: long }), /5000 characters/);
    assert(el.message.length < 300, el.message);
    // Nothing reached the disk outside the data directory.
    assertEquals(tree(outside), []);
    assertEquals(tree(root).filter((p) => !p.startsWith("node1/data/")), before);

    // A real checkpoint to plant from.
    await c.ok(["--agent", addr, "vm", "start", "--name", "v", "--mem", "64M"]);
    await c.ok(["--agent", addr, "checkpoint", "v"]);
    await c.ok(["--agent", addr, "vm", "stop", "v"]);
    const plan = await op.call<CheckpointPlan>("ckpt.plan", { path: "v" });
    const gen = `${data}/ckpt/v/${plan.generation}`;
    const frag = plan.fragments[0].path;
    const m = readManifest(gen);
    const plant = (store: string, path: string) => {
      Deno.mkdirSync(`${data}/ckpt/${store}/g000001`, { recursive: true });
      const bad = structuredClone(m);
      bad.fragments[0].path = path;
      Deno.writeFileSync(`${data}/ckpt/${store}/g000001/MANIFEST`, encodeManifest(bad));
    };
    plant("abs", "/etc/shadow");
    plant("dotdot", "../../../../etc/shadow");
    const shadow = String(Deno.statSync("/etc/shadow").size);
    for (const store of ["abs", "dotdot"]) {
      const r = await refused(
        () => op.call("ckpt.verify", { path: store }),
        /fragments\[0\]\.path/,
      );
      assert(!r.message.includes(` ${shadow} `), r.message);
    }
    // A fragment that is a symlink out, and one that is a FIFO; a MANIFEST that is a FIFO.
    plant("sym", frag);
    Deno.mkdirSync(`${data}/ckpt/sym/${frag.split("/")[0]}`, { recursive: true });
    Deno.symlinkSync("/etc/shadow", `${data}/ckpt/sym/${frag}`);
    await refused(() => op.call("ckpt.verify", { path: "sym" }), /symlink/);
    plant("fifo", frag);
    Deno.mkdirSync(`${data}/ckpt/fifo/${frag.split("/")[0]}`, { recursive: true });
    await new Deno.Command("mkfifo", { args: [`${data}/ckpt/fifo/${frag}`] }).output();
    await refused(() => op.call("ckpt.verify", { path: "fifo" }), /FIFO/, 1_000);
    await refused(() => op.call("ckpt.get", { store: "fifo", file: frag }), /FIFO/, 1_000);
    Deno.mkdirSync(`${data}/ckpt/fifoman/g000001`, { recursive: true });
    await new Deno.Command("mkfifo", { args: [`${data}/ckpt/fifoman/g000001/MANIFEST`] }).output();
    await refused(() => op.call("ckpt.verify", { path: "fifoman/g000001" }), /FIFO/, 1_000);
    // The agent still answers.
    assert((await op.call<{ ok: boolean }>("health")).ok);

    // A committed generation never changes.
    const put = (file: string) =>
      op.call("ckpt.put", { store: "v", file, bytes: 64 }, { upload: bytes(new Uint8Array(64)) });
    await refused(() => put(`${plan.generation}/MANIFEST`), /committed/);
    await refused(() => put(frag), /committed/);
    await refused(
      () =>
        op.call("ckpt.commit", { store: "v", generation: plan.generation }, {
          upload: bytes(new Uint8Array(64)),
        }),
      /committed/,
    );
    await c.ok(["--agent", addr, "ckpt", "verify", "v"]);
  } finally {
    op.close();
    agent.close();
    await c.down();
  }
});
