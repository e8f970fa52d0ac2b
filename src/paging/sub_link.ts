/**
 * Main's link to one sub-host's page store: an authenticated QUIC connection to its agent and one
 * long-lived `pages.channel` stream on which page requests are pipelined (a new stream per request
 * would cost a stream setup per fault). A link that fails rejects everything in flight with
 * SubHostDownError; `reconnect` brings it back, and then sends again the releases it may have missed.
 */
import { getLogger } from "@logtape/logtape";
import { Inbox } from "../rpc/inbox.ts";
import type { Identity } from "../net/identity.ts";
import { RpcClient } from "../net/quic.ts";
import { RpcError } from "../rpc/errors.ts";
import { gather } from "../net/chunks.ts";
import { PageStoreError } from "./page_store.ts";
import { ReleaseQueue } from "./release_queue.ts";
import { decodePageReply, encodePageRequest, PageOp } from "./wire.ts";
import { sleep } from "../rpc/deadline.ts";

/** A sub-host cannot be reached; its pages cannot be served until it is back. */
export class SubHostDownError extends Error {
  constructor(readonly addr: string, readonly reason: string) {
    super(`sub-host ${addr} is unreachable: ${reason}`);
    this.name = "SubHostDownError";
  }
}

/** A request that gets no reply in this long marks the sub-host down. */
const REQUEST_TIMEOUT_MS = 20_000;
/** Between two attempts to reach a sub-host that is down. */
const RECONNECT_MS = 500;

const log = getLogger(["dcres", "paging"]);

interface Pending {
  seq: number;
  resolve: (data: Uint8Array | undefined) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** One connection with one page channel on it; requests are pipelined and answered in order. */
class Channel {
  private readonly inbox = new Inbox();
  private pending: Pending[] = [];
  private seq = 0;

  constructor(
    private readonly client: RpcClient,
    vm: string,
    pages: number,
    private readonly onFail: (reason: string) => void,
  ) {
    void client.call("pages.channel", { vm, pages }, {
      deadlineMs: 24 * 3600_000,
      upload: this.inbox,
      onData: (b) => this.onReply(b),
    }).then(
      () => onFail("the page channel ended"),
      (e) => onFail((e as Error).message),
    );
  }

  private onReply(b: Uint8Array) {
    const r = decodePageReply(b);
    const p = this.pending.shift();
    if (!p || p.seq !== r.seq) return this.onFail(`page reply ${r.seq} out of order`);
    clearTimeout(p.timer);
    if (r.error !== undefined) p.reject(new PageStoreError(r.error));
    else p.resolve(r.data);
  }

  request(op: PageOp, gfns: Uint32Array, data?: Uint8Array): Promise<Uint8Array | undefined> {
    const seq = ++this.seq >>> 0;
    const msg = encodePageRequest({ op, seq, gfns, data });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.onFail(`no reply within ${REQUEST_TIMEOUT_MS} ms`),
        REQUEST_TIMEOUT_MS,
      );
      this.pending.push({ seq, resolve, reject, timer });
      // Requests queue in order; the ones in flight are bounded by the callers, not by waiting here.
      void this.inbox.push(msg);
    });
  }

  /** Fails everything in flight with `e` and closes the connection. */
  close(e: Error) {
    const pending = this.pending;
    this.pending = [];
    this.inbox.end();
    this.client.close();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(e);
    }
  }
}

/**
 * One sub-host as main sees it: an urgent channel for the pages a vCPU waits on and a bulk channel
 * for read-ahead and page-outs, on separate connections, so a fault never queues behind megabytes;
 * and the releases main owes it.
 */
export class SubLink {
  private client?: RpcClient;
  private urgent?: Channel;
  private bulk?: Channel;
  private reconnecting = false;
  /** Pages main took over that the sub-host still keeps. */
  readonly releases: ReleaseQueue;
  /** The sub-host's name in its certificate, once connected. */
  host: string;
  /** Why the link is down (undefined while up). */
  down?: string = "not connected yet";
  /** Being replaced: it gets no new pages. */
  draining = false;
  /** Replaced: holds nothing of the VM any more. */
  retired = false;

  constructor(
    /** Host index in the ownership table. */ readonly index: number,
    /** Agent address HOST:PORT. */ readonly addr: string,
    private readonly identity: Identity,
    private readonly vm: string,
    private readonly pages: number,
    /** Counts a request nobody awaits (a release) as in flight until it settles. */
    track: (p: Promise<unknown>) => void,
  ) {
    this.host = addr;
    this.releases = new ReleaseQueue(
      (gfns) => this.request(PageOp.RELEASE, Uint32Array.from(gfns)),
      track,
    );
  }

  private dial(): Promise<RpcClient> {
    return RpcClient.connect(this.addr, this.identity, undefined, {
      keepAliveInterval: 500,
      maxIdleTimeout: 3000,
    });
  }

  /**
   * Connects, opens the VM's store (`hold` starts it afresh with those runs) and the channels;
   * returns how many pages the store holds.
   */
  async connect(hold?: Array<[number, number]>): Promise<number> {
    const [client, other] = await Promise.all([this.dial(), this.dial()]);
    let held: number;
    try {
      const opened = await client.call<{ host: string; heldPages: number }>("pages.open", {
        vm: this.vm,
        pages: this.pages,
        ...(hold ? { hold } : {}),
      }, { deadlineMs: 120_000 });
      this.host = opened.host;
      held = opened.heldPages;
    } catch (e) {
      client.close();
      other.close();
      throw e;
    }
    this.client = client;
    this.down = undefined;
    const onFail = (reason: string) => this.fail(reason);
    this.urgent = new Channel(client, this.vm, this.pages, onFail);
    this.bulk = new Channel(other, this.vm, this.pages, onFail);
    return held;
  }

  /**
   * Connects again every RECONNECT_MS until the link is up or `stopped()`; once it is, sends again
   * the releases not acknowledged and calls `onBack`. A call while another runs does nothing.
   */
  async reconnect(stopped: () => boolean, onBack: () => void): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    try {
      while (!stopped() && this.down) {
        await sleep(RECONNECT_MS);
        try {
          await this.connect();
        } catch {
          // Still down; try again.
        }
      }
      if (stopped()) return;
      log.info("sub-host {host} is back", { host: this.host });
      this.releases.resend();
      onBack();
    } finally {
      this.reconnecting = false;
    }
  }

  /**
   * Checks the link with one round trip, bounded by `ms`: an agent killed and started again leaves
   * the old connection looking up until QUIC's idle timeout, and a call on it fails only then. A
   * link that does not answer is marked down (an answer that is an error still means it is up).
   */
  async probe(ms: number): Promise<void> {
    const client = this.client;
    if (!client) return;
    try {
      await client.call("pages.open", { vm: this.vm, pages: this.pages }, { deadlineMs: ms });
    } catch (e) {
      const answered = e instanceof RpcError && e.code !== "deadline-exceeded" &&
        e.code !== "cancelled";
      if (!answered && this.client === client) this.fail(`no answer: ${(e as Error).message}`);
    }
  }

  /** Marks the link down and fails everything in flight. */
  fail(reason: string): void {
    if (this.down) return;
    this.down = reason;
    const e = new SubHostDownError(this.addr, reason);
    this.urgent?.close(e);
    this.bulk?.close(e);
    this.client = this.urgent = this.bulk = undefined;
  }

  /** Sends one request, on the urgent channel when a vCPU waits for it. */
  async request(
    op: PageOp,
    gfns: Uint32Array,
    opts: { data?: Uint8Array; urgent?: boolean } = {},
  ): Promise<Uint8Array | undefined> {
    const ch = opts.urgent ? this.urgent : this.bulk;
    if (this.down || !ch) throw new SubHostDownError(this.addr, this.down ?? "not connected");
    try {
      return await ch.request(op, gfns, opts.data);
    } catch (e) {
      if (e instanceof PageStoreError) throw new PageStoreError(`${this.host}: ${e.message}`);
      throw e;
    }
  }

  /** Calls `method` of the sub-host's agent about this VM (`vm` and `pages` are added). */
  async call<T>(
    method: string,
    args: Record<string, unknown>,
    opts: { deadlineMs?: number; upload?: AsyncIterable<Uint8Array>; signal?: AbortSignal } = {},
  ): Promise<T> {
    if (!this.client) throw new SubHostDownError(this.addr, this.down ?? "not connected");
    try {
      return await this.client.call<T>(method, { vm: this.vm, pages: this.pages, ...args }, {
        deadlineMs: opts.deadlineMs ?? 600_000,
        upload: opts.upload,
        signal: opts.signal,
      });
    } catch (e) {
      throw new Error(`sub-host ${this.host} (${this.addr}): ${(e as Error).message}`);
    }
  }

  /**
   * The sub-host's bitmap of the pages it holds, as DATA frames: from 32 GiB of guest on it is over
   * the limit of one control frame. An agent that sends it in its reply instead is still understood.
   */
  async held(): Promise<Uint8Array> {
    if (!this.client) throw new SubHostDownError(this.addr, this.down ?? "not connected");
    const parts: Uint8Array[] = [];
    const r = await this.client.call<{ bitmap?: Uint8Array; bytes?: number }>("pages.held", {
      vm: this.vm,
      pages: this.pages,
      data: true,
    }, { onData: (b) => parts.push(b) });
    if (r.bitmap) return r.bitmap;
    const bitmap = await gather(parts);
    if (bitmap.length !== r.bytes || bitmap.length !== Math.ceil(this.pages / 8)) {
      throw new Error(
        `sub-host ${this.host}: held bitmap of ${bitmap.length} bytes, expected ${
          Math.ceil(this.pages / 8)
        }`,
      );
    }
    return bitmap;
  }

  /** Deletes the VM's pages on the sub-host (the VM is gone). */
  async drop(): Promise<void> {
    await this.client?.call("pages.drop", { vm: this.vm }, { deadlineMs: 10_000 }).catch((e) =>
      // Best effort: the VM is gone either way, and a sub-host drops a VM's pages at its next split.
      log.warn("sub-host {host} did not drop the pages of {vm}: {error}", {
        host: this.host,
        vm: this.vm,
        error: (e as Error).message,
      })
    );
  }

  /** Closes the link. */
  close(): void {
    this.fail("closed");
  }
}
