/** A test's own etcd on loopback (Debian's etcd-server), started and stopped by the test. */
import { sleep } from "../../src/rpc/deadline.ts";
import { testPort } from "./cluster.ts";

/** The etcd binary on PATH, or undefined when etcd-server is not installed. */
export function etcdBinary(): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":").concat("/usr/bin")) {
    try {
      if (Deno.statSync(`${dir}/etcd`).isFile) return `${dir}/etcd`;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

const HOST = "127.0.0.201";
const START_MS = 20_000;

/** A running etcd with its own data directory. */
export class TestEtcd {
  /** `etcd://HOST:PORT`. */
  readonly url: string;
  /** The client URL, for raw requests. */
  readonly http: string;
  #dir: string;
  #child: Deno.ChildProcess | undefined;
  #stderr = "";
  #logged: Promise<void> = Promise.resolve();

  private constructor(dir: string) {
    this.#dir = dir;
    this.url = `etcd://${HOST}:${testPort(2379)}`;
    this.http = `http://${HOST}:${testPort(2379)}`;
  }

  /**
   * Starts etcd on 127.0.0.201 (ports 2379/2380 moved by DCRES_TEST_PORT_OFFSET) in a new data
   * directory; waits until it answers.
   */
  static async start(): Promise<TestEtcd> {
    const etcd = new TestEtcd(Deno.makeTempDirSync({ prefix: "dcres-etcd-" }));
    try {
      await etcd.restart();
    } catch (e) {
      await etcd.stop();
      throw e;
    }
    return etcd;
  }

  /** Kills etcd (if it runs) and starts it again on the same data; waits until it answers. */
  async restart(): Promise<void> {
    await this.kill();
    const bin = etcdBinary();
    if (!bin) throw new Error("etcd is not installed (apt-get install etcd-server)");
    const client = `http://${HOST}:${testPort(2379)}`, peer = `http://${HOST}:${testPort(2380)}`;
    const child = new Deno.Command(bin, {
      args: [
        "--name=dcres-test",
        `--data-dir=${this.#dir}/data`,
        `--listen-client-urls=${client}`,
        `--advertise-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=dcres-test=${peer}`,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#logged = this.#drain(child.stderr);
    const deadline = performance.now() + START_MS;
    for (;;) {
      const exited = await Promise.race([child.status, sleep(200).then(() => undefined)]);
      if (exited) {
        await this.#logged;
        throw new Error(`etcd exited (${exited.code}) at start: ${this.#tail()}`);
      }
      if (await this.#answers()) return;
      if (performance.now() > deadline) {
        throw new Error(`etcd did not answer within ${START_MS} ms: ${this.#tail()}`);
      }
    }
  }

  /** Kills etcd with SIGKILL, keeping its data. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
    await child.status;
    await this.#logged;
  }

  /** POSTs `body` to the gateway at `path`; the answer's JSON. */
  async post(path: string, body: unknown): Promise<unknown> {
    const r = await fetch(this.http + path, { method: "POST", body: JSON.stringify(body) });
    return await r.json();
  }

  /** Writes `value` at `key` directly, past dcres's checks. */
  async putRaw(key: string, value: Uint8Array): Promise<void> {
    await this.post("/v3/kv/put", {
      key: new TextEncoder().encode(key).toBase64(),
      value: value.toBase64(),
    });
  }

  /** The value at `key`, read directly, or undefined. */
  async getRaw(key: string): Promise<Uint8Array | undefined> {
    const r = await this.post("/v3/kv/range", {
      key: new TextEncoder().encode(key).toBase64(),
    }) as {
      kvs?: { value?: string }[];
    };
    const value = r.kvs?.[0]?.value;
    return value === undefined ? undefined : Uint8Array.fromBase64(value);
  }

  /** Kills etcd and removes its directory. */
  async stop(): Promise<void> {
    await this.kill();
    Deno.removeSync(this.#dir, { recursive: true });
  }

  async #answers(): Promise<boolean> {
    try {
      const r = await fetch(`${this.http}/v3/kv/range`, {
        method: "POST",
        body: JSON.stringify({ key: "AA==" }),
        signal: AbortSignal.timeout(1000),
      });
      await r.body?.cancel();
      return r.status === 200;
    } catch {
      return false;
    }
  }

  async #drain(stream: ReadableStream<Uint8Array>): Promise<void> {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      this.#stderr = (this.#stderr + chunk).slice(-4000);
    }
  }

  #tail(): string {
    return this.#stderr.trim().split("\n").slice(-5).join(" | ");
  }
}
