/** Linux ioctl request encoding (asm-generic/ioctl.h). */

const NRBITS = 8n;
const TYPEBITS = 8n;
const SIZEBITS = 14n;
const NRSHIFT = 0n;
const TYPESHIFT = NRSHIFT + NRBITS;
const SIZESHIFT = TYPESHIFT + TYPEBITS;
const DIRSHIFT = SIZESHIFT + SIZEBITS;
const NONE = 0n;
const WRITE = 1n;
const READ = 2n;

function ioc(dir: bigint, type: number, nr: number, size: number): bigint {
  return (dir << DIRSHIFT) | (BigInt(type) << TYPESHIFT) | (BigInt(nr) << NRSHIFT) |
    (BigInt(size) << SIZESHIFT);
}

/** `_IO(type, nr)`. */
export const io = (type: number, nr: number): bigint => ioc(NONE, type, nr, 0);
/** `_IOR(type, nr, size)`: the kernel writes the argument. */
export const ior = (type: number, nr: number, size: number): bigint => ioc(READ, type, nr, size);
/** `_IOW(type, nr, size)`: the kernel reads the argument. */
export const iow = (type: number, nr: number, size: number): bigint => ioc(WRITE, type, nr, size);
/** `_IOWR(type, nr, size)`. */
export const iowr = (type: number, nr: number, size: number): bigint =>
  ioc(READ | WRITE, type, nr, size);
