/**
 * The step language of the consistency model (tests/helpers/ledger_model.ts): what one step does,
 * scenarios of checkpoint chains, the generators that pick them, and steps written as words for
 * fixed examples.
 */
import fc from "fast-check";

/** A checkpoint mode. */
export type Mode = "stop" | "precopy" | "cow";

/**
 * One step of the model. A step naming a page acts on the first page at or after it (cyclically)
 * that it can act on, so that (almost) every step does something, a small number keeps coming back
 * to the same few pages, and shrinking keeps steps meaningful. Other numbers pick modulo what is
 * eligible when the step runs.
 */
export type Step =
  | { k: "write"; g: number } // guest write of page g; a fault first, or a wait for its move
  | { k: "sample" } // the dirty log delivers every pending bit
  | { k: "in"; g: number } // main starts paging in a sub-host's page
  | { k: "out"; g: number; to: number } // main starts paging out one of its pages to sub-host 1+to
  | { k: "across"; g: number; to: number } // a page starts moving to another sub-host
  | { k: "end"; i: number } // a move whose source let go completes
  | { k: "fail"; i: number } // a move whose source let go fails: the page stays where it was
  | { k: "release"; i: number } // main sends a queued release of a page it zero-filled
  | { k: "claim"; h: number } // main claims a save round for host h (main saves at once)
  | { k: "request"; i: number } // a sub-host receives its save request (SubSaver.save)
  | { k: "io"; s: number } // sub-host 1+s's oldest fragment write completes
  | { k: "ioerr"; s: number } // ... or fails: the checkpoint aborts
  | { k: "report"; i: number } // a save's report reaches the ledger
  | { k: "rpcerr"; i: number } // a save request or its answer is lost: the checkpoint aborts
  | { k: "mainerr" } // main's next fragment write fails: the checkpoint aborts
  | { k: "host"; g: number } // a sub-host joins and pages start moving to it (between checkpoints)
  | { k: "bad"; g: number; to: number } // the to-th illegal transition of page g must be refused
  | Bounce;

/**
 * The composite step "leave and return within one request": page g's sub-host h is asked to save
 * (`ask`: its request arrives before the page leaves, or after, finding it away; or no round),
 * completes `pre` fragment writes, then the page leaves (paged in, or moved to another sub-host),
 * `mid` writes complete, the move ends, on main it is written if `write`, and it goes back to h
 * while the request may still be under way. A page on main is paged out to a sub-host first. Run
 * as the primitive steps it resolves to, which the trace lists as words.
 */
export interface Bounce {
  k: "bounce";
  g: number;
  via: "in" | "across";
  ask: "before" | "after" | "none";
  pre: number;
  mid: number;
  write: boolean;
}

/** Relative weights of the step kinds. */
export type Bias = Record<Step["k"], number>;

/** The step mix of the random runs. */
export const EVEN: Bias = {
  write: 24,
  sample: 12,
  in: 16,
  out: 16,
  across: 8,
  end: 24,
  fail: 4,
  release: 8,
  claim: 12,
  request: 12,
  io: 16,
  ioerr: 1,
  report: 16,
  rpcerr: 1,
  mainerr: 1,
  host: 0,
  bad: 2,
  bounce: 12,
};

/** The mix of the original model: no failures, no composite steps (the planted-rule searches). */
export const PLAIN: Bias = { ...EVEN, fail: 0, ioerr: 0, rpcerr: 0, mainerr: 0, bounce: 0 };

/** Between checkpoints: no saves; sub-hosts join. */
export const BETWEEN: Bias = { ...EVEN, host: 4, ioerr: 0, rpcerr: 0, mainerr: 0 };

/** One generation of a chain: how it is taken and what runs before and during it. */
export interface GenPlan {
  mode: Mode;
  /** A full checkpoint (the first one always is); otherwise an incremental on the last committed. */
  full: boolean;
  /** The chain so far is merged (squashed, one fragment per host) before this generation. */
  merge: boolean;
  /** Running before it, with no checkpoint under way. */
  between: Step[];
  /** Steps during it. */
  steps: Step[];
}

/** A split VM and the chain of checkpoints taken of it. */
export interface Scenario {
  pages: number;
  subs: number;
  /** Initial holder of each page (modulo the host count). */
  holders: number[];
  /** Pages per fragment append of the sub-hosts' savers. */
  batch: number;
  gens: GenPlan[];
}

/** Mostly one of the first three pages (or queue entries): long histories of the same few. */
const focus = fc.oneof(
  { arbitrary: fc.nat(2), weight: 3 },
  { arbitrary: fc.nat(255), weight: 2 },
);

const bounceArb: fc.Arbitrary<Step> = fc.record({
  k: fc.constant("bounce" as const),
  g: focus,
  via: fc.constantFrom("in" as const, "across" as const),
  ask: fc.constantFrom("before" as const, "after" as const, "none" as const),
  pre: fc.nat(2),
  mid: fc.nat(2),
  write: fc.boolean(),
});

/** A step picked by `bias`. */
export function stepArb(bias: Bias): fc.Arbitrary<Step> {
  const n = focus;
  const rec = <K extends Step["k"], F extends string>(k: K, ...fields: F[]) =>
    fc.record({
      k: fc.constant(k),
      ...Object.fromEntries(fields.map((f) => [f, n])) as Record<F, fc.Arbitrary<number>>,
    }) as unknown as fc.Arbitrary<Step>;
  const arbs: Record<Step["k"], fc.Arbitrary<Step>> = {
    write: rec("write", "g"),
    sample: rec("sample"),
    in: rec("in", "g"),
    out: rec("out", "g", "to"),
    across: rec("across", "g", "to"),
    end: rec("end", "i"),
    fail: rec("fail", "i"),
    release: rec("release", "i"),
    claim: rec("claim", "h"),
    request: rec("request", "i"),
    io: rec("io", "s"),
    ioerr: rec("ioerr", "s"),
    report: rec("report", "i"),
    rpcerr: rec("rpcerr", "i"),
    mainerr: rec("mainerr"),
    host: rec("host", "g"),
    bad: rec("bad", "g", "to"),
    bounce: bounceArb,
  };
  const kinds = Object.keys(arbs) as Step["k"][];
  return fc.oneof(
    ...kinds.filter((k) => bias[k] > 0).map((k) => ({ arbitrary: arbs[k], weight: bias[k] })),
  );
}

/** What scenarios to generate. */
export interface ScenarioShape {
  /** Modes to pick each generation's from. */
  modes: Mode[];
  /** Generations in the chain. */
  gens: [number, number];
  /** Steps before the first generation, between the others, and during each. */
  before: number;
  between: number;
  during: number;
  /** Pages of memory (default 8 to 24) and sub-hosts (1 to 3). */
  pages?: [number, number];
  subs?: [number, number];
  /** Step mix during a generation. */
  bias?: Bias;
  /** Chance (0..1) that a later generation is full and that the chain is merged before it. */
  full?: number;
  merge?: number;
}

/** Scenarios of the given shape. */
export function scenarioArb(shape: ScenarioShape): fc.Arbitrary<Scenario> {
  const steps = (max: number, bias: Bias) =>
    fc.array(stepArb(bias), { maxLength: max, size: "max" });
  // Weighted constants: fast-check's numbers lean towards their bounds, which would skew a chance.
  const chance = (p = 0) =>
    fc.oneof(
      { arbitrary: fc.constant(true), weight: Math.round(p * 100) },
      { arbitrary: fc.constant(false), weight: 100 - Math.round(p * 100) },
    );
  const gen = (first: boolean) =>
    fc.record({
      mode: fc.constantFrom(...shape.modes),
      full: first ? fc.constant(true) : chance(shape.full),
      merge: first ? fc.constant(false) : chance(shape.merge),
      between: steps(first ? shape.before : shape.between, BETWEEN),
      steps: steps(shape.during, shape.bias ?? EVEN),
    });
  return fc.record({
    pages: fc.integer({ min: shape.pages?.[0] ?? 8, max: shape.pages?.[1] ?? 24 }),
    subs: fc.integer({ min: shape.subs?.[0] ?? 1, max: shape.subs?.[1] ?? 3 }),
    holders: fc.array(fc.nat(255), { minLength: 24, maxLength: 24 }),
    batch: fc.constantFrom(1, 2, 3, 4, 1024),
    gens: fc.tuple(
      gen(true),
      fc.array(gen(false), { minLength: shape.gens[0] - 1, maxLength: shape.gens[1] - 1 }),
    ).map(([a, rest]) => [a, ...rest]),
  });
}

/** The number field each step kind takes first in words ("" for none). */
const FIELD: Record<Step["k"], string> = {
  write: "g",
  sample: "",
  in: "g",
  out: "g",
  across: "g",
  end: "i",
  fail: "i",
  release: "i",
  claim: "h",
  request: "i",
  io: "s",
  ioerr: "s",
  report: "i",
  rpcerr: "i",
  mainerr: "",
  host: "g",
  bad: "g",
  bounce: "g",
};

/**
 * Steps written as words: a kind, its first number after a colon (default 0), e.g. "claim:1", and
 * for `out` and `across` the target after a second colon ("out:3:1"). A bounce reads
 * "bounce:G:in|across:before|after|none:PRE:MID[:w]".
 */
export function steps(words: string): Step[] {
  return words.split(/\s+/).filter(Boolean).map((w) => {
    const [k, a, b, c, d, e, f] = w.split(":"), n = Number(a ?? 0);
    if (!(k in FIELD) || !(n >= 0)) throw new Error(`no step ${w}`);
    if (k === "bounce") {
      if ((b !== "in" && b !== "across") || (c !== "before" && c !== "after" && c !== "none")) {
        throw new Error(`no step ${w}`);
      }
      return {
        k,
        g: n,
        via: b,
        ask: c,
        pre: Number(d ?? 0),
        mid: Number(e ?? 0),
        write: f === "w",
      };
    }
    const field = FIELD[k as Step["k"]];
    const to = k === "out" || k === "across" || k === "bad" ? { to: Number(b ?? 0) } : {};
    return { k, ...(field ? { [field]: n } : {}), ...to } as Step;
  });
}

/** A step as a word `steps` reads back. */
export function word(st: Step): string {
  if (st.k === "bounce") {
    return `bounce:${st.g}:${st.via}:${st.ask}:${st.pre}:${st.mid}${st.write ? ":w" : ""}`;
  }
  const field = FIELD[st.k];
  const n = field ? (st as unknown as Record<string, number>)[field] : undefined;
  const to = st.k === "out" || st.k === "across" || st.k === "bad" ? `:${st.to}` : "";
  return n === undefined ? st.k : `${st.k}:${n}${to}`;
}
