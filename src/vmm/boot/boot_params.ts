/**
 * The x86 "zero page" (`struct boot_params`, asm/bootparam.h) and its embedded `struct setup_header`
 * as one table of byte offsets and widths. Offsets are absolute within boot_params, which is also
 * where the setup header sits in a bzImage file, so one table serves both. Every offset and width
 * is checked against the installed kernel headers by tests/boot_linux_test.ts.
 */

/** The width of a little-endian unsigned field in bytes. */
export type FieldWidth = 1 | 2 | 4 | 8;

/** One field: its offset in boot_params (and in the bzImage file) and its width. */
export interface Field<W extends FieldWidth = FieldWidth> {
  /** Byte offset from the start of boot_params. */
  readonly offset: number;
  /** Width in bytes. */
  readonly width: W;
}

const field = <W extends FieldWidth>(offset: number, width: W): Field<W> => ({ offset, width });

/** `struct boot_params` fields the loader sets, named as in bootparam.h. */
export const BOOT_PARAMS = {
  /** `__u32 ext_ramdisk_image`: bits 63..32 of the initrd address. */
  ext_ramdisk_image: field(0x0c0, 4),
  /** `__u32 ext_ramdisk_size`: bits 63..32 of the initrd size. */
  ext_ramdisk_size: field(0x0c4, 4),
  /** `__u32 ext_cmd_line_ptr`: bits 63..32 of the command line address. */
  ext_cmd_line_ptr: field(0x0c8, 4),
  /** `__u8 e820_entries`: how many entries of e820_table are valid. */
  e820_entries: field(0x1e8, 1),
  /** `__u8 sentinel`: 0xff in the image; nonzero here tells the kernel the loader copied too much. */
  sentinel: field(0x1ef, 1),
} as const;

/** `struct setup_header` fields (`boot_params.hdr`, at 0x1f1), named as in bootparam.h. */
export const SETUP_HEADER = {
  /** `__u8 setup_sects`: size of the real-mode setup in 512-byte sectors; 0 means 4. */
  setup_sects: field(0x1f1, 1),
  /** `__u32 syssize`: size of the protected-mode code in 16-byte paragraphs. */
  syssize: field(0x1f4, 4),
  /** `__u16 boot_flag`: 0xaa55. */
  boot_flag: field(0x1fe, 2),
  /** `__u16 jump`: a short jump whose displacement byte (at 0x201) gives the header's length. */
  jump: field(0x200, 2),
  /** `__u32 header`: the magic "HdrS". */
  header: field(0x202, 4),
  /** `__u16 version`: boot protocol version, major in the high byte. */
  version: field(0x206, 2),
  /** `__u16 kernel_version`: offset of the version string, minus 0x200. */
  kernel_version: field(0x20e, 2),
  /** `__u8 type_of_loader`: the loader's id; 0xff is "undefined". */
  type_of_loader: field(0x210, 1),
  /** `__u8 loadflags`: LOADED_HIGH, CAN_USE_HEAP, ... */
  loadflags: field(0x211, 1),
  /** `__u32 code32_start`: the 32-bit entry; a loader that moves the kernel points it there. */
  code32_start: field(0x214, 4),
  /** `__u32 ramdisk_image`: initrd address, bits 31..0. */
  ramdisk_image: field(0x218, 4),
  /** `__u32 ramdisk_size`: initrd size, bits 31..0. */
  ramdisk_size: field(0x21c, 4),
  /** `__u16 heap_end_ptr`: end of the setup heap, relative to the real-mode code, minus 0x200. */
  heap_end_ptr: field(0x224, 2),
  /** `__u8 ext_loader_ver`: extended loader version. */
  ext_loader_ver: field(0x226, 1),
  /** `__u8 ext_loader_type`: extended loader type. */
  ext_loader_type: field(0x227, 1),
  /** `__u32 cmd_line_ptr`: command line address, bits 31..0. */
  cmd_line_ptr: field(0x228, 4),
  /** `__u32 initrd_addr_max`: highest address the initrd's last byte may occupy. */
  initrd_addr_max: field(0x22c, 4),
  /** `__u32 kernel_alignment`: alignment a relocatable kernel needs at run time. */
  kernel_alignment: field(0x230, 4),
  /** `__u8 relocatable_kernel`: nonzero if the kernel may be loaded anywhere aligned. */
  relocatable_kernel: field(0x234, 1),
  /** `__u8 min_alignment`: log2 of the smallest alignment the kernel accepts. */
  min_alignment: field(0x235, 1),
  /** `__u16 xloadflags`: XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G, ... */
  xloadflags: field(0x236, 2),
  /** `__u32 cmdline_size`: longest command line, without its terminating NUL. */
  cmdline_size: field(0x238, 4),
  /** `__u32 hardware_subarch`: 0 for a PC. */
  hardware_subarch: field(0x23c, 4),
  /** `__u32 payload_offset`: where the compressed kernel starts, from the protected-mode code. */
  payload_offset: field(0x248, 4),
  /** `__u32 payload_length`: bytes of the compressed kernel (with any trailing size word). */
  payload_length: field(0x24c, 4),
  /** `__u64 setup_data`: physical address of a linked list of `struct setup_data`. */
  setup_data: field(0x250, 8),
  /** `__u64 pref_address`: preferred load address (CONFIG_PHYSICAL_START). */
  pref_address: field(0x258, 8),
  /** `__u32 init_size`: memory the kernel needs from its run-time start before it reads e820. */
  init_size: field(0x260, 4),
} as const;

/** Offset of `struct setup_header hdr` in boot_params (and in the image). */
export const SETUP_HEADER_OFFSET = 0x1f1;
/** Offset of `edd_mbr_sig_buffer`, the first field after the setup header's padding. */
export const SETUP_HEADER_LIMIT = 0x290;
/** `sizeof(struct boot_params)`: the zero page. */
export const BOOT_PARAMS_SIZE = 0x1000;

/**
 * `struct boot_e820_entry e820_table[E820_MAX_ENTRIES_ZEROPAGE]` at 0x2d0; each entry is
 * `__u64 addr; __u64 size; __u32 type;`, packed.
 */
export const E820_TABLE = {
  offset: 0x2d0,
  maxEntries: 128,
  entrySize: 20,
  addr: 0,
  size: 8,
  type: 16,
} as const;
/** e820 region types (`enum e820_type`). */
export const E820_TYPE = { RAM: 1, RESERVED: 2 } as const;

/** `loadflags` bits. */
export const LOADFLAGS = { LOADED_HIGH: 1 << 0, KASLR_FLAG: 1 << 1, CAN_USE_HEAP: 1 << 7 } as const;
/** `xloadflags` bits. */
export const XLOADFLAGS = { XLF_KERNEL_64: 1 << 0, XLF_CAN_BE_LOADED_ABOVE_4G: 1 << 1 } as const;
/** "HdrS", the value of `header` read as a little-endian u32. */
export const HDRS_MAGIC = 0x53726448;
/** `boot_flag`'s value. */
export const BOOT_FLAG_MAGIC = 0xaa55;

/** Reads a field of width 1, 2 or 4. */
export function readField(dv: DataView, f: Field<1 | 2 | 4>): number {
  if (f.width === 1) return dv.getUint8(f.offset);
  if (f.width === 2) return dv.getUint16(f.offset, true);
  return dv.getUint32(f.offset, true);
}

/** Writes a field of width 1, 2 or 4; throws if `value` does not fit. */
export function writeField(dv: DataView, f: Field<1 | 2 | 4>, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** (8 * f.width)) {
    throw new RangeError(
      `${value} does not fit in a ${f.width}-byte field at 0x${f.offset.toString(16)}`,
    );
  }
  if (f.width === 1) dv.setUint8(f.offset, value);
  else if (f.width === 2) dv.setUint16(f.offset, value, true);
  else dv.setUint32(f.offset, value, true);
}

/** Reads a 64-bit field. */
export function readField64(dv: DataView, f: Field<8>): bigint {
  return dv.getBigUint64(f.offset, true);
}

/** Writes a 64-bit field. */
export function writeField64(dv: DataView, f: Field<8>, value: bigint): void {
  dv.setBigUint64(f.offset, value, true);
}
