/**
 * Owns the VM's KVM dirty log. Every read of the log lands here, so no dirty bit is lost between
 * checkpoints: bits accumulate in `sinceBaseline` until a checkpoint takes them; a checkpoint that
 * fails gives them back; one that commits drops them. Each read also stamps the pages' update
 * history (the epoch they were last seen dirty), which orders saves coldest first.
 */

/** Dirty bits a checkpoint took; handed back to the tracker with `commit` or `abort`. */
export interface DirtyTransaction {
  /** Bits taken: pages written since the previous committed checkpoint. */
  readonly bits: Uint8Array;
}

/** The VM's dirty log, read through one place. */
export class DirtyTracker {
  private sinceBaseline: Uint8Array;
  /** Epoch each page was last seen dirty (0: never since start). */
  readonly lastDirty: Uint32Array;
  private epoch = 0;
  private txn?: { bits: Uint8Array };
  /** Id of the checkpoint the accumulated bits are relative to (undefined: none, since boot). */
  baselineId?: string;
  /** Told of every read of the log (a split VM's checkpoint voids the copies of written pages). */
  onSample?: (bits: Uint8Array) => void;

  constructor(private readonly pages: number, private readonly readLog: () => Uint8Array) {
    this.sinceBaseline = new Uint8Array(Math.ceil(pages / 64) * 8);
    this.lastDirty = new Uint32Array(pages);
  }

  /** Reads (and resets) KVM's log; returns the bits seen now. */
  sample(): Uint8Array {
    const bits = this.readLog();
    this.epoch++;
    const target = this.txn ? this.txn.bits : this.sinceBaseline;
    for (let i = 0; i < bits.length; i++) {
      const b = bits[i];
      if (b === 0) continue;
      target[i] |= b;
      for (let k = 0; k < 8; k++) if (b & (1 << k)) this.lastDirty[i * 8 + k] = this.epoch;
    }
    this.onSample?.(bits);
    return bits;
  }

  /** The current epoch (incremented by every sample). */
  get currentEpoch(): number {
    return this.epoch;
  }

  /** Starts a checkpoint: samples, then takes every bit since the last committed checkpoint. */
  begin(): DirtyTransaction {
    if (this.txn) throw new Error("a checkpoint is already in progress on this VM");
    this.sample();
    this.txn = { bits: this.sinceBaseline };
    this.sinceBaseline = new Uint8Array(this.sinceBaseline.length);
    return this.txn;
  }

  /** Ends a checkpoint's sampling: later samples belong to the next checkpoint. */
  seal(): void {
    if (this.txn) this.sample();
    this.txn = undefined;
  }

  /** The checkpoint committed: its bits are saved, drop them. */
  commit(_t: DirtyTransaction): void {
    this.txn = undefined;
  }

  /** The checkpoint failed: give its bits back so the next one saves those pages. */
  abort(t: DirtyTransaction): void {
    this.txn = undefined;
    for (let i = 0; i < t.bits.length; i++) this.sinceBaseline[i] |= t.bits[i];
  }

  /** Marks every page dirty (after a restore whose baseline is unknown, or to force a full save). */
  markAll(): void {
    this.sinceBaseline.fill(0xff);
  }

  /** Pages set in `bits`, as gfns. */
  static gfns(bits: Uint8Array, pages: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < bits.length; i++) {
      const b = bits[i];
      if (b === 0) continue;
      for (let k = 0; k < 8; k++) if (b & (1 << k) && i * 8 + k < pages) out.push(i * 8 + k);
    }
    return out;
  }
}
