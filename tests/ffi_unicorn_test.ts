import { assert, assertEquals } from "./helpers/assert.ts";
import * as uc from "../src/ffi/unicorn.ts";
import { EMU_EXIT, EMU_LAPIC_BASE } from "../src/ffi/emu_shim.ts";

/** Values from unicorn/x86.h and shim.c, compiled and printed by gcc. */
async function headerValues(): Promise<Record<string, number>> {
  const dir = await Deno.makeTempDir();
  const regs = Object.keys(uc.X86_REG).map((r) => `printf("reg\\t${r}\\t%d\\n", UC_X86_REG_${r});`);
  const src = `#include <stdio.h>
#include <stddef.h>
#include <unicorn/unicorn.h>
int main(void){
${regs.join("\n")}
printf("size\\tuc_x86_mmr\\t%zu\\n", sizeof(uc_x86_mmr));
printf("size\\tuc_x86_msr\\t%zu\\n", sizeof(uc_x86_msr));
printf("off\\tuc_x86_mmr.base\\t%zu\\n", offsetof(uc_x86_mmr, base));
printf("off\\tuc_x86_mmr.limit\\t%zu\\n", offsetof(uc_x86_mmr, limit));
printf("off\\tuc_x86_mmr.flags\\t%zu\\n", offsetof(uc_x86_mmr, flags));
printf("off\\tuc_x86_msr.value\\t%zu\\n", offsetof(uc_x86_msr, value));
printf("const\\tUC_ARCH_X86\\t%d\\n", UC_ARCH_X86);
printf("const\\tUC_MODE_64\\t%d\\n", UC_MODE_64);
printf("const\\tUC_ERR_EXCEPTION\\t%d\\n", UC_ERR_EXCEPTION);
printf("const\\tUC_ERR_INSN_INVALID\\t%d\\n", UC_ERR_INSN_INVALID);
printf("const\\tUC_ERR_FETCH_UNMAPPED\\t%d\\n", UC_ERR_FETCH_UNMAPPED);
printf("const\\tUC_PROT_ALL\\t%d\\n", UC_PROT_ALL);
return 0;}
`;
  await Deno.writeTextFile(`${dir}/uc.c`, src);
  const cc = await new Deno.Command("gcc", { args: ["-o", `${dir}/uc`, `${dir}/uc.c`] }).output();
  if (!cc.success) throw new Error(new TextDecoder().decode(cc.stderr));
  const out = new TextDecoder().decode((await new Deno.Command(`${dir}/uc`).output()).stdout);
  await Deno.remove(dir, { recursive: true });
  const map: Record<string, number> = {};
  for (const line of out.trim().split("\n")) {
    const [kind, name, value] = line.split("\t");
    map[`${kind} ${name}`] = Number(value);
  }
  return map;
}

Deno.test("every Unicorn register id, struct layout and constant matches unicorn/x86.h", async () => {
  const h = await headerValues();
  for (const [name, id] of Object.entries(uc.X86_REG)) {
    assertEquals(`${name}=${id}`, `${name}=${h[`reg ${name}`]}`);
  }
  assertEquals(uc.ucX86Mmr.size, h["size uc_x86_mmr"]);
  assertEquals(uc.ucX86Msr.size, h["size uc_x86_msr"]);
  assertEquals(uc.ucX86Mmr.offsets.base, h["off uc_x86_mmr.base"]);
  assertEquals(uc.ucX86Mmr.offsets.limit, h["off uc_x86_mmr.limit"]);
  assertEquals(uc.ucX86Mmr.offsets.flags, h["off uc_x86_mmr.flags"]);
  assertEquals(uc.ucX86Msr.offsets.value, h["off uc_x86_msr.value"]);
  assertEquals(uc.UC_ARCH_X86, h["const UC_ARCH_X86"]);
  assertEquals(uc.UC_MODE_64, h["const UC_MODE_64"]);
  assertEquals(uc.UC_ERR.EXCEPTION, h["const UC_ERR_EXCEPTION"]);
  assertEquals(uc.UC_ERR.INSN_INVALID, h["const UC_ERR_INSN_INVALID"]);
  assertEquals(uc.UC_ERR.FETCH_UNMAPPED, h["const UC_ERR_FETCH_UNMAPPED"]);
  assertEquals(uc.UC_PROT.ALL, h["const UC_PROT_ALL"]);
});

Deno.test("the shim's exit codes and LAPIC address match shim.c", async () => {
  const src = await Deno.readTextFile(new URL("../src/accel/emu/shim.c", import.meta.url));
  for (const [name, value] of Object.entries(EMU_EXIT)) {
    assert(new RegExp(`EXIT_${name} = ${value}[,\\s]`).test(src), `EXIT_${name} = ${value}`);
  }
  assert(src.includes(`#define LAPIC_BASE 0x${EMU_LAPIC_BASE.toString(16)}ull`));
});

Deno.test("registers, descriptor tables, MSRs and contexts round-trip through a Unicorn engine", () => {
  const e = uc.UnicornEngine.open();
  try {
    e.setReg(uc.X86_REG.RAX, 0x1122334455667788n);
    e.setReg(uc.X86_REG.R15, -1n);
    assertEquals(e.reg(uc.X86_REG.RAX), 0x1122334455667788n);
    assertEquals(e.reg(uc.X86_REG.R15), 0xffffffffffffffffn);
    e.setMmr(uc.X86_REG.GDTR, { selector: 0, base: 0x1000n, limit: 0x1ff, flags: 0 });
    assertEquals(e.mmr(uc.X86_REG.GDTR).base, 0x1000n);
    assertEquals(e.mmr(uc.X86_REG.GDTR).limit, 0x1ff);
    e.setMsr(0xc0000102, 0xdead000n);
    assertEquals(e.msr(0xc0000102), 0xdead000n);
    const ctx = e.saveContext();
    e.setReg(uc.X86_REG.RAX, 1n);
    e.restoreContext(ctx);
    assertEquals(e.reg(uc.X86_REG.RAX), 0x1122334455667788n);
    ctx.free();
  } finally {
    e.close();
  }
});

Deno.test("a Unicorn error names the call and the reason", () => {
  const e = uc.UnicornEngine.open();
  try {
    let msg = "";
    try {
      e.map(0x1001n, 0x1000, uc.UC_PROT.ALL);
    } catch (err) {
      assert(err instanceof uc.UnicornError);
      msg = err.message;
    }
    assert(msg.startsWith("uc_mem_map: "), msg);
  } finally {
    e.close();
  }
});
