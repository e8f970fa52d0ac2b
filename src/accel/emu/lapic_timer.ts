/**
 * The emulated CPU's local APIC timer: the neutral LAPIC page's LVT timer, initial count and divide
 * configuration turned into deadlines on the shim's monotonic clock, and the current count
 * written back when the state is saved. One-shot and periodic modes; TSC-deadline is not offered.
 */
import { LAPIC_BUS_HZ, LAPIC_REG } from "../cpu_state.ts";

const NS_PER_COUNT = 1e9 / LAPIC_BUS_HZ;
const LVT_MASKED = 1 << 16;
const LVT_PERIODIC = 1 << 17;
const SVR_ENABLED = 1 << 8;

/** The timer's divisor for a divide-configuration register value. */
export function timerDivisor(divideConfig: number): number {
  const v = (divideConfig & 3) | ((divideConfig & 8) >> 1);
  return v === 7 ? 1 : 2 << v;
}

/** One vCPU's LAPIC timer over its register page. */
export class LapicTimer {
  #page: DataView;
  #deadline = 0n;
  #pending = false;

  /** `page` is the live LAPIC register page (the shim's, which the guest writes through MMIO). */
  constructor(page: Uint8Array) {
    this.#page = new DataView(page.buffer, page.byteOffset, page.byteLength);
  }

  #reg(off: number): number {
    return this.#page.getUint32(off, true);
  }

  /** The vector to deliver, or undefined when the timer is masked or the APIC disabled. */
  get vector(): number | undefined {
    const lvt = this.#reg(LAPIC_REG.LVT_TIMER);
    if (lvt & LVT_MASKED || !(this.#reg(LAPIC_REG.SVR) & SVR_ENABLED)) return undefined;
    return lvt & 0xff;
  }

  #periodNs(): bigint {
    const count = this.#reg(LAPIC_REG.TIMER_INITIAL);
    return BigInt(
      Math.round(count * timerDivisor(this.#reg(LAPIC_REG.TIMER_DIVIDE)) * NS_PER_COUNT),
    );
  }

  /** Arms the timer from the page: the first expiry after the current count (or a full period). */
  arm(nowNs: bigint): void {
    const period = this.#periodNs();
    if (period === 0n || this.vector === undefined) {
      this.#deadline = 0n;
      return;
    }
    const current = this.#reg(LAPIC_REG.TIMER_CURRENT);
    const left = current > 0
      ? BigInt(
        Math.round(current * timerDivisor(this.#reg(LAPIC_REG.TIMER_DIVIDE)) * NS_PER_COUNT),
      )
      : period;
    this.#deadline = nowNs + (left < period ? left : period);
  }

  /** The next deadline for the shim (0: none). */
  get deadline(): bigint {
    return this.#deadline;
  }

  /** True while a tick waits for the guest to accept interrupts. */
  get pending(): boolean {
    return this.#pending;
  }

  /** Notes an expiry if the deadline has passed; re-arms a periodic timer without catching up. */
  poll(nowNs: bigint): void {
    if (this.#deadline === 0n || nowNs < this.#deadline) return;
    this.#pending = this.vector !== undefined;
    const lvt = this.#reg(LAPIC_REG.LVT_TIMER);
    const period = this.#periodNs();
    if (lvt & LVT_PERIODIC && period > 0n) {
      const next = this.#deadline + period;
      this.#deadline = next > nowNs ? next : nowNs + period;
    } else {
      this.#deadline = 0n;
    }
  }

  /** The pending tick was delivered. */
  delivered(): void {
    this.#pending = false;
  }

  /** Writes the current count into the page, as a saved state carries it. */
  saveCurrentCount(nowNs: bigint): void {
    let count = 0;
    if (this.#deadline > nowNs) {
      const divisor = timerDivisor(this.#reg(LAPIC_REG.TIMER_DIVIDE));
      count = Math.min(
        Math.floor(Number(this.#deadline - nowNs) / (divisor * NS_PER_COUNT)),
        this.#reg(LAPIC_REG.TIMER_INITIAL),
      );
    }
    this.#page.setUint32(LAPIC_REG.TIMER_CURRENT, count, true);
  }
}
