/**
 * etcd v3 through its JSON gateway (POST /v3/kv/range, /v3/kv/txn, /v3/lease/...), with fetch and
 * no other dependency. Keys and values travel base64; 64-bit numbers as decimal strings, and fields
 * at their zero value are left out. Every answer is bounded and checked with valibot before use,
 * since it is input like any other. A request that cannot reach one endpoint goes to the next.
 */
import * as v from "valibot";
import { AddressError, formatHostPort, type HostPort, parseHostPort } from "../net/address.ts";
import { MAX_LIST } from "./records.ts";
import { StateCorruptError, StateStoreError } from "./state.ts";

/** Most endpoints in one `--store etcd://...`. */
export const MAX_ENDPOINTS = 16;
/** Largest answer read from the gateway. */
const MAX_ANSWER_BYTES = 64 << 20;
const REQUEST_MS = 5000;

/**
 * The endpoints of `etcd://HOST:PORT,...`: each HOST:PORT (net/address.ts), nothing else — no
 * path, user or query. Throws {@link StateStoreError} naming the part that is wrong.
 */
export function parseEtcdUrl(url: string): HostPort[] {
  const where = JSON.stringify(url.slice(0, 200));
  if (!url.startsWith("etcd://")) {
    throw new StateStoreError(where, "is not etcd://HOST:PORT,HOST:PORT...");
  }
  const parts = url.slice("etcd://".length).split(",");
  if (parts.length > MAX_ENDPOINTS) {
    throw new StateStoreError(
      where,
      `names ${parts.length} endpoints; give at most ${MAX_ENDPOINTS}`,
    );
  }
  return parts.map((p) => {
    if (/[/?#@]/.test(p)) {
      throw new StateStoreError(
        where,
        `endpoint "${p}" has a path, user or query; write HOST:PORT`,
      );
    }
    try {
      return parseHostPort(p);
    } catch (e) {
      if (e instanceof AddressError) throw new StateStoreError(where, `endpoint ${e.message}`);
      throw e;
    }
  });
}

const int64 = v.pipe(v.string(), v.regex(/^-?\d{1,19}$/));
const HEADER = v.looseObject({ revision: v.optional(int64) });
const KV = v.looseObject({
  key: v.string(),
  value: v.optional(v.string()),
  create_revision: v.optional(int64),
  mod_revision: v.optional(int64),
});
const RANGE = v.looseObject({
  header: HEADER,
  kvs: v.optional(v.array(KV)),
  more: v.optional(v.boolean()),
});
const TXN = v.looseObject({
  header: HEADER,
  succeeded: v.optional(v.boolean()),
  responses: v.optional(v.array(v.looseObject({ response_range: v.optional(RANGE) }))),
});
const GRANT = v.looseObject({ ID: int64, TTL: v.optional(int64) });
const KEEPALIVE = v.looseObject({ result: v.looseObject({ TTL: v.optional(int64) }) });
const DELETED = v.looseObject({ deleted: v.optional(int64) });
const ANY = v.looseObject({ header: v.optional(HEADER) });

/** A key as read: bytes, and its revisions as numbers. */
export interface EtcdKv {
  /** The key. */
  key: string;
  /** The value's bytes. */
  value: Uint8Array;
  /** Revision that created it. */
  createRev: number;
  /** Revision of its last change. */
  modRev: number;
}

/** A comparison of a txn, as the gateway takes it. */
export type EtcdCompare =
  | { key: string; target: "MOD"; result: "EQUAL"; mod_revision: string }
  | { key: string; target: "CREATE"; result: "EQUAL"; create_revision: string };

/** A step of a txn. */
export type EtcdRequest =
  | { request_put: { key: string; value: string; lease?: string } }
  | { request_delete_range: { key: string } }
  | { request_range: { key: string } };

/** Base64 of `s`'s UTF-8 bytes, as the gateway wants keys and values. */
export function b64(s: string): string {
  return new TextEncoder().encode(s).toBase64();
}

/** The key after every key that starts with `prefix`: a range's end. */
export function prefixEnd(prefix: string): string {
  const bytes = new TextEncoder().encode(prefix);
  bytes[bytes.length - 1]++;
  return bytes.toBase64();
}

/** One etcd cluster, reached through any of its endpoints. */
export class EtcdClient {
  /** `etcd://HOSTS`, for messages. */
  readonly where: string;
  #endpoints: string[];
  #next = 0;
  #closed = false;

  /** `endpoints` as {@link parseEtcdUrl} gives them. */
  constructor(endpoints: HostPort[]) {
    this.#endpoints = endpoints.map((e) => `http://${formatHostPort(e)}`);
    this.where = `etcd://${endpoints.map(formatHostPort).join(",")}`;
  }

  /** Keys in [key, end) (or just `key`), in key order; at most `limit`, else an error. */
  async range(
    key: string,
    opts: { end?: string; limit?: number; newestFirst?: boolean; minCreateRev?: number } = {},
  ): Promise<EtcdKv[]> {
    const limit = opts.limit ?? MAX_LIST;
    const r = this.#parse(
      RANGE,
      await this.call("/v3/kv/range", {
        key: b64(key),
        ...(opts.end !== undefined && { range_end: opts.end }),
        limit: String(limit),
        ...(opts.newestFirst && { sort_order: "DESCEND", sort_target: "CREATE" }),
        ...(opts.minCreateRev && { min_create_revision: String(opts.minCreateRev) }),
      }),
      "range",
    );
    if (r.more && !opts.newestFirst) {
      throw new StateCorruptError(this.where, `more than ${limit} keys under ${key}`);
    }
    return (r.kvs ?? []).map((kv) => this.#kv(kv));
  }

  /**
   * Runs `success` if every compare holds, else `failure`; returns whether it succeeded, the
   * revision after it and the keys the failure branch's ranges read.
   */
  async txn(
    compare: EtcdCompare[],
    success: EtcdRequest[],
    failure: EtcdRequest[] = [],
  ): Promise<{ succeeded: boolean; revision: number; read: EtcdKv[] }> {
    const r = this.#parse(TXN, await this.call("/v3/kv/txn", { compare, success, failure }), "txn");
    const read = (r.responses ?? []).flatMap((x) => x.response_range?.kvs ?? [])
      .map((kv) => this.#kv(kv));
    return { succeeded: r.succeeded === true, revision: num(r.header.revision), read };
  }

  /** Deletes the keys in [key, end); how many. */
  async deleteRange(key: string, end: string): Promise<number> {
    const r = this.#parse(
      DELETED,
      await this.call("/v3/kv/deleterange", { key: b64(key), range_end: end }),
      "deleterange",
    );
    return num(r.deleted);
  }

  /** The cluster's current revision. */
  async revision(): Promise<number> {
    const r = this.#parse(
      ANY,
      await this.call("/v3/kv/range", { key: b64("\0"), limit: "1" }),
      "range",
    );
    return num(r.header?.revision);
  }

  /** A new lease of `ttlS` seconds; its id. */
  async grant(ttlS: number): Promise<string> {
    return this.#parse(GRANT, await this.call("/v3/lease/grant", { TTL: String(ttlS) }), "grant")
      .ID;
  }

  /** Renews lease `id`; false if it has lapsed. */
  async keepAlive(id: string): Promise<boolean> {
    const r = this.#parse(
      KEEPALIVE,
      await this.call("/v3/lease/keepalive", { ID: id }),
      "keepalive",
    );
    return num(r.result.TTL) > 0;
  }

  /** Ends lease `id` and deletes its keys. */
  async revoke(id: string): Promise<void> {
    await this.call("/v3/lease/revoke", { ID: id });
  }

  /** Refuses every request from now on. */
  close(): void {
    this.#closed = true;
  }

  /** POSTs `body` to `path` on an endpoint that answers; the answer's JSON, bounded. */
  async call(path: string, body: unknown): Promise<unknown> {
    if (this.#closed) throw new StateStoreError(this.where, "the state is closed");
    const problems: string[] = [];
    for (let i = 0; i < this.#endpoints.length; i++) {
      const base = this.#endpoints[(this.#next + i) % this.#endpoints.length];
      let res: Response;
      try {
        res = await fetch(base + path, {
          method: "POST",
          body: JSON.stringify(body),
          headers: { "content-type": "application/json" },
          signal: AbortSignal.timeout(REQUEST_MS),
        });
      } catch (e) {
        problems.push(`${base}: ${(e as Error).message}`);
        continue;
      }
      const text = await boundedText(res, this.where);
      if (res.status >= 500) {
        problems.push(`${base}: HTTP ${res.status} ${text.slice(0, 200)}`);
        continue;
      }
      this.#next = (this.#next + i) % this.#endpoints.length;
      if (res.status !== 200) {
        throw new StateStoreError(
          this.where,
          `${path} refused: HTTP ${res.status} ${text.slice(0, 200)}`,
        );
      }
      try {
        return JSON.parse(text);
      } catch {
        throw new StateCorruptError(this.where, `${path} answered with something not JSON`);
      }
    }
    throw new StateStoreError(
      this.where,
      `no etcd endpoint answered ${path} (${problems.join("; ")}); is etcd running there?`,
    );
  }

  #parse<T extends v.GenericSchema>(schema: T, x: unknown, what: string): v.InferOutput<T> {
    const r = v.safeParse(schema, x);
    if (r.success) return r.output;
    const path = r.issues[0].path?.map((p) => String(p.key)).join(".") ?? "";
    throw new StateCorruptError(
      this.where,
      `a ${what} answer is malformed at ${path || "top"}: ${r.issues[0].message}`,
    );
  }

  #kv(kv: v.InferOutput<typeof KV>): EtcdKv {
    let key: string, value: Uint8Array;
    try {
      key = new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.fromBase64(kv.key));
      value = Uint8Array.fromBase64(kv.value ?? "");
    } catch {
      throw new StateCorruptError(this.where, "a key or value is not base64 of UTF-8");
    }
    return { key, value, createRev: num(kv.create_revision), modRev: num(kv.mod_revision) };
  }
}

function num(s: string | undefined): number {
  const n = Number(s ?? "0");
  if (!Number.isSafeInteger(n)) throw new RangeError(`etcd number ${s} is out of range`);
  return n;
}

async function boundedText(res: Response, where: string): Promise<string> {
  const reader = res.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > MAX_ANSWER_BYTES) {
      await reader.cancel();
      throw new StateCorruptError(where, `an answer is over ${MAX_ANSWER_BYTES} bytes`);
    }
    chunks.push(value);
  }
  const all = new Uint8Array(n);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}
