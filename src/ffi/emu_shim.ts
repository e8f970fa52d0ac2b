/**
 * Bindings to the emulated CPU's C shim (src/accel/emu/shim.c): the block, store, port and
 * exception hooks, the timer deadline, the LAPIC page, the dirty-page bytes and copy-on-write.
 */

const SYMBOLS = {
  dcres_emu_now_ns: { parameters: [], result: "u64" },
  dcres_emu_attach: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "function"],
    result: "pointer",
  },
  dcres_emu_detach: { parameters: ["pointer"], result: "void" },
  dcres_emu_set_deadline: { parameters: ["pointer", "u64"], result: "void" },
  dcres_emu_take_exit: { parameters: ["pointer"], result: "u32" },
  dcres_emu_exit_vector: { parameters: ["pointer"], result: "u32" },
  dcres_emu_lapic: { parameters: ["pointer"], result: "pointer" },
  dcres_emu_vm_alloc: { parameters: ["pointer", "u64"], result: "pointer" },
  dcres_emu_vm_free: { parameters: ["pointer"], result: "void" },
  dcres_emu_before_write: { parameters: ["pointer", "u64", "u64"], result: "void" },
  dcres_emu_after_write: { parameters: ["pointer", "u64", "u64"], result: "void" },
  dcres_emu_settle: { parameters: ["pointer"], result: "void" },
  dcres_emu_dirty_harvest: { parameters: ["pointer", "buffer"], result: "u64" },
  dcres_emu_cow_begin: { parameters: ["pointer", "buffer"], result: "pointer" },
  dcres_emu_cow_claim: { parameters: ["pointer", "buffer", "u64", "buffer"], result: "void" },
  dcres_emu_cow_release: { parameters: ["pointer", "buffer", "u64"], result: "void" },
  dcres_emu_cow_copied: { parameters: ["pointer"], result: "u64" },
  dcres_emu_cow_end: { parameters: ["pointer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

/** Why the shim stopped the CPU (`EXIT_*` in shim.c). */
export const EMU_EXIT = { NONE: 0, KICK: 1, TIMER: 2, EXCEPTION: 3, LAPIC: 4 } as const;

/** Guest-physical address of the LAPIC page the shim maps as MMIO. */
export const EMU_LAPIC_BASE = 0xfee00000n;

/** The port-access callback's C signature: (dir 1=out, port, size, value) -> value read. */
export const EMU_IO_CALLBACK = {
  parameters: ["u32", "u32", "u32", "u32"],
  result: "u32",
} as const satisfies Deno.UnsafeCallbackDefinition;

/** The shim's functions, loaded from the library at `path`. */
export type EmuShim = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const loaded = new Map<string, EmuShim>();

/** Loads the shim library built at `path` (once per thread). */
export function loadEmuShim(path: string): EmuShim {
  let s = loaded.get(path);
  if (!s) {
    s = Deno.dlopen(path, SYMBOLS).symbols;
    loaded.set(path, s);
  }
  return s;
}
