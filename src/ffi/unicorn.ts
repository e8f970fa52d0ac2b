/**
 * Thin bindings to Debian's libunicorn2 (QEMU's TCG as a library, 2.0.1): one method per API call
 * the emulated CPU uses, register ids and structs checked against unicorn/x86.h by
 * tests/ffi_unicorn_test.ts. Every failing call throws {@link UnicornError}.
 */
import { struct, u16, u32, u64 } from "./struct.ts";

/** The library file this binds (Debian package libunicorn2). */
export const UNICORN_LIBRARY = "libunicorn.so.2";

const SYMBOLS = {
  uc_version: { parameters: ["buffer", "buffer"], result: "u32" },
  uc_open: { parameters: ["u32", "u32", "buffer"], result: "u32" },
  uc_close: { parameters: ["pointer"], result: "u32" },
  uc_strerror: { parameters: ["u32"], result: "pointer" },
  uc_mem_map: { parameters: ["pointer", "u64", "usize", "u32"], result: "u32" },
  uc_mem_map_ptr: { parameters: ["pointer", "u64", "usize", "u32", "pointer"], result: "u32" },
  uc_mem_write: { parameters: ["pointer", "u64", "buffer", "usize"], result: "u32" },
  uc_emu_start: { parameters: ["pointer", "u64", "u64", "u64", "usize"], result: "u32" },
  uc_emu_stop: { parameters: ["pointer"], result: "u32" },
  uc_reg_read: { parameters: ["pointer", "i32", "buffer"], result: "u32" },
  uc_reg_write: { parameters: ["pointer", "i32", "buffer"], result: "u32" },
  uc_context_alloc: { parameters: ["pointer", "buffer"], result: "u32" },
  uc_context_save: { parameters: ["pointer", "pointer"], result: "u32" },
  uc_context_restore: { parameters: ["pointer", "pointer"], result: "u32" },
  uc_context_free: { parameters: ["pointer"], result: "u32" },
} as const satisfies Deno.ForeignLibraryInterface;

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

/** Loads libunicorn once per thread; throws {@link UnicornMissingError} naming the package. */
function unicorn(): Deno.DynamicLibrary<typeof SYMBOLS>["symbols"] {
  if (!lib) {
    try {
      lib = Deno.dlopen(UNICORN_LIBRARY, SYMBOLS);
    } catch (e) {
      throw new UnicornMissingError((e as Error).message);
    }
  }
  return lib.symbols;
}

/** libunicorn2 is not installed (or does not load). */
export class UnicornMissingError extends Error {
  constructor(detail: string) {
    super(
      `the emulated CPU needs ${UNICORN_LIBRARY} (${
        detail.split("\n")[0]
      }); install Debian's libunicorn2 (apt-get install libunicorn2)`,
    );
    this.name = "UnicornMissingError";
  }
}

/** A Unicorn call failed. */
export class UnicornError extends Error {
  constructor(
    /** The failing call, e.g. `uc_emu_start`. */
    readonly call: string,
    /** The `uc_err` code. */
    readonly code: number,
  ) {
    super(`${call}: ${ucStrerror(code)} (uc_err ${code})`);
    this.name = "UnicornError";
  }
}

/** `uc_err` values the emulated CPU reacts to. */
export const UC_ERR = {
  OK: 0,
  READ_UNMAPPED: 6,
  WRITE_UNMAPPED: 7,
  FETCH_UNMAPPED: 8,
  INSN_INVALID: 10,
  EXCEPTION: 21,
} as const;

/** `uc_arch` / `uc_mode` values. */
export const UC_ARCH_X86 = 4;
/** 64-bit x86. */
export const UC_MODE_64 = 8;

/** `uc_prot` bits. */
export const UC_PROT = { READ: 1, WRITE: 2, EXEC: 4, ALL: 7 } as const;

/** `uc_x86_reg` ids of the registers the emulated CPU saves and restores. */
export const X86_REG = {
  RAX: 35,
  RBX: 37,
  RCX: 38,
  RDX: 40,
  RSI: 43,
  RDI: 39,
  RSP: 44,
  RBP: 36,
  R8: 106,
  R9: 107,
  R10: 108,
  R11: 109,
  R12: 110,
  R13: 111,
  R14: 112,
  R15: 113,
  RIP: 41,
  RFLAGS: 253,
  CS: 11,
  DS: 17,
  ES: 28,
  FS: 32,
  GS: 33,
  SS: 49,
  CR0: 50,
  CR2: 52,
  CR3: 53,
  CR4: 54,
  CR8: 58,
  IDTR: 242,
  GDTR: 243,
  LDTR: 244,
  TR: 245,
  MSR: 248,
  FS_BASE: 250,
  GS_BASE: 251,
} as const;

/** `uc_x86_mmr`: a descriptor-table or system-segment register. */
export const ucX86Mmr = struct("uc_x86_mmr", { selector: u16, base: u64, limit: u32, flags: u32 });
/** `uc_x86_msr`: one model-specific register. */
export const ucX86Msr = struct("uc_x86_msr", { rid: u32, value: u64 });

/** The message for a `uc_err` code. */
export function ucStrerror(code: number): string {
  const p = unicorn().uc_strerror(code);
  return p ? Deno.UnsafePointerView.getCString(p) : `uc_err ${code}`;
}

/** The library's version as [major, minor]. */
export function ucVersion(): [number, number] {
  const major = new Uint32Array(1), minor = new Uint32Array(1);
  unicorn().uc_version(major, minor);
  return [major[0], minor[0]];
}

function check(call: string, code: number): void {
  if (code !== UC_ERR.OK) throw new UnicornError(call, code);
}

/** One Unicorn engine (one emulated x86-64 CPU). */
export class UnicornEngine {
  #uc: Deno.PointerObject;
  #scratch = new BigUint64Array(1);
  #bytes = new Uint8Array(this.#scratch.buffer);

  private constructor(uc: Deno.PointerObject) {
    this.#uc = uc;
  }

  /** `uc_open(UC_ARCH_X86, UC_MODE_64)`. */
  static open(): UnicornEngine {
    const out = new BigUint64Array(1);
    check("uc_open", unicorn().uc_open(UC_ARCH_X86, UC_MODE_64, new Uint8Array(out.buffer)));
    return new UnicornEngine(Deno.UnsafePointer.create(out[0])!);
  }

  /** The `uc_engine*`, for the shim. */
  get handle(): Deno.PointerObject {
    return this.#uc;
  }

  /** `uc_mem_map_ptr`: guest-physical [addr, addr+size) backed by host memory at `host`. */
  mapPtr(addr: bigint, size: number, prot: number, host: Deno.PointerObject): void {
    check("uc_mem_map_ptr", unicorn().uc_mem_map_ptr(this.#uc, addr, BigInt(size), prot, host));
  }

  /** `uc_mem_map`: engine-owned memory. */
  map(addr: bigint, size: number, prot: number): void {
    check("uc_mem_map", unicorn().uc_mem_map(this.#uc, addr, BigInt(size), prot));
  }

  /** `uc_mem_write`. */
  write(addr: bigint, bytes: Uint8Array<ArrayBuffer>): void {
    check("uc_mem_write", unicorn().uc_mem_write(this.#uc, addr, bytes, BigInt(bytes.length)));
  }

  /** `uc_emu_start(begin, until, 0, 0)`: returns the `uc_err` code (0 when a hook stopped it). */
  start(begin: bigint, until: bigint): number {
    return unicorn().uc_emu_start(this.#uc, begin, until, 0n, 0n);
  }

  /** A 64-bit register. */
  reg(id: number): bigint {
    // Segment selectors are written as 16 bits: clear what a wider earlier read left behind.
    this.#scratch[0] = 0n;
    check("uc_reg_read", unicorn().uc_reg_read(this.#uc, id, this.#bytes));
    return this.#scratch[0];
  }

  /** Sets a 64-bit register. */
  setReg(id: number, value: bigint): void {
    this.#scratch[0] = BigInt.asUintN(64, value);
    check("uc_reg_write", unicorn().uc_reg_write(this.#uc, id, this.#bytes));
  }

  /** A descriptor-table or system-segment register. */
  mmr(id: number): { selector: number; base: bigint; limit: number; flags: number } {
    const buf = new Uint8Array(ucX86Mmr.size);
    check("uc_reg_read", unicorn().uc_reg_read(this.#uc, id, buf));
    return ucX86Mmr.decode(buf);
  }

  /** Sets a descriptor-table or system-segment register. */
  setMmr(id: number, v: { selector: number; base: bigint; limit: number; flags: number }): void {
    check("uc_reg_write", unicorn().uc_reg_write(this.#uc, id, ucX86Mmr.encode(v)));
  }

  /** An MSR. */
  msr(index: number): bigint {
    const buf = ucX86Msr.encode({ rid: index, value: 0n });
    check("uc_reg_read", unicorn().uc_reg_read(this.#uc, X86_REG.MSR, buf));
    return ucX86Msr.decode(buf).value;
  }

  /** Sets an MSR. */
  setMsr(index: number, value: bigint): void {
    const buf = ucX86Msr.encode({ rid: index, value });
    check("uc_reg_write", unicorn().uc_reg_write(this.#uc, X86_REG.MSR, buf));
  }

  /** Saves the whole CPU context (hidden segment state and CPL included) into a new context. */
  saveContext(): UnicornContext {
    const out = new BigUint64Array(1);
    check(
      "uc_context_alloc",
      unicorn().uc_context_alloc(this.#uc, new Uint8Array(out.buffer)),
    );
    const ctx = Deno.UnsafePointer.create(out[0])!;
    check("uc_context_save", unicorn().uc_context_save(this.#uc, ctx));
    return new UnicornContext(ctx);
  }

  /** Restores a context saved from this engine. */
  restoreContext(ctx: UnicornContext): void {
    check("uc_context_restore", unicorn().uc_context_restore(this.#uc, ctx.handle));
  }

  /** `uc_close`. */
  close(): void {
    unicorn().uc_close(this.#uc);
  }
}

/** A saved `uc_context`. */
export class UnicornContext {
  /** The `uc_context*`. */
  readonly handle: Deno.PointerObject;

  constructor(handle: Deno.PointerObject) {
    this.handle = handle;
  }

  /** `uc_context_free`. */
  free(): void {
    unicorn().uc_context_free(this.handle);
  }
}
