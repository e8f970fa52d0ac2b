/**
 * The RPC dispatcher every transport hands its calls to: QUIC streams and the agent's local socket
 * (src/net, src/agent) and a VMM's control socket (src/vmm/control). A transport decodes a call and
 * says how to reach its caller; the dispatcher finds the method, runs its handler with the caller's
 * context, enforces the deadline, cancels on request, carries DATA both ways and turns whatever the
 * handler throws into a typed error for the wire. It knows no wire format, so it sits below vmm.
 */
import { rejectOnAbort } from "./deadline.ts";
import { RpcError, toWireError, type WireError } from "./errors.ts";
import { Inbox } from "./inbox.ts";
import type { AccessPolicy, CallerRole } from "./roles.ts";

/** Who is calling, as the transport established it. */
export interface Caller {
  /** The authenticated peer's host name ("local" on the unix sockets). */
  peer: string;
  /** The role its certificate carries, or `root` on a root-only unix socket of this host. */
  role: CallerRole;
  /** The transport the call came in on. */
  via: "quic" | "local" | "control";
}

/** What a handler gets besides its arguments: its caller, and the call's signal and streams. */
export interface RpcContext extends Caller {
  /** Aborted when the caller cancels, goes away or the deadline passes. */
  signal: AbortSignal;
  /** Sends an interim progress message. */
  progress: (p: unknown) => void;
  /** DATA the caller sends with this call, until it ends its upload. */
  data: AsyncIterable<Uint8Array>;
  /** Sends DATA to the caller; resolves when the transport took it (backpressure). */
  send: (bytes: Uint8Array) => Promise<void>;
}

/** A method handler. */
export type RpcHandler = (args: Record<string, unknown>, ctx: RpcContext) => Promise<unknown>;

/** One call as a transport decoded it. */
export interface IncomingCall {
  /** Method name. */
  method: string;
  /** Arguments. */
  args: Record<string, unknown>;
  /** Milliseconds the handler may take; without one it may take as long as it needs. */
  deadlineMs?: number;
}

/** How the dispatcher reaches the caller of one call; the transport implements it. */
export interface CallPort {
  /** Sends a progress message (best effort: a caller that left misses it). */
  progress(p: unknown): void;
  /** Sends DATA; rejects when the transport cannot carry it. */
  send(bytes: Uint8Array): Promise<void>;
}

/** How a call ended, ready for the wire. */
export type CallOutcome = { ok: true; result: unknown } | { ok: false; error: WireError };

/** The longest deadline a caller may set, and longer ones for channels that live as long as their use. */
export interface DeadlineCap {
  /** Milliseconds; a longer deadline is cut to this. */
  maxMs: number;
  /** Methods with a cap of their own (a page channel, a console). */
  longer?: Readonly<Record<string, number>>;
}

/** Refusals of callers whose role may not call a method, as the dispatcher reports them. */
export type RefusalLog = (refusal: { method: string; peer: string; role: CallerRole }) => void;

/**
 * Runs calls against one method table; the table is read at each call, so it may grow later. With
 * an access policy, a caller that is not root must hold one of the roles its method lists.
 */
export class Dispatcher {
  readonly #handlers: Record<string, RpcHandler>;
  readonly #access?: AccessPolicy;
  readonly #onRefusal?: RefusalLog;
  readonly #cap?: DeadlineCap;

  constructor(
    handlers: Record<string, RpcHandler>,
    access?: AccessPolicy,
    onRefusal?: RefusalLog,
    cap?: DeadlineCap,
  ) {
    this.#handlers = handlers;
    this.#access = access;
    this.#onRefusal = onRefusal;
    this.#cap = cap;
  }

  /** Starts `call` from `caller`; the transport feeds it DATA and cancellation, then sends its outcome. */
  open(call: IncomingCall, caller: Caller, port: CallPort): OpenCall {
    const cap = this.#cap &&
      (Object.hasOwn(this.#cap.longer ?? {}, call.method)
        ? this.#cap.longer![call.method]
        : this.#cap.maxMs);
    // A deadline holds the call's handler and its connection's call slot; a peer may not hold them for days.
    if (cap !== undefined && (call.deadlineMs === undefined || call.deadlineMs > cap)) {
      call = { ...call, deadlineMs: cap };
    }
    return new OpenCall(
      call,
      caller,
      port,
      (args, ctx) => this.#handlerFor(call.method, caller)(args, ctx),
    );
  }

  /**
   * The handler of `method` for `caller`. Every call of every transport passes here before a
   * handler runs, so this is where a caller's role is checked.
   */
  #handlerFor(method: string, caller: Caller): RpcHandler {
    const h = Object.hasOwn(this.#handlers, method) ? this.#handlers[method] : undefined;
    if (!h) throw new RpcError("unknown-method", `unknown method "${method}"`);
    if (this.#access && caller.role !== "root") {
      const may = Object.hasOwn(this.#access, method) ? this.#access[method] : [];
      if (!may.includes(caller.role)) {
        this.#onRefusal?.({ method, peer: caller.peer, role: caller.role });
        throw new RpcError(
          "permission-denied",
          may.length === 0
            ? `${method}: ${caller.peer} (role ${caller.role}) may not call it: no role may over the network`
            : `${method}: ${caller.peer} (role ${caller.role}) may not call it: it needs role ${
              may.join(" or ")
            }`,
        );
      }
    }
    return h;
  }
}

/** A call under way: what its caller sends goes in here, and `outcome` says how it ended. */
export class OpenCall {
  readonly #abort = new AbortController();
  readonly #inbox = new Inbox();
  #settled = false;
  /** How the call ended; never rejects. */
  readonly outcome: Promise<CallOutcome>;

  constructor(call: IncomingCall, caller: Caller, port: CallPort, handler: RpcHandler) {
    this.outcome = this.#run(call, {
      ...caller,
      signal: this.#abort.signal,
      progress: (p) => port.progress(p),
      data: this.#inbox,
      send: (b) => port.send(b),
    }, handler);
  }

  /** True once the call has ended. */
  get settled(): boolean {
    return this.#settled;
  }

  /**
   * A DATA chunk from the caller; resolves once the handler's inbox has room for it, which a
   * transport awaits before it reads the next frame (backpressure to the caller). Once the call
   * has ended, it is dropped.
   */
  data(chunk: Uint8Array): Promise<void> {
    return this.#settled ? Promise.resolve() : this.#inbox.push(chunk);
  }

  /** The caller has sent all its DATA. */
  endOfData(): void {
    this.#inbox.end();
  }

  /** Stops the call with `reason`: the caller cancelled or left, or the deadline passed. */
  cancel(reason: RpcError): void {
    this.#inbox.end(reason);
    this.#abort.abort(reason);
  }

  async #run(call: IncomingCall, ctx: RpcContext, handler: RpcHandler): Promise<CallOutcome> {
    const timer = call.deadlineMs === undefined ? undefined : setTimeout(
      () =>
        this.cancel(
          new RpcError("deadline-exceeded", `${call.method} timed out after ${call.deadlineMs} ms`),
        ),
      call.deadlineMs,
    );
    try {
      const result = await Promise.race([
        (async () => await handler(call.args, ctx))(),
        rejectOnAbort(ctx.signal),
      ]);
      return { ok: true, result };
    } catch (e) {
      return { ok: false, error: toWireError(e) };
    } finally {
      clearTimeout(timer);
      this.#settled = true;
      this.#inbox.end();
      // Nobody reads the call's DATA any more: a transport waiting for room goes on.
      this.#inbox.discard();
      // Tells a handler still running (one that lost the race) that nobody waits for it any more.
      this.#abort.abort();
    }
  }
}
