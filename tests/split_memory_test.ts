/**
 * Split-memory VMs on agents of this machine (scripts/cluster): memstamp runs with most of its
 * memory on sub-hosts, pages moving on demand; every page verifies, every page has one holder, and a
 * sub-host that dies pauses the VM until it is back.
 */
import { perAccel } from "./helpers/accel.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { dcres } from "./helpers/cli.ts";
import { TestCluster, testPort } from "./helpers/cluster.ts";
import type { VmInfo } from "../src/vmm/control/protocol.ts";

const c = new TestCluster(7475);
const env = c.env;
const cluster = (...args: string[]) => c.run(...args);
const ok = (args: string[]) => c.ok(args);
const until = c.until.bind(c);

/**
 * The heavy-paging VM: small in CI; DCRES_SPLIT_SIZE=full runs the 2 GiB guest with a 1.5 GiB
 * working set on 512 MiB of main memory, paging for DCRES_SPLIT_MINUTES (default 3) minutes.
 */
const size = Deno.env.get("DCRES_SPLIT_SIZE") === "full"
  ? {
    mem: "2G",
    ws: "768M",
    mainMem: "512M",
    pages: 2 * 256 * 1024,
    stampMs: 900_000,
    runMs: Number(Deno.env.get("DCRES_SPLIT_MINUTES") ?? 3) * 60_000,
  }
  : perAccel({
    kvm: { mem: "512M", ws: "192M", mainMem: "128M", pages: 512 * 256, stampMs: 120_000, runMs: 0 },
    // The emulated CPU writes ~4,000 pages/s per vCPU: a quarter of the guest pages as much.
    emu: { mem: "256M", ws: "96M", mainMem: "64M", pages: 256 * 256, stampMs: 300_000, runMs: 0 },
  });
/** Page-outs that show heavy paging: the stamping pass alone sends about 3/4 of the pages away. */
const heavyPageOuts = perAccel({ kvm: 50_000, emu: 20_000 });

Deno.test("a split memstamp VM pages heavily over three sub-hosts, verifies, keeps one holder per page, and survives a sub-host's death", async () => {
  const agents = JSON.parse(await cluster("up", "4")) as Array<{ name: string; addr: string }>;
  const [main, ...subs] = agents.map((a) => a.addr);
  const a = ["--agent", main];
  try {
    // The working set (two vCPUs writing at random) is three times what main may keep.
    await ok([
      ...["vm", "start", "--main", main, "--sub", subs.join(","), "--name", "sv"],
      ...["--mem", size.mem, "--main-mem", size.mainMem, "--ws", size.ws],
      ...["--vcpus", "2", "--pattern", "random"],
    ]);
    await until(main, "sv", (v) => v.memstamp!.phase.every((p) => p >= 2), size.stampMs);
    await new Promise((r) => setTimeout(r, size.runMs));
    const busy = await until(main, "sv", (v) => (v.paging?.pageOuts ?? 0) > heavyPageOuts, 300_000);
    const p = busy.paging!;
    assertEquals(Object.keys(p.residentPages).sort(), ["main", "node2", "node3", "node4"]);
    assert(
      p.residentPages.main <= p.mainBudgetPages + 16 * 1024,
      `main over budget: ${JSON.stringify(p)}`,
    );
    assertEquals(Object.values(p.residentPages).reduce((x, y) => x + y), size.pages);
    // Every page main sends away came in first: from a sub-host, or as a never-written zero page.
    assert(
      p.pageIns + p.zeroFills >= p.pageOuts && p.pageIns > 0 && p.zeroFills > 0,
      JSON.stringify(p),
    );
    assert(p.faultLatencyUs.p50 > 0 && p.faultLatencyUs.p99 >= p.faultLatencyUs.p50);
    assert((await ok([...a, "guest", "verify", "sv", "--timeout", "600s"])).startsWith("OK"));
    assert(
      (await ok([...a, "vm", "check", "sv"])).startsWith(`OK: sv: each of ${size.pages} pages`),
    );
    const status = JSON.parse(
      await ok(["--json", "status", "--data-dir", `${env.DCRES_CLUSTER_DIR}/node1/data`]),
    );
    assert(status.vms[0].paging.pageIns > 0, JSON.stringify(status.vms[0]));
    // The traditional checkpoint (pause, pull every page to main, save as one host) restores
    // elsewhere as a one-host VM.
    const ck = JSON.parse(
      await ok([...a, "--json", "checkpoint", "sv", "--traditional", "--mode", "stop"]),
    );
    // Paths do not cross the network: a copy goes into that agent's store, named by its store.
    const into = `${env.DCRES_CLUSTER_DIR}/${agents[1].name}/data/ckpt/sv`;
    await new Deno.Command("cp", { args: ["-r", ck.dir, into] }).output();
    await ok(["--agent", subs[0], "restore", "sv", "--name", "svone"]);
    assert((await ok(["--agent", subs[0], "guest", "verify", "svone"])).startsWith("OK"));
    await ok(["--agent", subs[0], "vm", "stop", "svone"]);
    assert((await ok([...a, "vm", "check", "sv"])).startsWith("OK"));
    console.log(`  fault p50 ${p.faultLatencyUs.p50} us, p99 ${p.faultLatencyUs.p99} us`);

    await cluster("kill", "node3");
    const paused = await until(main, "sv", (v) => v.state === "paused", 60_000);
    assert(paused.paging!.blocked!.includes("node3"), paused.paging!.blocked);
    const human = await ok([...a, "vm", "ls"]);
    assert(
      human.includes(
        `sv: paused: sub-host node3 (127.0.0.4:${testPort(7475)}) cannot serve its pages`,
      ),
      human,
    );
    const refused = await dcres([...a, "guest", "verify", "sv"], { env });
    assertEquals(refused.code, 1, "a paused VM is not verified");

    await cluster("start", "node3");
    await until(main, "sv", (v) => v.state === "running" && !v.paging?.blocked, 60_000);
    assert((await ok([...a, "guest", "verify", "sv", "--timeout", "600s"])).startsWith("OK"));
    assert((await ok([...a, "vm", "check", "sv"])).startsWith("OK"));
    await ok([...a, "vm", "stop", "sv"]);
    const pagesDir = `${env.DCRES_CLUSTER_DIR}/node2/data/pages`;
    for (let i = 0; i < 600 && [...Deno.readDirSync(pagesDir)].length; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assertEquals([...Deno.readDirSync(pagesDir)].length, 0, "a stopped VM's pages are dropped");
  } finally {
    await cluster("down");
  }
});

Deno.test("starting a split VM with bad flags or an unreachable sub-host fails in one line and leaves nothing running", async () => {
  const agents = JSON.parse(await cluster("up", "2")) as Array<{ name: string; addr: string }>;
  const [main, sub] = agents.map((a) => a.addr);
  const start = (...extra: string[]) =>
    dcres(["vm", "start", "--name", "bad", "--mem", "256M", ...extra], { env, timeoutMs: 60_000 });
  try {
    for (
      const [flags, code, msg] of [
        [["--main", main, "--sub", sub], 2, "--sub needs --main-mem"],
        [["--main", main, "--main-mem", "64M"], 2, "need --sub"],
        [["--main", main, "--sub", sub, "--main-mem", "256M"], 2, "is not less than --mem"],
        [["--main", main, "--sub", main, "--main-mem", "64M"], 2, "cannot also be a sub-host"],
        [["--main", main, "--sub", "127.0.0.9:7475", "--main-mem", "64M"], 1, "127.0.0.9:7475"],
      ] as Array<[string[], number, string]>
    ) {
      const r = await start(...flags);
      assertEquals(r.code, code, `${flags.join(" ")}: ${r.stderr}`);
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert(r.stderr.includes(msg), `${flags.join(" ")}: ${r.stderr}`);
    }
    assertEquals(JSON.parse(await ok(["--agent", main, "--json", "vm", "ls"])), []);
  } finally {
    await cluster("down");
  }
});

Deno.test("a running VM split in place, its sub-host replaced, and gathered back verifies after each, with no fault served remotely during the split", async () => {
  const agents = JSON.parse(await cluster("up", "4")) as Array<{ name: string; addr: string }>;
  const [main, sub1, sub2, spare] = agents.map((a) => a.addr);
  const subs = [sub1, sub2];
  const a = ["--agent", main];
  try {
    await ok([
      ...a,
      "vm",
      "start",
      "--name",
      "mv",
      "--mem",
      "256M",
      "--vcpus",
      "2",
      "--ws",
      "64M",
      "--pattern",
      "random",
    ]);
    // Stamped first (the emulated CPU takes a while), so the split has written pages to send.
    await until(main, "mv", (v) => v.memstamp!.phase.every((p) => p >= 2), 300_000);
    await new Promise((r) => setTimeout(r, 2000));
    const splitArgs = [
      "migrate",
      "mv",
      "--main",
      main,
      "--sub",
      subs.join(","),
      "--main-mem",
      "64M",
    ];
    const split = JSON.parse(await ok(["--json", ...splitArgs]));
    assertEquals(split.remoteFaults, 0, "no page is served remotely during a split migration");
    assert(
      split.handedOver > 0 && split.pagesSent > 0 && split.downtimeMs < split.ms,
      JSON.stringify(split),
    );
    const again = await dcres(splitArgs, { env });
    assertEquals(again.code, 1);
    assert(again.stderr.includes("already split"), again.stderr);
    assert((await ok([...a, "guest", "verify", "mv"])).startsWith("OK"));
    assert((await ok([...a, "vm", "check", "mv"])).startsWith("OK"));
    const moved = JSON.parse(
      await ok(["--json", "migrate", "mv", "--main", main, "--move-sub", `${sub1}=${spare}`]),
    );
    assert(moved.pages > 0, JSON.stringify(moved));
    assertEquals([...Deno.readDirSync(`${env.DCRES_CLUSTER_DIR}/node2/data/pages`)].length, 0);
    const [during] = JSON.parse(await ok([...a, "--json", "vm", "ls"])) as VmInfo[];
    assertEquals(Object.keys(during.paging!.residentPages).sort(), ["main", "node3", "node4"]);
    assert((await ok([...a, "guest", "verify", "mv"])).startsWith("OK"));
    assert((await ok([...a, "vm", "check", "mv"])).startsWith("OK"));
    const gathered = JSON.parse(await ok(["--json", "migrate", "mv", "--to", main]));
    assert(gathered.pagesIn > 0, JSON.stringify(gathered));
    const [info] = JSON.parse(await ok([...a, "--json", "vm", "ls"])) as VmInfo[];
    assertEquals(info.paging, undefined, "a gathered VM is a one-host VM");
    assert((await ok([...a, "guest", "verify", "mv"])).startsWith("OK"));
    const bad = await dcres(["migrate", "mv", "--to", main, "--sub", subs[0]], { env });
    assertEquals(bad.code, 2, bad.stderr);
    const missing = await dcres(["migrate", "nosuch", "--to", main], { env });
    assertEquals(missing.code, 1);
    assert(missing.stderr.includes('no running VM named "nosuch"'), missing.stderr);
  } finally {
    await cluster("down");
  }
});
