/** Port-I/O devices and the bus that routes guest port accesses to them. */
import type { Persist } from "../../codec/persist.ts";

/** A device on the port-I/O bus. */
export interface PioDevice extends Persist<unknown> {
  /** Name, unique on the bus; keys the device's saved state. */
  readonly name: string;
  /** Port ranges as [first, count]. */
  readonly ports: ReadonlyArray<readonly [number, number]>;
  /** A guest IN of `size` bytes (1, 2 or 4) at `port`. */
  read(port: number, size: number): number;
  /** A guest OUT of `size` bytes at `port`. */
  write(port: number, size: number, value: number): void;
}

/** Routes port accesses to devices; unclaimed ports read as all ones and ignore writes. */
export class PioBus {
  private readonly byPort = new Map<number, PioDevice>();
  private readonly list: PioDevice[] = [];

  /** Adds a device; throws if one of its ports is taken. */
  add(dev: PioDevice): void {
    for (const [first, count] of dev.ports) {
      for (let p = first; p < first + count; p++) {
        const other = this.byPort.get(p);
        if (other) {
          throw new Error(`port 0x${p.toString(16)} claimed by ${other.name} and ${dev.name}`);
        }
        this.byPort.set(p, dev);
      }
    }
    this.list.push(dev);
  }

  /** Every port some device claims (the vCPU loop ignores the rest without a round trip). */
  claimedPorts(): number[] {
    return [...this.byPort.keys()].sort((a, b) => a - b);
  }

  /** A guest IN. */
  read(port: number, size: number): number {
    const dev = this.byPort.get(port);
    return dev ? dev.read(port, size) : (size === 4 ? 0xffffffff : (1 << (8 * size)) - 1);
  }

  /** A guest OUT. */
  write(port: number, size: number, value: number): void {
    this.byPort.get(port)?.write(port, size, value);
  }

  /** The device of that name. */
  get(name: string): PioDevice | undefined {
    return this.list.find((d) => d.name === name);
  }

  /** Every device's state by name. */
  save(): Record<string, unknown> {
    return Object.fromEntries(this.list.map((d) => [d.name, d.save()]));
  }
}
